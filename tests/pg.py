"""A throwaway PostgreSQL server for the tests, and the guard that keeps them off every other server.

CI starts one (``.ci/run`` calls ``.ci/postgres.sh start``) and hands its URL over in
``SCENELAB_TEST_POSTGRES_URL``. Without it the test session starts its own with the same script when the
PostgreSQL binaries are installed, and stops it at the end; without binaries the tests that need a server skip.

The guard: a URL is connected to only when its host and port are those of a server this session started or the
environment variable named. Nothing here ever reaches Debian's default cluster on 5432 or any other server
that happens to run on the machine. Each test gets its own database ``t_<random>``, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import URL, make_url

ENV = "SCENELAB_TEST_POSTGRES_URL"
SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"
HOW = (
    "no PostgreSQL server for the tests: install the binaries (apt-get install postgresql) and the session "
    f"starts a throwaway one, or set {ENV} to the URL of a server started for the tests"
)
TEST_DB = re.compile(r"t_[0-9a-f]{12}")

_ours: set[tuple[str, int]] = set()  # (host, port) of the servers this session started or was given


class NotOurServer(RuntimeError):
    """A URL that points at a server the tests neither started nor were given."""


def _endpoint(url: str | URL) -> tuple[str, int | None]:
    u = make_url(url)
    return (u.host or ""), u.port


def allow(url: str) -> str:
    """Record ``url``'s server as ours (one we started, or the one the environment variable names)."""
    host, port = _endpoint(url)
    if port is None:
        raise NotOurServer(f"{url!r} names no port; give the port of the test server explicitly")
    _ours.add((host, port))
    return url


def check_ours(url: str | URL) -> URL:
    """``url`` parsed, or ``NotOurServer`` when its host and port are not a server we started or were given."""
    host, port = _endpoint(url)
    if port is None or (host, port) not in _ours:
        where = f"{host}:{port}" if port is not None else f"{host} (no port: the default 5432)"
        raise NotOurServer(
            f"refusing to connect to {where}: the tests only use a server they started or {ENV} names "
            f"(ours: {sorted(_ours) or 'none'})"
        )
    return make_url(url)


def bindir() -> str | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL's server binaries are not installed."""
    proc = subprocess.run(["bash", str(SCRIPT), "bindir"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def start_server(folder: str) -> str:
    """Start a server in the empty ``folder`` with ``.ci/postgres.sh``; its URL (127.0.0.1, a free port)."""
    proc = subprocess.run(["bash", str(SCRIPT), "start", folder], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} start failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return allow(proc.stdout.strip().splitlines()[-1])


def stop_server(folder: str) -> None:
    """Stop the server started in ``folder`` and remove the folder."""
    subprocess.run(["bash", str(SCRIPT), "stop", folder], check=True, timeout=120)


def _engine(url: URL) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


def ping(url: str) -> None:
    """Connect to ``url`` (ours) and run ``SELECT 1``; raises what the driver raises when it cannot."""
    engine = _engine(check_ours(url))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def session_server() -> Iterator[str]:
    """The URL of the session's server: the one ``SCENELAB_TEST_POSTGRES_URL`` names, else one started (and
    stopped at the end) here; skips the calling test when neither is possible."""
    given = os.environ.get(ENV, "").strip()
    if given:
        allow(given)
        error = None
        try:
            ping(given)
        except sqlalchemy.exc.OperationalError as e:
            error = str(e).splitlines()[0]
        if error:
            pytest.fail(f"{ENV}={given} but its server does not answer: {error}", pytrace=False)
        yield given
        return
    if bindir() is None:
        pytest.skip(HOW)
    folder = tempfile.mkdtemp(prefix="scenelab-pg-")  # not under pytest's tmp: the postgres user must enter it
    url = None
    try:
        error = None
        try:
            url = start_server(folder)
        except RuntimeError as e:
            error = str(e)
        if url is None:
            pytest.fail(f"the PostgreSQL binaries are in {bindir()} but no server started: {error}", pytrace=False)
        yield url
    finally:
        stop_server(folder)
        if url is not None:
            _ours.discard(_endpoint(url))


def create_database(admin_url: str) -> str:
    """Create ``t_<random>`` on ``admin_url``'s server (ours); the URL that reaches the new database."""
    admin = check_ours(admin_url)
    name = f"t_{secrets.token_hex(6)}"
    engine = _engine(admin)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop the test database ``name`` (only ``t_<random>`` ones) on ``admin_url``'s server (ours), ending the
    sessions still connected to it."""
    if not TEST_DB.fullmatch(name):
        raise ValueError(f"refusing to drop {name!r}: only databases made by create_database (t_<12 hex>)")
    engine = _engine(check_ours(admin_url))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database on ``admin_url``'s server for one test; dropped afterwards."""
    url = create_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, make_url(url).database or "")
