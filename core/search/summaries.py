"""Reading a study: its trials per state, its best trial, tables and importances for the page and the CLI."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.config import RunConfig
from core.errors import ConfigError
from core.search.storage import as_storage

logger = logging.getLogger(__name__)

SETTINGS_ATTR = "scenelab"


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
