"""Where a study lives: an Optuna storage (SQLite by default, PostgreSQL/MySQL, or a journal file).

Storages are opened once per process; every failure to open one is one sentence naming the storage
(its password hidden) and what to do. An in-memory SQLite database is refused: it vanishes with the
process and no other worker can see it.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from core.errors import ConfigError, first_line
from core.paths import default_artifacts

HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60


_storages: dict[tuple[str, bool], optuna.storages.BaseStorage] = {}


def default_storage_url(artifacts: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///<artifacts>/studies/studies.db``."""
    root = Path(artifacts).expanduser() if artifacts else default_artifacts()
    folder = (root / "studies").resolve()
    with contextlib.suppress(OSError):  # an unwritable folder is reported when the storage opens
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'studies.db'}"


def resolve_storage_url(storage: str | None, artifacts: str | os.PathLike[str] | None = None) -> str:
    """A storage URL: the default SQLite file, a URL as given, or a path (``.db`` SQLite, ``.log``/``.journal``)."""
    if not storage:
        return default_storage_url(artifacts)
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    if path.suffix in (".log", ".journal"):
        return str(path)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}"
    raise ConfigError(
        f"Storage {storage!r} is neither a URL (sqlite:///..., postgresql://..., mysql://...) nor a "
        "file ending in .db (SQLite) or .log/.journal (Optuna journal); give one of those."
    )


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url.split("://", 1)[0] + "://..."


def is_journal(url: str) -> bool:
    return "://" not in url


def open_storage(url: str, *, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """Open (and create if needed) the storage at ``url``; one sentence if it cannot be reached.

    ``heartbeat`` turns on Optuna's trial heartbeat (RDB storages), used by workers so that trials
    of a worker that died elsewhere are failed after a grace period. Storages are reused per process.
    """
    key = (url, heartbeat)
    if key in _storages:
        return _storages[key]
    storage = _open_journal(url) if is_journal(url) else _open_rdb(url, heartbeat)
    _storages[key] = storage
    return storage


def _open_journal(url: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    path = Path(url)
    if not path.parent.is_dir():
        raise ConfigError(f"The folder of the journal storage {path} does not exist; create it or choose another path.")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise ConfigError(f"Could not open the journal storage {path}: {exc.strerror or exc}.") from None


def _open_rdb(url: str, heartbeat: bool) -> optuna.storages.BaseStorage:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{shown!r} is not a storage URL; expected e.g. sqlite:///path.db or postgresql://user@host/db.") from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or parsed.query.get("mode") == "memory":
            raise ConfigError(
                f"The storage {shown} is an in-memory SQLite database, which vanishes with this process and which no "
                "other worker can see; give a file instead, e.g. sqlite:///studies.db."
            )
        path = Path(db).expanduser()
        if not path.parent.is_dir():
            raise ConfigError(f"The folder of the SQLite storage {path} does not exist; create it or choose another path.")
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S)
    try:
        return _rdb_with_retry(url, kwargs)
    except ImportError as exc:
        missing = _missing_module(exc)
        driver = {"psycopg": '"psycopg[binary]"', "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "pymysql": "PyMySQL"}.get(missing or "", missing)
        raise ConfigError(
            f"The storage {shown} needs the Python database driver {missing or 'for its scheme'}, which is not "
            f"installed; install it (pip install {driver or 'the driver'}) or use a SQLite or journal storage."
        ) from None
    except Exception as exc:  # noqa: BLE001 - sqlalchemy/optuna raise many kinds; all mean "cannot use it"
        reason = first_line(getattr(exc, "orig", None) or exc)
        if "NoSuchModuleError" in type(exc).__name__ or "Can't load plugin" in str(exc):
            raise ConfigError(f"The storage URL {shown} has an unknown database scheme; use sqlite, postgresql or mysql.") from None
        raise ConfigError(f"Could not open the study storage {shown} ({reason}); check that it is reachable and writable.") from None


_CREATION_RACE = ("already exists", "unique constraint", "duplicate", "database is locked")


def _rdb_with_retry(url: str, kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """RDBStorage, retried when another worker is creating the same database's tables at this instant."""
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except ImportError:
            raise
        except Exception as exc:
            if attempt == 3 or not any(w in str(exc).lower() for w in _CREATION_RACE):
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _missing_module(exc: BaseException) -> str | None:
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def as_storage(storage: str | optuna.storages.BaseStorage | None, artifacts: str | None = None) -> optuna.storages.BaseStorage:
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    return open_storage(resolve_storage_url(storage, artifacts))
