"""Samplers and pruners: TPE or random (the study's sweep), median pruning or none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")


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
