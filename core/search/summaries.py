"""Reading a study: its trials per state, its best trial, tables and importances for the page and the CLI."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.config import RUN_SETTINGS, RunConfig
from core.errors import ConfigError
from core.search.storage import as_storage, retried_from

logger = logging.getLogger(__name__)

SETTINGS_ATTR = "scenelab"
#: parameter importances are drawn from this many completed trials on (the page says so before)
MIN_TRIALS_FOR_IMPORTANCE = 10


def param_label(name: str) -> str:
    """A parameter's words on the pages (its setting's label: ``lr`` -> "Learning rate")."""
    info = RUN_SETTINGS.get(name)
    return info.label if info is not None else name


def param_text(name: str, value: Any) -> str:
    """A parameter and its value in words: "Learning rate 3.0e-03", "Batch norm on"."""
    info = RUN_SETTINGS.get(name)
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:.1e}" if info is not None and info.log else f"{value:.3g}"
    else:
        shown = str(value)
    return f"{param_label(name)} {shown}"


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
    """The figures the CLI prints: counts per state and the best (validation) trial, with where it was trained."""
    c = counts(study)
    best = _best_trial(study)
    settings = study_settings(study) or {}
    ua = {} if best is None else best.user_attrs
    return {
        "study": study.study_name,
        "n_trials_target": settings.get("n_trials"),
        "n_trials_complete": c["COMPLETE"],
        "n_trials_pruned": c["PRUNED"],
        "n_trials_failed": c["FAIL"],
        "n_trials_surplus": c["SURPLUS"],
        "n_trials_running": c["RUNNING"],
        "n_trials_waiting": c["WAITING"],
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_test_accuracy": ua.get("test_accuracy"),
        "best_run_id": ua.get("run_id"),
        "best_host": ua.get("host") or (ua.get("worker") or {}).get("label"),
        "best_artifacts": ua.get("artifacts"),
    }


def _state(t: FrozenTrial) -> str:
    return "SURPLUS" if t.state == TrialState.FAIL and t.user_attrs.get("surplus") else t.state.name


def _reasons(trials: list[FrozenTrial]) -> dict[int, str]:
    """Why each trial failed or was pruned; a trial failed through the heartbeat records none itself, so
    its reason is read from the retry that runs its configuration again."""
    retries = {retried_from(t): t.number for t in trials if retried_from(t) is not None}
    out: dict[int, str] = {}
    for t in trials:
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason")
        if t.number in retries:
            reason = (reason.rstrip(".") + "; " if reason else "its worker stopped sending heartbeats (killed, crashed or cut off); ")
            reason += f"its configuration runs again as trial {retries[t.number]}"
        if reason:
            out[t.number] = reason
    return out


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial's figures, read from the storage alone (``tune --json``'s ``trials``): number, state,
    validation and test accuracy, parameters, run id, the machine that trained it and why it failed."""
    trials = study.get_trials(deepcopy=False)
    reasons = _reasons(trials)
    rows = []
    for t in trials:
        ua = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "state": _state(t),
                "value": t.value,
                "test_accuracy": ua.get("test_accuracy"),
                "params": t.params,
                "run_id": ua.get("run_id"),
                "host": ua.get("host") or (ua.get("worker") or {}).get("label"),
                "artifacts": ua.get("artifacts"),
                "retry_of": retried_from(t),
                "reason": reasons.get(t.number),
            }
        )
    return rows


def trials_frame(study: optuna.Study) -> Any:
    """A table of trials: number, state, value (validation accuracy), test accuracy, params, seconds, run id,
    the machine that trained it, the trial it retries and the reason of a failure."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    reasons = _reasons(trials)
    rows = []
    for t in trials:
        ua = t.user_attrs
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row: dict[str, Any] = {"number": t.number, "state": _state(t), "value": t.value, "test_accuracy": ua.get("test_accuracy")}
        row.update({k: t.params.get(k) for k in names})
        row.update(
            {
                "epochs_reported": len(t.intermediate_values),
                "duration_s": None if duration is None else round(duration, 2),
                "run_id": ua.get("run_id"),
                "cached": ua.get("cached"),
                "reason": reasons.get(t.number),
                "worker": (ua.get("worker") or {}).get("label"),
                "host": ua.get("host"),
                "retry_of": retried_from(t),
            }
        )
        rows.append(row)
    cols = ["number", "state", "value", "test_accuracy", *names, "epochs_reported", "duration_s", "run_id", "cached",
            "reason", "worker", "host", "retry_of"]  # fmt: skip
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


def importances(study: optuna.Study, min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> dict[str, float]:
    """fANOVA parameter importances; empty until ``min_trials`` trials completed (with differing values):
    from fewer, a random forest over seven parameters says more about the draw than about the parameters."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < max(2, min_trials) or len({t.value for t in complete}) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        logger.debug("importances not available: %s", exc)
        return {}


def best_config(study: optuna.Study) -> dict[str, Any] | None:
    """The best trial's full RunConfig as a dict, or None: the config the trial stored (exact, from the
    storage alone), else the study's base config with the trial's parameters."""
    settings = study_settings(study)
    best = _best_trial(study)
    if best is None:
        return None
    stored = best.user_attrs.get("config")
    if isinstance(stored, dict):
        return RunConfig.from_dict(stored).validate().to_dict()
    if settings is None:
        return None
    values = dict(settings["base_config"])
    values.update(best.params)
    return RunConfig.from_dict(values).validate().to_dict()
