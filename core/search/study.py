"""Creating, joining and running a study: the search as the CLI (``python -m core tune``) and the app start it.

The search space, base config, dataset (path and fingerprint), sampler, pruner, repeats and the target
number of trials are stored with the study (user attribute ``scenelab``), so a worker joining from
elsewhere needs only the study name and the storage, and the app can read any study. An option that
contradicts the stored study is refused with one sentence.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.config import RunConfig
from core.data.scan import scan_dataset
from core.errors import ConfigError, SceneLabError
from core.paths import default_artifacts
from core.search.objective import Objective, resolve_repeats
from core.search.request import (  # noqa: F401 - the request's names are still found here, as before
    DEFAULT_TRIALS,
    TUNE_DEFAULTS,
    StudyRequest,
    option_argv,
    option_flag,
    tune_argv,
)
from core.search.samplers import make_pruner, make_sampler
from core.search.space import SEARCHABLE, Space, build_space, check_space, read_space_file
from core.search.storage import open_storage, redact
from core.search.summaries import SETTINGS_ATTR, best_config, load_study, study_settings, summary, trial_rows
from core.search.workers import run_worker
from core.store.folders import Store

logger = logging.getLogger(__name__)

SETTINGS_VERSION = 1

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
    if settings is not None:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", load_if_exists=True, sampler=sampler, pruner=pruner
        )
    else:
        study = load_study(storage, name)
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


def _fingerprints(data_root: str) -> tuple[str, str]:
    """The dataset's content fingerprint and its legacy one (studies created before content identity)."""
    info = scan_dataset(data_root)
    return info.fingerprint, info.legacy_fingerprint


def _compare(name: str, stored: dict[str, Any], cfg: RunConfig, explicit: dict[str, Any], space: Space) -> None:
    mine = cfg.to_dict()
    for option in explicit:
        if option.startswith("aug_"):
            setting, have, want = "augment", stored.get("augment"), mine["augment"]
        else:
            setting, have, want = option, stored.get(option), mine.get(option)
        if setting in space:
            raise ConfigError(
                f"Study {name!r} searches {setting}; fixing it with {option_flag(option)} would change its "
                "search space, so leave the option out or start a new study."
            )
        if have != want:
            raise ConfigError(
                f"Study {name!r} was created with {setting}={have!r}, not {want!r}; leave "
                f"{option_flag(option)} out to join it or use a new study name."
            )


def _fixed_by_options(req: StudyRequest) -> dict[str, Any]:
    """The searchable parameters the command line fixes (``--optimizer adam``)."""
    return {name: getattr(req.cfg, name) for name in req.explicit if name in SEARCHABLE}


def _check_join(req: StudyRequest, stored: dict[str, Any], space_file: dict[str, Any] | None) -> str:
    """Refuse options that contradict the stored study; return the data root to use."""
    _compare(req.study, stored["base_config"], req.cfg, req.explicit, stored["space"])
    if space_file is not None:  # the creating command's fixes are part of the space it built
        wanted = build_space(space_file, _fixed_by_options(req), base=stored["base_config"])
        if wanted != stored["space"]:
            raise ConfigError(
                f"Study {req.study!r} was created with another search space; leave --space out to join it or use a new study name."
            )
    for opt in ("sampler", "pruner"):
        given = getattr(req, opt)
        if given is not None and given != stored[opt]:
            raise ConfigError(
                f"Study {req.study!r} uses the {stored[opt]} {opt}, not {given}; leave --{opt} out or use a new study name."
            )
    if req.repeats is not None:
        want = resolve_repeats(req.repeats, RunConfig.from_dict(stored["base_config"]))
        have = int(stored.get("repeats", 1))
        if want != have:
            raise ConfigError(
                f"Study {req.study!r} trains each trial {have} time(s), not {want}; leave --repeats out or use a new study name."
            )
    data_root = req.data or stored["data_root"]
    if stored["data_fingerprint"] not in _fingerprints(data_root):
        raise ConfigError(
            f"The dataset at {data_root} is not the one study {req.study!r} was created with; "
            "point --data at a copy of that dataset."
        )
    return data_root


def _new_settings(req: StudyRequest, space_file: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The settings a new study is created with, and its data root."""
    from core.data.bundled import default_dataset

    data = req.data or default_dataset(req.artifacts or default_artifacts())  # SCENELAB_DATA, else the bundled copy
    data_root = str(Path(data).expanduser().resolve())
    fixed = _fixed_by_options(req)
    base = req.cfg.to_dict()
    space = build_space(space_file, fixed, base=base)
    base.update(fixed)
    RunConfig.from_dict(base).validate()
    settings = {
        "version": SETTINGS_VERSION,
        "space": space,
        "fixed": fixed,
        "base_config": base,
        "data_root": data_root,
        "data_fingerprint": _fingerprints(data_root)[0],
        "sampler": req.sampler or "tpe",
        "pruner": req.pruner or "median",
        "seed": req.cfg.seed,
        "repeats": resolve_repeats(req.repeats, RunConfig.from_dict(base)),
        "n_trials": req.trials or DEFAULT_TRIALS,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return settings, data_root


def prepare_study(req: StudyRequest) -> tuple[optuna.Study, dict[str, Any], str]:
    """Create or resume the study ``req`` asks for; returns (study, its settings, data root)."""
    space_file = read_space_file(req.space_file) if req.space_file else None  # checked whole, before any study
    if space_file is not None:
        check_space(space_file, _fixed_by_options(req))
    storage = open_storage(req.storage_url, heartbeat=True)
    try:
        existing = optuna.load_study(study_name=req.study, storage=storage)
    except KeyError:
        existing = None
    if existing is not None and study_settings(existing) is not None:
        data_root, settings = _check_join(req, study_settings(existing) or {}, space_file), None
    else:
        settings, data_root = _new_settings(req, space_file)
    study, stored = create_or_resume(storage, req.study, settings=settings)
    if settings is not None and stored != settings:
        # someone created it at the same instant: join only if they asked for the same search
        ignore = ("created", "n_trials")
        if {k: v for k, v in stored.items() if k not in ignore} != {k: v for k, v in settings.items() if k not in ignore}:
            raise ConfigError(f"Study {req.study!r} was just created by another worker with other settings; use a new study name.")
    n = req.trials or stored.get("n_trials") or DEFAULT_TRIALS
    if n != stored.get("n_trials"):
        stored = {**stored, "n_trials": n}
        study.set_user_attr(SETTINGS_ATTR, stored)
    study.sampler = make_sampler(stored["sampler"], int(stored.get("seed", 0)))
    study.pruner = make_pruner(stored["pruner"])
    return study, stored, data_root


def _log_trial(t: FrozenTrial) -> None:
    extra = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
    if t.state == TrialState.COMPLETE:
        val = f" val {t.value:.4f} test {t.user_attrs.get('test_accuracy')}"
    else:
        val = f" last val {t.value:.4f}" if t.value is not None else ""
    logger.info("trial %d %s%s %s %s", t.number, t.state.name, val, t.params, extra)


def _sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def run_study(req: StudyRequest) -> dict[str, Any]:
    """Create or resume the study, work on it until it holds its trials, return the summary."""
    if req.trials is not None and req.trials < 1:
        raise ConfigError(f"--trials must be at least 1; received {req.trials}.")
    if req.timeout is not None and req.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds; received {req.timeout:g}.")
    t0 = time.monotonic()
    study, settings, data_root = prepare_study(req)
    store = Store(req.artifacts_root)
    with contextlib.suppress(SceneLabError, OSError):
        store.clean_stale()
    base = RunConfig.from_dict(settings["base_config"])
    objective = Objective(base, settings["space"], data_root, store, repeats=int(settings.get("repeats", 1)))
    n = int(settings["n_trials"])
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    logger.info("study %s: working until %d trials are finished (storage %s)", study.study_name, n, redact(req.storage_url))
    mine = run_worker(study, objective, n, timeout=req.timeout, on_trial=_log_trial)
    out = summary(study)
    out["worker"] = mine
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["storage"] = redact(req.storage_url)
    out["best_config"] = best_config(study)
    # a best run trained on another machine sharing the storage is not in this one's artifacts
    out["best_run_here"] = bool(out["best_run_id"]) and store.load_run(out["best_run_id"]) is not None
    out["trials"] = trial_rows(study)
    return out
