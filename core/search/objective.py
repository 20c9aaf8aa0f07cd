"""The objective: train one sampled config (through the run cache) and return its validation accuracy.

``--repeats N`` trains each trial N times with other seeds (other validation splits and initial weights)
and scores the mean: one 282-image validation split has a standard error of about 1.6 points, as large
as the differences between good configs (docs/SEARCH.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from core.config import RunConfig
from core.errors import ConfigError, SceneLabError, first_line
from core.search.space import Space, suggest

#: ``--repeats auto``: trials of heads on cached features are cheap, so each trains this many times
#: (other seeds: other validation splits and initial weights) and scores the mean validation accuracy.
AUTO_REPEATS_CHEAP = 3
REPEAT_SEED_STEP = 1000  # repeat r of a trial with seed s trains with seed s + r * REPEAT_SEED_STEP
#: a run's figures each trial keeps (user attribute ``metrics``), so a page on another machine shows them
TRIAL_METRICS = (
    "train_accuracy", "val_accuracy", "test_accuracy", "epochs_run", "kept_epoch", "seconds", "params_total",
    "params_trainable", "n_train", "n_val", "n_test",
)  # fmt: skip


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

        from core.training.train import TrainingCancelled, train

        keras.backend.clear_session()
        _drop_warm_models()
        t0 = time.monotonic()
        try:
            cfg = self.config_for(trial)
            trial.set_user_attr("config", cfg.to_dict())  # what the trial trains, readable from the storage alone
            trial.set_user_attr("artifacts", str(Path(getattr(self.store, "root", ".")).resolve()))
            state = {"prune": False, "step": 0}

            def on_progress(event: dict[str, Any]) -> None:
                if event.get("event") == "epoch":
                    self._report(trial, int(event["row"]["epoch"]), event["row"]["val_accuracy"], state)
                if self.progress is not None:
                    self.progress(event)

            meta = {"search_study": getattr(getattr(trial, "study", None), "study_name", None)}  # the Runs page's label
            try:
                result = train(cfg, self.data_root, self.store, progress=on_progress, should_stop=lambda: state["prune"],
                               meta=meta)
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
                again = train(cfg.replace(seed=cfg.seed + r * REPEAT_SEED_STEP), self.data_root, self.store,
                              progress=self.progress, meta=meta)
                vals.append(float(again.record.metrics["val_accuracy"]))
                tests.append(again.record.metrics.get("test_accuracy"))
            if self.repeats > 1:
                trial.set_user_attr("val_accuracies", vals)
                trial.set_user_attr("test_accuracies", tests)
                trial.set_user_attr("test_accuracy_mean", round(float(np.mean([t for t in tests if t is not None])), 4))
            trial.set_user_attr("metrics", {k: m.get(k) for k in TRIAL_METRICS})
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
            reason = first_line(exc, 500)
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
    """Forget ``core.models.warm``'s warm compiled models: their graphs went with the cleared session.

    A search seldom reuses one anyway (dropout, optimizer and weight decay are part of their key)."""
    from core.models.warm import WARM

    WARM.clear()
