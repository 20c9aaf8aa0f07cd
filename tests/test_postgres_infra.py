"""The PostgreSQL server the tests run on (``tests/pg.py``, ``.ci/postgres.sh``), checked with Optuna alone.

Several real processes share one study on it with heartbeats, as workers on several machines would; a worker
killed mid-trial is failed through its stale heartbeat; and the guard keeps the tests off any server they did
not start or were not given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import optuna
import pytest
import sqlalchemy

from tests import pg

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# A worker: joins the study, waits (through the study itself) until every worker has joined, then optimizes.
WORKER = r"""
import os, sys, time, warnings
warnings.simplefilter("ignore")  # heartbeat_interval is an experimental argument
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, n_trials, n_workers, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=int(sys.argv[6]))
study = optuna.load_study(study_name=name, storage=storage)
study.set_user_attr(f"ready_{os.getpid()}", True)
deadline = time.monotonic() + 60
while sum(k.startswith("ready_") for k in study.user_attrs) < n_workers:
    if time.monotonic() > deadline:
        sys.exit("the other workers never joined")
    time.sleep(0.05)

def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    x = trial.suggest_float("x", -10, 10)
    time.sleep(sleep)
    return (x - 2) ** 2

study.optimize(objective, n_trials=n_trials)
"""


def _worker(url: str, study: str, n_trials: int, n_workers: int = 1, sleep: float = 0.02, grace: int = 10):
    args = [sys.executable, "-c", WORKER, url, study, str(n_trials), str(n_workers), str(sleep), str(grace)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _heartbeat_rows(url: str) -> dict[int, int]:
    """trial number -> heartbeat rows, read from Optuna's tables directly."""
    engine = sqlalchemy.create_engine(pg.check_ours(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT t.number, count(h.trial_heartbeat_id) FROM trials t "
                "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id GROUP BY t.number"
            ))  # fmt: skip
            return {number: n for number, n in rows}
    finally:
        engine.dispose()


def test_server_is_postgresql_on_loopback(postgres_url: str, pg_storage_url: str) -> None:
    url = sqlalchemy.engine.make_url(pg_storage_url)
    assert url.database != sqlalchemy.engine.make_url(postgres_url).database
    assert pg.TEST_DB.fullmatch(url.database or "")
    engine = sqlalchemy.create_engine(pg.check_ours(pg_storage_url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("SELECT version()")).scalar_one()
            database = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
            tables = conn.execute(sqlalchemy.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
            assert tables.scalar_one() == 0  # a fresh database: nothing another test wrote
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert database == url.database
    if not os.environ.get(pg.ENV):  # a server we started ourselves: loopback only
        assert url.host == "127.0.0.1"


def test_two_processes_share_one_study_with_heartbeats(pg_storage_url: str) -> None:
    study = optuna.create_study(study_name="shared", storage=pg_storage_url, direction="minimize")
    n_trials = 12
    t0 = time.monotonic()
    workers = [_worker(pg_storage_url, "shared", n_trials, n_workers=2) for _ in range(2)]
    try:
        outs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-3000:]
    seconds = time.monotonic() - t0

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 * n_trials
    assert sorted(t.number for t in trials) == list(range(2 * n_trials))  # numbered atomically: no gap, no twin
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_worker: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["pid"], []).append(t)
    assert sorted(by_worker) == sorted(w.pid for w in workers)
    assert [len(ts) for ts in by_worker.values()] == [n_trials, n_trials]
    # they ran at the same time: each worker's trials interleave with the other's
    spans = [(min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)) for ts in by_worker.values()]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], (spans, seconds)
    # every trial recorded its heartbeat in the server's table
    assert _heartbeat_rows(pg_storage_url) == {t.number: 1 for t in trials}
    best = study.best_trial
    assert best.value == min(t.value for t in trials)


def test_killed_worker_trial_fails_through_its_heartbeat(pg_storage_url: str) -> None:
    study = optuna.create_study(study_name="killed", storage=pg_storage_url)
    victim = _worker(pg_storage_url, "killed", n_trials=1, sleep=600, grace=1)
    try:
        deadline = time.monotonic() + 60
        while not (running := study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))) or \
                not _heartbeat_rows(pg_storage_url).get(running[0].number):  # fmt: skip
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the worker never started its trial"
            time.sleep(0.05)
    finally:
        victim.kill()
        victim.communicate()
    assert victim.returncode == -9

    # another worker's storage (same heartbeat settings) fails the trial once its heartbeat is older than the grace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(pg_storage_url, heartbeat_interval=1, grace_period=1)
    other = optuna.load_study(study_name="killed", storage=storage)
    deadline = time.monotonic() + 20
    while other.trials[0].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() < deadline, "the stale trial was never failed"
        optuna.storages.fail_stale_trials(other)
        time.sleep(0.2)
    assert [t.state for t in other.trials] == [optuna.trial.TrialState.FAIL]
    assert other.trials[0].user_attrs["pid"] == victim.pid


# --- the guard: never a server we did not start or were not given -------------------------------------------------


@pytest.fixture()
def no_servers(monkeypatch: pytest.MonkeyPatch):
    """pg's registry of our servers, empty for the test; connecting at all fails the test."""
    monkeypatch.setattr(pg, "_ours", set())

    def connect(*args, **kwargs):
        raise AssertionError(f"tried to connect: {args} {kwargs}")

    monkeypatch.setattr(pg.sqlalchemy, "create_engine", connect)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",  # the default cluster
        "postgresql+psycopg://postgres@127.0.0.1/postgres",  # no port: the default too
        "postgresql://postgres@localhost:5433/scenelab_test",
    ],
)
def test_guard_refuses_servers_we_did_not_start(no_servers, url: str) -> None:
    with pytest.raises(pg.NotOurServer, match="refusing to connect"):
        pg.check_ours(url)
    with pytest.raises(pg.NotOurServer):
        pg.create_database(url)
    with pytest.raises(pg.NotOurServer):
        pg.ping(url)
    with pytest.raises(pg.NotOurServer), pg.fresh_database(url):
        pass


def test_guard_accepts_only_the_port_it_started_or_was_given(no_servers) -> None:
    pg.allow("postgresql+psycopg://postgres@127.0.0.1:45678/scenelab_test")
    assert pg.check_ours("postgresql+psycopg://postgres@127.0.0.1:45678/t_0123456789ab").port == 45678
    for other in ("postgresql+psycopg://postgres@127.0.0.1:45679/x", "postgresql+psycopg://postgres@10.0.0.1:45678/x"):
        with pytest.raises(pg.NotOurServer):
            pg.check_ours(other)
    with pytest.raises(pg.NotOurServer, match="names no port"):
        pg.allow("postgresql+psycopg://postgres@127.0.0.1/scenelab_test")
    # only the per-test databases are ever dropped
    for name in ("scenelab_test", "postgres", "t_x; DROP DATABASE postgres"):
        with pytest.raises(ValueError, match="refusing to drop"):
            pg.drop_database("postgresql+psycopg://postgres@127.0.0.1:45678/scenelab_test", name)


def test_session_server_uses_the_url_it_is_given(no_servers, monkeypatch: pytest.MonkeyPatch) -> None:
    given = "postgresql+psycopg://postgres@127.0.0.1:45680/scenelab_test"
    monkeypatch.setenv(pg.ENV, given)
    monkeypatch.setattr(pg, "ping", lambda url: pg.check_ours(url))  # no server behind it
    monkeypatch.setattr(pg, "start_server", lambda folder: pytest.fail("started a server although one was given"))
    with pg.session_server() as url:
        assert url == given
        pg.check_ours(url)
    with pytest.raises(pg.NotOurServer):
        pg.check_ours("postgresql+psycopg://postgres@127.0.0.1:5432/scenelab_test")


def test_session_server_skips_without_binaries(no_servers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg.ENV, raising=False)
    monkeypatch.setattr(pg, "bindir", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"), pg.session_server():
        pass
