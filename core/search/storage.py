"""Where a study lives: an Optuna storage (SQLite by default, PostgreSQL/MySQL, or a journal file).

Storages are opened once per process; every failure to open one is one sentence naming the storage
(its password hidden) and what to do. An in-memory SQLite database is refused: it vanishes with the
process and no other worker can see it.

Workers open RDB storages with Optuna's heartbeat: each running trial records a beat every
``SCENELAB_HEARTBEAT_S`` seconds (default 10); a trial silent for ``SCENELAB_HEARTBEAT_GRACE_S``
(default 60) is failed by whichever worker looks next, and its configuration is queued again
(:class:`RetryStale`, at most :data:`MAX_RETRIES` times) for a surviving worker to run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from core.errors import ConfigError, first_line
from core.paths import default_artifacts

HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60
HEARTBEAT_ENV = "SCENELAB_HEARTBEAT_S"
GRACE_ENV = "SCENELAB_HEARTBEAT_GRACE_S"
#: a configuration whose worker died is run again at most this often (a config that kills its worker,
#: e.g. by running out of memory, must not take the whole study down with it)
MAX_RETRIES = 2

_storages: dict[tuple[str, tuple[int, int] | None], optuna.storages.BaseStorage] = {}


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a whole number of seconds, at least 1; received {raw!r}.")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds of the trial heartbeat, from the environment or the defaults."""
    interval = _env_seconds(HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S)
    grace = _env_seconds(GRACE_ENV, HEARTBEAT_GRACE_S)
    if grace <= interval:
        raise ConfigError(
            f"{GRACE_ENV} ({grace} s) must be longer than {HEARTBEAT_ENV} ({interval} s), or live workers would be "
            "taken for dead; raise the grace period (a few intervals)."
        )
    return interval, grace


class RetryStale:
    """Queue a dead worker's trial again (Optuna's ``RetryHeartbeatStaleTrialCallback``): a WAITING trial
    with the same parameters, which the next worker to ask for a trial runs. The dead worker's user
    attributes are dropped, so nothing takes the new trial for the dead one's. The failed trial stays
    FAIL, so the configuration counts once."""

    def __init__(self, max_retry: int = MAX_RETRIES) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._inner = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._inner(study, trial)


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial whose configuration ``trial`` runs again (its worker died), or None."""
    history = trial.system_attrs.get("retry_history") or []
    return int(history[-1]) if history else None


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


def dashboard_command(url: str) -> str:
    """The shell command that opens the storage ``url`` in optuna-dashboard (its password shown as ***)."""
    return f"optuna-dashboard {shlex.quote(redact(url))}"


def is_journal(url: str) -> bool:
    return "://" not in url


def open_storage(url: str, *, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """Open (and create if needed) the storage at ``url``; one sentence if it cannot be reached.

    ``heartbeat`` turns on Optuna's trial heartbeat (RDB storages), used by workers so that trials
    of a worker that died elsewhere are failed after a grace period. Storages are reused per process.
    """
    beat = heartbeat_settings() if heartbeat and not is_journal(url) else None
    key = (url, beat)
    if key in _storages:
        return _storages[key]
    storage = _open_journal(url) if is_journal(url) else _open_rdb(url, beat)
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


def _open_rdb(url: str, heartbeat: tuple[int, int] | None) -> optuna.storages.BaseStorage:
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
    if heartbeat is not None:
        kwargs.update(heartbeat_interval=heartbeat[0], grace_period=heartbeat[1], heartbeat_stale_trial_callback=RetryStale())
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
