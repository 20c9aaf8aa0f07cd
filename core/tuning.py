"""Hyperparameter search with Optuna: the study's task 5, re-run on validation accuracy.

A *study* lives in an Optuna storage (SQLite under ``<artifacts>/studies/studies.db`` by default,
or any Optuna storage URL: PostgreSQL, MySQL, a journal file). Any number of processes on any number
of machines can work on one study at the same time: that is Optuna's own distributed mode, each
worker asks the storage for the next trial.

* Each trial samples a :class:`~core.config.RunConfig` from the search space, trains it through
  :func:`core.train.train` (cached: the same config is never trained twice), reports each epoch's
  validation accuracy for pruning, and returns the final validation accuracy. Test accuracy, the run
  id and the seconds are kept as trial user attributes. Selection never looks at test.
* ``n_trials`` is the number of finished (COMPLETE + PRUNED) trials the *study* should hold, not a
  per-process count: a restarted worker completes the count, and several workers split it between
  them exactly. Each worker checks the count before it asks for a trial and, right after asking,
  checks the trial's rank among the live trials; a trial beyond the count (two workers asked at the
  same instant) is closed as FAIL with ``surplus=True`` and never trained. Only the storage's own
  atomic trial numbering is relied on.
* Trials left RUNNING by a dead worker are marked FAIL: at once when the worker ran on this machine
  (its pid is gone), and through Optuna's heartbeat (RDB storages) for workers elsewhere.
* The search space, base config, dataset fingerprint, sampler and pruner are stored with the study
  (user attribute ``scenelab``), so a worker joining from elsewhere needs only the study name and
  the storage, and the app can read any study.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from core.config import OPTIMIZERS, RunConfig
from core.errors import ConfigError, SceneLabError

logger = logging.getLogger(__name__)

SETTINGS_ATTR = "scenelab"
SETTINGS_VERSION = 1
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
DEFAULT_TRIALS = 30
#: tune's defaults that differ from ``train``'s: 30 head epochs (each head trial takes seconds on
#: cached features), the number of epochs the study's own head runs used.
#: ``tune``'s own defaults (argparse dests): heads train with the study's flip augmentation, free on cached
#: features, and are judged with test-time flip; both can be turned off (``--aug-hflip false --tta false``).
TUNE_DEFAULTS: dict[str, Any] = {"epochs": 30, "aug_hflip": True, "tta": True}
#: ``--repeats auto``: trials of heads on cached features are cheap, so each trains this many times
#: (other seeds: other validation splits and initial weights) and scores the mean validation accuracy.
AUTO_REPEATS_CHEAP = 3
REPEAT_SEED_STEP = 1000  # repeat r of a trial with seed s trains with seed s + r * REPEAT_SEED_STEP
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60

#: The study's search space (its W&B sweep), in the order the parameters are drawn.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optimizer": {"type": "categorical", "choices": list(OPTIMIZERS)},
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "if": {"optimizer": ["sgd", "rmsprop"]}},
    "dropout": {"type": "float", "low": 0.0, "high": 0.9},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64, 128]},
    "batch_norm": {"type": "categorical", "choices": [False, True]},
}
#: RunConfig fields a space may search (augmentation is set with the train options).
SEARCHABLE = tuple(f for f in RunConfig().to_dict() if f != "augment")
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "if"}

# ---------------------------------------------------------------------------------------------------
# search space
# ---------------------------------------------------------------------------------------------------
Space = dict[str, dict[str, Any]]


def _spec_error(name: str, what: str) -> ConfigError:
    return ConfigError(f"Search space parameter {name!r}: {what}.")


def _normalise_spec(name: str, spec: Any, default: dict[str, Any] | None) -> dict[str, Any] | Any:
    """A validated spec dict, or a plain value when the spec fixes the parameter."""
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        return spec  # a fixed value
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise _spec_error(name, f"unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_SPEC_KEYS))}")
    if "type" not in spec:
        if default is None:
            raise _spec_error(name, "give a 'type' (float, int or categorical)")
        # narrowing a default parameter: keep what is not given
        keep = {k: v for k, v in default.items() if not (k == "choices" and "low" in spec)}
        spec = {**keep, **spec}
    kind = spec["type"]
    out: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _spec_error(name, "'choices' must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise _spec_error(name, f"choice {c!r} is not a number, string, true/false or null")
        if len(set(map(json.dumps, choices))) != len(choices):
            raise _spec_error(name, "'choices' repeats a value")
        if len(choices) == 1:
            return choices[0]
        out["choices"] = list(choices)
    elif kind in ("float", "int"):
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise _spec_error(name, "a float or int parameter needs numeric 'low' and 'high'") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise _spec_error(name, f"'low' ({low:g}) must not exceed 'high' ({high:g})")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise _spec_error(name, f"a log range needs 'low' > 0; received {low:g}")
        if low == high:
            return int(low) if kind == "int" else low
        if kind == "int":
            if low != int(low) or high != int(high):
                raise _spec_error(name, "an int range needs whole-number 'low' and 'high'")
            low, high = int(low), int(high)
        out.update(low=low, high=high, log=log)
        if spec.get("step") is not None:
            if log:
                raise _spec_error(name, "'step' and 'log' cannot be combined")
            out["step"] = spec["step"]
    else:
        raise _spec_error(name, f"unknown type {kind!r}; expected float, int or categorical")
    if spec.get("if") is not None:
        cond = spec["if"]
        if not isinstance(cond, dict) or not all(isinstance(v, list) for v in cond.values()):
            raise _spec_error(name, "'if' must map a parameter to a list of values, e.g. {\"optimizer\": [\"sgd\"]}")
        out["if"] = {k: list(v) for k, v in cond.items()}
    return out


def build_space(
    overrides: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> Space:
    """The search space: the study's default, narrowed by ``overrides``, minus the ``fixed`` ones.

    ``overrides`` (the ``--space`` file) maps a parameter to a spec (``{"type": "float", "low": ..,
    "high": .., "log": ..}``, ``{"type": "int", ...}``, ``{"type": "categorical", "choices": [..]}``),
    a partial spec that narrows a default parameter (``{"low": 1e-4}``), a list (categorical), a
    plain value (fixed) or ``null`` (not searched). An optional ``"if": {"optimizer": [...]}`` draws
    the parameter only when an earlier one has one of those values. Any RunConfig field but
    ``augment`` may be searched. Fixed values are returned in ``fixed`` (updated in place).
    Raises :class:`ConfigError` when nothing is left to search.
    """
    fixed = fixed if fixed is not None else {}
    base = base if base is not None else RunConfig().to_dict()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SEARCHABLE))
    if unknown:
        raise ConfigError(
            f"Unknown search parameter(s) {', '.join(unknown)}; a space may search {', '.join(SEARCHABLE)}."
        )
    merged: dict[str, Any] = {}
    for name in list(DEFAULT_SPACE) + [n for n in overrides if n not in DEFAULT_SPACE]:
        if name in fixed:
            continue
        if name in overrides:
            if overrides[name] is None:
                continue
            spec = _normalise_spec(name, overrides[name], DEFAULT_SPACE.get(name))
        else:
            spec = dict(DEFAULT_SPACE[name])
        if isinstance(spec, dict):
            merged[name] = spec
        else:
            fixed[name] = spec
    # resolve conditions against fixed values and earlier parameters
    space: Space = {}
    for name, spec in merged.items():
        cond = spec.get("if")
        drop = False
        new_cond: dict[str, list[Any]] = {}
        for ref, allowed in (cond or {}).items():
            if ref in fixed or (ref not in merged and ref in base):
                if (fixed[ref] if ref in fixed else base[ref]) not in allowed:
                    drop = True
            elif ref in space:
                ref_spec = space[ref]
                if ref_spec["type"] == "categorical" and not (
                    set(map(json.dumps, ref_spec["choices"])) & set(map(json.dumps, allowed))
                ):
                    drop = True
                new_cond[ref] = allowed
            else:
                raise _spec_error(name, f"its condition refers to {ref!r}, which is not drawn before it")
        if drop:
            continue
        spec = {k: v for k, v in spec.items() if k != "if"}
        if new_cond:
            spec["if"] = new_cond
        space[name] = spec
    if not space:
        raise ConfigError(
            "Nothing is left to search: every parameter is fixed (" + ", ".join(sorted(fixed) or ["all"]) + "); "
            "leave at least one parameter to the search or widen the space."
        )
    return space


def read_space_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a ``--space`` file."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"Could not read the search space file {p}: {exc.strerror or exc}.") from None
    except ValueError as exc:
        raise ConfigError(f"The search space file {p} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The search space file {p} must hold one JSON object of parameter: spec.")
    return data


def suggest(trial: optuna.trial.BaseTrial, space: Space) -> dict[str, Any]:
    """Draw one set of parameters from ``space`` (conditional ones only when their condition holds)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        cond = spec.get("if") or {}
        if any(params.get(ref) not in allowed for ref, allowed in cond.items()):
            continue
        kind = spec["type"]
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    return params


# ---------------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------------
_storages: dict[tuple[str, bool], optuna.storages.BaseStorage] = {}


def default_storage_url(artifacts: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///<artifacts>/studies/studies.db``."""
    from core.cli import default_artifacts

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
        if db and db != ":memory:":
            path = Path(db).expanduser()
            if not path.parent.is_dir():
                raise ConfigError(
                    f"The folder of the SQLite storage {path} does not exist; create it or choose another path."
                )
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
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


# ---------------------------------------------------------------------------------------------------
# studies: loading and reading (used by the page)
# ---------------------------------------------------------------------------------------------------
def list_studies(storage: str | optuna.storages.BaseStorage | None = None) -> list[dict[str, Any]]:
    """One row per study in the storage: name, trials, finished trials, best value, start time."""
    st = as_storage(storage)
    rows = []
    for s in optuna.get_all_study_summaries(st, include_best_trial=False):
        rows.append({"study": s.study_name, "trials": s.n_trials, "started": s.datetime_start})
    out = []
    for row in rows:
        study = optuna.load_study(study_name=row["study"], storage=st)
        c = counts(study)
        out.append(
            {
                **row,
                "complete": c["COMPLETE"],
                "pruned": c["PRUNED"],
                "failed": c["FAIL"],
                "running": c["RUNNING"],
                "best_value": _best_value(study),
                "target": (study.user_attrs.get(SETTINGS_ATTR) or {}).get("n_trials"),
            }
        )
    return out


def load_study(storage: str | optuna.storages.BaseStorage | None, name: str) -> optuna.Study:
    """The study ``name``; one sentence naming the known studies when it does not exist."""
    st = as_storage(storage)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = optuna.get_all_study_names(st)
        known = f"known studies: {', '.join(names)}" if names else "the storage holds no study yet"
        raise ConfigError(f"There is no study named {name!r} in this storage ({known}).") from None


def study_settings(study: optuna.Study) -> dict[str, Any] | None:
    """What SceneLab stored with the study (space, base config, dataset...), or None for a foreign study."""
    settings = study.user_attrs.get(SETTINGS_ATTR)
    return settings if isinstance(settings, dict) else None


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name; surplus trials (never run) are counted apart from real failures."""
    out = {s.name: 0 for s in TrialState}
    out["SURPLUS"] = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and t.user_attrs.get("surplus"):
            out["SURPLUS"] += 1
        else:
            out[t.state.name] += 1
    return out


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _best_value(study: optuna.Study) -> float | None:
    best = _best_trial(study)
    return None if best is None else best.value


def summary(study: optuna.Study) -> dict[str, Any]:
    """The figures the CLI prints: counts per state and the best (validation) trial."""
    c = counts(study)
    best = _best_trial(study)
    settings = study_settings(study) or {}
    return {
        "study": study.study_name,
        "n_trials_target": settings.get("n_trials"),
        "n_trials_complete": c["COMPLETE"],
        "n_trials_pruned": c["PRUNED"],
        "n_trials_failed": c["FAIL"],
        "n_trials_surplus": c["SURPLUS"],
        "n_trials_running": c["RUNNING"],
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_test_accuracy": None if best is None else best.user_attrs.get("test_accuracy"),
        "best_run_id": None if best is None else best.user_attrs.get("run_id"),
    }


def trials_frame(study: optuna.Study) -> Any:
    """A table of trials: number, state, value (validation accuracy), test accuracy, params, seconds, run id."""
    import pandas as pd

    rows = []
    names: list[str] = []
    for t in study.get_trials(deepcopy=False):
        for k in t.params:
            if k not in names:
                names.append(k)
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        state = "SURPLUS" if t.state == TrialState.FAIL and ua.get("surplus") else t.state.name
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row: dict[str, Any] = {
            "number": t.number,
            "state": state,
            "value": t.value,
            "test_accuracy": ua.get("test_accuracy"),
        }
        row.update({k: t.params.get(k) for k in names})
        row.update(
            {
                "epochs_reported": len(t.intermediate_values),
                "duration_s": None if duration is None else round(duration, 2),
                "run_id": ua.get("run_id"),
                "cached": ua.get("cached"),
                "reason": ua.get("fail_reason") or ua.get("prune_reason"),
                "worker": (ua.get("worker") or {}).get("label"),
            }
        )
        rows.append(row)
    cols = ["number", "state", "value", "test_accuracy", *names, "epochs_reported", "duration_s", "run_id", "cached", "reason", "worker"]
    return pd.DataFrame(rows, columns=cols)


def intermediate_frame(study: optuna.Study) -> Any:
    """Each trial's reported values (validation accuracy per epoch): trial, step, value, state."""
    import pandas as pd

    rows = [
        {"trial": t.number, "step": step, "value": value, "state": t.state.name}
        for t in study.get_trials(deepcopy=False)
        for step, value in sorted(t.intermediate_values.items())
    ]
    return pd.DataFrame(rows, columns=["trial", "step", "value", "state"])


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA parameter importances; empty until at least two trials completed with differing values."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        logger.debug("importances not available: %s", exc)
        return {}


def best_config(study: optuna.Study) -> dict[str, Any] | None:
    """The best trial's full RunConfig as a dict (base config + its parameters), or None."""
    settings = study_settings(study)
    best = _best_trial(study)
    if settings is None or best is None:
        return None
    values = dict(settings["base_config"])
    values.update(best.params)
    return RunConfig.from_dict(values).validate().to_dict()


# ---------------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------------
class Objective:
    """Train one sampled config and return its validation accuracy (Optuna maximises it).

    Works with a real trial or :class:`optuna.trial.FixedTrial`. Each epoch's validation accuracy is
    reported; when the pruner says so the run is stopped and :class:`optuna.TrialPruned` raised (the
    cancelled run is not stored). A run found in the cache replays its history to the pruner, so a
    cached and a fresh trial are judged alike. A trial that fails keeps its one-sentence reason in
    the user attribute ``fail_reason`` and re-raises.
    """

    def __init__(
        self,
        base: RunConfig,
        space: Space,
        data_root: str | os.PathLike[str],
        store: Any,
        *,
        progress: Callable[[dict[str, Any]], None] | None = None,
        repeats: int = 1,
    ) -> None:
        if repeats < 1:
            raise ConfigError(f"Repeats must be at least 1; received {repeats}.")
        self.base = base
        self.space = space
        self.data_root = data_root
        self.store = store
        self.progress = progress
        self.repeats = repeats

    def config_for(self, trial: optuna.trial.BaseTrial) -> RunConfig:
        return self.base.replace(**suggest(trial, self.space)).validate()

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        import keras

        from core.train import TrainingCancelled, train

        keras.backend.clear_session()
        _drop_warm_models()
        t0 = time.monotonic()
        try:
            cfg = self.config_for(trial)
            state = {"prune": False, "step": 0}

            def on_progress(event: dict[str, Any]) -> None:
                if event.get("event") == "epoch":
                    self._report(trial, int(event["row"]["epoch"]), event["row"]["val_accuracy"], state)
                if self.progress is not None:
                    self.progress(event)

            try:
                result = train(cfg, self.data_root, self.store, progress=on_progress, should_stop=lambda: state["prune"])
            except TrainingCancelled:
                if state["prune"]:
                    self._pruned(trial, state["step"])
                raise
            if result.cached:  # replay the stored curve: the same verdict as training it now
                for row in result.record.history:
                    self._report(trial, int(row["epoch"]), row.get("val_accuracy"), state)
                    if state["prune"]:
                        self._pruned(trial, state["step"])
            m = result.record.metrics
            if m.get("val_accuracy") is None:
                raise ConfigError("The run has no validation images, so the search has nothing to select on; raise the validation fraction.")
            vals, tests = [float(m["val_accuracy"])], [m.get("test_accuracy")]
            for r in range(1, self.repeats):  # the same config, other split and initial weights
                again = train(cfg.replace(seed=cfg.seed + r * REPEAT_SEED_STEP), self.data_root, self.store, progress=self.progress)
                vals.append(float(again.record.metrics["val_accuracy"]))
                tests.append(again.record.metrics.get("test_accuracy"))
            if self.repeats > 1:
                trial.set_user_attr("val_accuracies", vals)
                trial.set_user_attr("test_accuracies", tests)
                trial.set_user_attr("test_accuracy_mean", round(float(np.mean([t for t in tests if t is not None])), 4))
            trial.set_user_attr("val_accuracy", m["val_accuracy"])
            trial.set_user_attr("run_id", result.run_id)
            trial.set_user_attr("test_accuracy", m.get("test_accuracy"))
            trial.set_user_attr("train_accuracy", m.get("train_accuracy"))
            trial.set_user_attr("epochs_run", m.get("epochs_run"))
            trial.set_user_attr("cached", result.cached)
            trial.set_user_attr("train_seconds", m.get("seconds"))
            trial.set_user_attr("seconds", round(time.monotonic() - t0, 3))
            return round(float(np.mean(vals)), 6)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C, or the worker was stopped)")
            raise
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, SceneLabError):
                reason = f"{type(exc).__name__}: {reason}"
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", reason[:500])
            raise

    @staticmethod
    def _report(trial: optuna.trial.BaseTrial, step: int, value: Any, state: dict[str, Any]) -> None:
        state["step"] = step
        if value is None or not math.isfinite(float(value)):
            return
        trial.report(float(value), step)
        if trial.should_prune():
            state["prune"] = True

    @staticmethod
    def _pruned(trial: optuna.trial.BaseTrial, step: int) -> None:
        pruner = getattr(getattr(trial, "study", None), "pruner", None)
        by = f" by the {type(pruner).__name__}" if pruner is not None else ""
        msg = f"pruned after epoch {step}{by}: its validation accuracy fell behind"
        with contextlib.suppress(Exception):
            trial.set_user_attr("prune_reason", msg)
        raise optuna.TrialPruned(msg)


def _drop_warm_models() -> None:
    """Forget ``core.perf``'s warm compiled models: their graphs went with the cleared session.

    A search seldom reuses one anyway (dropout, optimizer and weight decay are part of their key)."""
    from core import perf

    perf.WARM.clear()


# ---------------------------------------------------------------------------------------------------
# samplers and pruners
# ---------------------------------------------------------------------------------------------------
class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """Re-creates its inner sampler with seed ``seed + trial.number`` before each trial.

    Trial numbers are unique across all workers, so concurrent workers given the same seed never
    draw the same parameters, and a trial's draw does not depend on which worker runs it.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner = factory(seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._factory(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (TPESampler, the default) or ``random`` (the study's W&B sweep was random)."""
    if name == "tpe":
        return PerTrialSeedSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)
    if name == "random":
        return PerTrialSeedSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    raise ConfigError(f"Unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}.")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``median`` (MedianPruner: 5 startup trials, 3 warm-up epochs) or ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"Unknown pruner {name!r}; expected one of {', '.join(PRUNERS)}.")


# ---------------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]  # field 22: start time in clock ticks since boot


def _host_id() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host (+ boot id), pid and the pid's start time (pids get reused)."""
    pid = os.getpid()
    return {"host": _host_id(), "pid": pid, "start": _proc_start(pid), "label": f"{socket.gethostname()}:{pid}"}


def _alive(worker: dict[str, Any]) -> bool:
    pid = int(worker.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = worker.get("start")
    if start is not None and Path("/proc").is_dir():
        now = _proc_start(pid)
        return now == start
    return True


def _heartbeat_enabled(study: optuna.Study) -> bool:
    storage = study._storage
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers.

    On this machine a worker is gone when its pid no longer runs (checked at once); for workers on
    other machines Optuna's heartbeat does it after its grace period (RDB storages only).
    """
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if _heartbeat_enabled(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    me = _host_id()
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != me or _alive(worker):
            continue
        with contextlib.suppress(Exception):  # another worker may have failed it first
            storage.set_trial_user_attr(
                t._trial_id,
                "fail_reason",
                f"its worker ({worker.get('label')}) stopped before the trial finished (killed or crashed)",
            )
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            logger.warning("Trial %d was left running by a dead worker (%s); marked FAIL.", t.number, worker.get("label"))
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - after)


class _Surplus(Exception):
    """The trial is beyond the study's target count: closed without training."""


class _QuietSurplus(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "_Surplus" not in record.getMessage()


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_IN_A_ROW = 5


class SearchStopped(SceneLabError):
    """A worker gave up because its trials kept failing."""


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """True when ``n_trials`` live (finished or running) trials were created before trial ``number``.

    Trial numbers are given out atomically by the storage, so of several trials asked for at the
    same instant only those within the count pass; the others are surplus.
    """
    ahead = [t for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < number]
    return len(ahead) >= n_trials


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.trial.Trial], float],
    n_trials: int,
    *,
    timeout: float | None = None,
    poll_s: float = 2.0,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    max_failures: int = MAX_FAILURES_IN_A_ROW,
) -> dict[str, int]:
    """Work on ``study`` until it holds ``n_trials`` finished (COMPLETE + PRUNED) trials.

    Other workers may share the study. Before asking for a trial this worker fails trials of dead
    workers and counts: it stops once ``n_trials`` are finished, and waits (polling) while the
    finished plus other workers' running trials already make the count, since a running one may
    still fail. Right after asking, a trial whose rank among live trials is ``n_trials`` or more was
    asked for concurrently with the last slot: it is closed as FAIL (``surplus``) without training.
    ``timeout`` stops asking for new trials after that many seconds; ``max_failures`` failed trials
    in a row raise :class:`SearchStopped` with the last reason. Returns this worker's trials per
    state (``complete``, ``pruned``, ``failed``, ``surplus``).
    """
    if n_trials < 1:
        raise ConfigError(f"The number of trials must be at least 1; received {n_trials}.")
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietSurplus) for f in optimize_log.filters):
        optimize_log.addFilter(_QuietSurplus())
    identity = worker_identity()
    mine = {"complete": 0, "pruned": 0, "failed": 0, "surplus": 0}
    t0 = time.monotonic()

    def guarded(trial: optuna.trial.Trial) -> float:
        trial.set_user_attr("worker", identity)
        if is_surplus(study, trial.number, n_trials):
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", "not run: the study already had its trials when this worker asked")
            raise _Surplus(f"trial {trial.number} is beyond the study's {n_trials} trials")
        return objective(trial)

    in_a_row: list[str] = []

    def record(_: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            mine["complete"] += 1
            in_a_row.clear()
        elif trial.state == TrialState.PRUNED:
            mine["pruned"] += 1
            in_a_row.clear()
        elif trial.user_attrs.get("surplus"):
            mine["surplus"] += 1
        else:
            mine["failed"] += 1
            in_a_row.append(str(trial.user_attrs.get("fail_reason") or "no reason recorded"))
        if on_trial is not None:
            on_trial(trial)

    while True:
        fail_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= n_trials:
            break
        if timeout is not None and time.monotonic() - t0 >= timeout:
            logger.info("Timeout reached: %d of %d trials finished; run again to go on.", finished, n_trials)
            break
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if finished + running >= n_trials:
            time.sleep(poll_s)  # the last trials run elsewhere; one may still fail and need redoing
            continue
        try:
            study.optimize(guarded, n_trials=1, catch=(Exception,), callbacks=[record], gc_after_trial=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            # this worker was silent past the heartbeat's grace period (e.g. a suspended laptop) and
            # another one failed its trial meanwhile: the result is dropped, the count stays exact
            logger.warning("This worker's trial was marked failed by another worker meanwhile; its result is dropped.")
            mine["failed"] += 1
        if len(in_a_row) >= max_failures:
            raise SearchStopped(
                f"This worker stopped after {len(in_a_row)} trials in a row failed; the last one because: "
                f"{in_a_row[-1].rstrip('.')}."
            )
    return mine


# ---------------------------------------------------------------------------------------------------
# creating / resuming a study
# ---------------------------------------------------------------------------------------------------
def create_or_resume(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    settings: dict[str, Any] | None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, dict[str, Any]]:
    """Create the study with ``settings`` (space, base config...) or load it and return its stored settings.

    With ``settings=None`` the study must exist. Two workers creating one study at once both end
    with the stored settings of whichever wrote first (checked by the caller).
    """
    if not name or not name.strip():
        raise ConfigError("Give the study a name (--study NAME).")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    ) if settings is not None else load_study(storage, name)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"Study {name!r} minimises its objective; SceneLab maximises validation accuracy, so use another name.")
    stored = study_settings(study)
    if stored is None:
        if settings is None or study.get_trials(deepcopy=False):
            raise ConfigError(f"Study {name!r} was not made by SceneLab (it has no stored search space); use another name.")
        study.set_user_attr(SETTINGS_ATTR, settings)
        stored = study_settings(study)
    assert stored is not None
    if sampler is not None:
        study.sampler = sampler
    if pruner is not None:
        study.pruner = pruner
    return study, stored


def _fingerprint(data_root: str) -> str:
    from core.data import scan_dataset

    return scan_dataset(data_root).fingerprint


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()
_RUN_DEFAULTS: dict[str, Any] = {}


def add_cli(sub: Any) -> None:
    """Register ``python -m core tune`` on the CLI's subparsers."""
    from core.cli import add_run_options

    p = sub.add_parser(
        "tune",
        help="hyperparameter search with Optuna (create or resume a study; run as many workers as you like)",
        description=(
            "Create or resume an Optuna study and work on it until it holds --trials finished trials. "
            "Several processes (on several machines, with a shared --storage) may work on one study."
        ),
    )
    p.add_argument("--data", default=None, help="dataset folder (default: the one the study was created with)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--trials", type=int, default=None, help=f"finished trials the study should hold (default {DEFAULT_TRIALS}, or the study's)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or file (.db SQLite, .log journal); default <artifacts>/studies/studies.db")
    p.add_argument("--timeout", type=float, default=None, help="stop asking for new trials after S seconds")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="tpe (default) or random")
    p.add_argument("--pruner", choices=PRUNERS, default=None, help="median (default) or none")
    p.add_argument("--space", default=None, help="JSON file narrowing or fixing search parameters")
    p.add_argument(
        "--repeats",
        default=None,
        help=(
            "trainings per trial, each with another seed (validation split and initial weights), scored by "
            f"their mean validation accuracy; 'auto' (default): {AUTO_REPEATS_CHEAP} when trials train heads on "
            "cached features, else 1"
        ),
    )
    # the train options: any one given fixes that parameter; tell given from default with a sentinel
    probe = argparse.ArgumentParser(add_help=False)
    add_run_options(probe, for_search=True)
    defaults = vars(probe.parse_args([]))
    _RUN_DEFAULTS.clear()
    _RUN_DEFAULTS.update(defaults)
    _RUN_DEFAULTS.update({k: v for k, v in TUNE_DEFAULTS.items() if k in defaults})
    add_run_options(p, for_search=True)
    p.add_argument("--artifacts", default=None, help="artifacts folder (default: SCENELAB_ARTIFACTS or ./artifacts)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(**dict.fromkeys(defaults, UNSET))


_DEST_TO_FIELD = {"early_stopping": "early_stopping_patience"}


def _explicit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The train options given on the command line (dest -> value); fills in defaults for the rest."""
    explicit = {}
    for dest, default in _RUN_DEFAULTS.items():
        value = getattr(args, dest, UNSET)
        if value is UNSET:
            setattr(args, dest, default)
        else:
            explicit[dest] = value
    return explicit


def _compare(name: str, stored: dict[str, Any], cfg: RunConfig, explicit: dict[str, Any], space: Space) -> None:
    mine = cfg.to_dict()
    for dest in explicit:
        if dest.startswith("aug_"):
            field, have, want = "augment", stored.get("augment"), mine["augment"]
        else:
            field = _DEST_TO_FIELD.get(dest, dest)
            have, want = stored.get(field), mine.get(field)
        if field in space:
            raise ConfigError(
                f"Study {name!r} searches {field}; fixing it with --{dest.replace('_', '-')} would change its "
                "search space, so leave the option out or start a new study."
            )
        if have != want:
            raise ConfigError(
                f"Study {name!r} was created with {field}={have!r}, not {want!r}; leave "
                f"--{dest.replace('_', '-')} out to join it or use a new study name."
            )


def resolve_repeats(value: str | int | None, base: RunConfig) -> int:
    """``--repeats``: a positive count, or ``auto``/unset: :data:`AUTO_REPEATS_CHEAP` for heads on cached features."""
    if value is None or str(value).strip().lower() == "auto":
        return AUTO_REPEATS_CHEAP if base.phase == "head" and base.uses_feature_cache else 1
    try:
        n = int(str(value))
    except ValueError:
        n = 0
    if not 1 <= n <= 20:
        raise ConfigError(f"--repeats must be auto or a count from 1 to 20; received {value!r}.")
    return n


def prepare_cli_study(args: argparse.Namespace) -> tuple[optuna.Study, dict[str, Any], str]:
    """Resolve the CLI's options into a created or resumed study; returns (study, settings, data root)."""
    from core.cli import config_from_args, default_artifacts

    explicit = _explicit_options(args)
    artifacts = args.artifacts or str(default_artifacts())
    url = resolve_storage_url(args.storage, artifacts)
    storage = open_storage(url, heartbeat=True)
    try:
        existing = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        existing = None
    space_file = read_space_file(args.space) if args.space else None
    cfg = config_from_args(args)
    if existing is not None and study_settings(existing) is not None:
        stored = study_settings(existing) or {}
        _compare(args.study, stored["base_config"], cfg, explicit, stored["space"])
        if space_file is not None:
            fixed: dict[str, Any] = {}
            wanted = build_space(space_file, fixed, base=stored["base_config"])
            if wanted != stored["space"]:
                raise ConfigError(
                    f"Study {args.study!r} was created with another search space; leave --space out to join it or use a new study name."
                )
        for opt in ("sampler", "pruner"):
            given = getattr(args, opt)
            if given is not None and given != stored[opt]:
                raise ConfigError(
                    f"Study {args.study!r} uses the {stored[opt]} {opt}, not {given}; leave --{opt} out or use a new study name."
                )
        if args.repeats is not None:
            want, have = resolve_repeats(args.repeats, RunConfig.from_dict(stored["base_config"])), int(stored.get("repeats", 1))
            if want != have:
                raise ConfigError(
                    f"Study {args.study!r} trains each trial {have} time(s), not {want}; leave --repeats out or use a new study name."
                )
        data_root = args.data or stored["data_root"]
        if _fingerprint(data_root) != stored["data_fingerprint"]:
            raise ConfigError(
                f"The dataset at {data_root} is not the one study {args.study!r} was created with; "
                "point --data at a copy of that dataset."
            )
        settings = None
    else:
        if not args.data:
            raise ConfigError(f"Study {args.study!r} does not exist yet; give --data to create it.")
        data_root = str(Path(args.data).expanduser().resolve())
        fixed = {}
        for dest in explicit:
            field = _DEST_TO_FIELD.get(dest, dest)
            if field in SEARCHABLE:
                fixed[field] = getattr(cfg, field)
        base = cfg.to_dict()
        space = build_space(space_file, fixed, base=base)
        base.update(fixed)
        RunConfig.from_dict(base).validate()
        settings = {
            "version": SETTINGS_VERSION,
            "space": space,
            "fixed": fixed,
            "base_config": base,
            "data_root": data_root,
            "data_fingerprint": _fingerprint(data_root),
            "sampler": args.sampler or "tpe",
            "pruner": args.pruner or "median",
            "seed": cfg.seed,
            "repeats": resolve_repeats(args.repeats, RunConfig.from_dict(base)),
            "n_trials": args.trials or DEFAULT_TRIALS,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    study, stored = create_or_resume(storage, args.study, settings=settings)
    if settings is not None and stored != settings:
        # someone created it at the same instant: join only if they asked for the same search
        same = {k: v for k, v in stored.items() if k not in ("created", "n_trials")} == {
            k: v for k, v in settings.items() if k not in ("created", "n_trials")
        }
        if not same:
            raise ConfigError(f"Study {args.study!r} was just created by another worker with other settings; use a new study name.")
    n = args.trials or stored.get("n_trials") or DEFAULT_TRIALS
    if n != stored.get("n_trials"):
        stored = {**stored, "n_trials": n}
        study.set_user_attr(SETTINGS_ATTR, stored)
    study.sampler = make_sampler(stored["sampler"], int(stored.get("seed", 0)))
    study.pruner = make_pruner(stored["pruner"])
    return study, stored, data_root


def run_cli(args: argparse.Namespace) -> int:
    """``python -m core tune``: create or resume the study, work on it, print the summary."""
    from core.cli import default_artifacts
    from core.store import Store

    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be at least 1; received {args.trials}.")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds; received {args.timeout:g}.")
    optuna.logging.set_verbosity(optuna.logging.INFO if getattr(args, "verbose", False) else optuna.logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tf.function retracing notes, one per trial
    t0 = time.monotonic()
    study, settings, data_root = prepare_cli_study(args)
    store = Store(args.artifacts or default_artifacts())
    with contextlib.suppress(SceneLabError, OSError):
        store.clean_stale()
    base = RunConfig.from_dict(settings["base_config"])
    objective = Objective(base, settings["space"], data_root, store, repeats=int(settings.get("repeats", 1)))
    n = int(settings["n_trials"])

    def log_trial(t: FrozenTrial) -> None:
        extra = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
        if t.state == TrialState.COMPLETE:
            val = f" val {t.value:.4f} test {t.user_attrs.get('test_accuracy')}"
        else:
            val = f" last val {t.value:.4f}" if t.value is not None else ""
        logger.info("trial %d %s%s %s %s", t.number, t.state.name, val, t.params, extra)

    if threading_is_main():
        signal.signal(signal.SIGTERM, _sigterm)
    logger.info("study %s: working until %d trials are finished (storage %s)", study.study_name, n, redact(resolve_storage_url(args.storage, args.artifacts)))
    mine = run_worker(study, objective, n, timeout=args.timeout, on_trial=log_trial)
    out = summary(study)
    out["worker"] = mine
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["storage"] = redact(resolve_storage_url(args.storage, args.artifacts))
    out["best_config"] = best_config(study)
    if args.json:
        print(json.dumps(out, default=str))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


__all__ = [
    "DEFAULT_SPACE",
    "Objective",
    "PerTrialSeedSampler",
    "SearchStopped",
    "add_cli",
    "best_config",
    "build_space",
    "counts",
    "create_or_resume",
    "default_storage_url",
    "fail_dead_trials",
    "importances",
    "intermediate_frame",
    "is_surplus",
    "list_studies",
    "load_study",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "prepare_cli_study",
    "read_space_file",
    "resolve_storage_url",
    "run_cli",
    "run_worker",
    "study_settings",
    "suggest",
    "summary",
    "trials_frame",
    "worker_identity",
]
