"""Training with the study's recipe, cached on disk by the hash of everything that decides a result.

``train(cfg, data_root, store)`` returns the stored run when one exists and otherwise trains it. The
path of a run, top-down: the config is resolved against the dataset and weights (``core.training.identity``:
its run id); the images are decoded once per size (``core.data.arrays``); a classifier is built or a warm one
reused (``core.models.warm``, ``core.models.model``); its phases train (``core.training.phases``, on cached features where
they apply, ``core.training.features``); its predictions become figures (``core.training.metrics``); the run is written to
the store atomically (``core.training.runs``, ``core.store.folders``).

* phase ``head``: backbone frozen; without augmentation (or with flips only) the head trains on pooled
  backbone features computed once and cached, so a head trains in seconds.
* phase ``full``: every layer but BatchNorm trains (BatchNorm stays in inference mode).
* phase ``head+full``: the study's task 0, head first and then the whole network at a lower rate.

Model selection (early stopping, reduce-LR) looks at the validation split only; test is reported.

This module answers a stored run without TensorFlow: only a run that must be trained imports
``core.training.trainer`` (and with it Keras).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config import RunConfig
from core.errors import TrainingCancelled
from core.store.folders import RunRecord, Store
from core.training.identity import prepare

if TYPE_CHECKING:
    from core.training.fit import ProgressFn, StopFn

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainingCancelled", "find_run", "train"]


@dataclass
class TrainResult:
    record: RunRecord
    cached: bool
    data_root: str | None = None  # the dataset folder this result was asked for (a copy may have trained it)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def summary(self) -> dict[str, Any]:
        """The CLI's JSON: id, whether reused, accuracies, epochs, seconds, parameters."""
        m = self.record.metrics
        keys = (
            "train_accuracy",
            "val_accuracy",
            "test_accuracy",
            "epochs_run",
            "seconds",
            "params_total",
            "params_trainable",
            "backbone_params",
            "feature_seconds",
            "feature_cache_hit",
        )
        out: dict[str, Any] = {"run_id": self.run_id, "cached": self.cached}
        out.update({k: m.get(k) for k in keys})
        out["dataset"] = self.data_root or self.record.config.get("dataset", {}).get("root")
        out["path"] = str(self.record.path)
        return out


def find_run(cfg: RunConfig, data_root: str | os.PathLike[str], store: Store) -> RunRecord | None:
    """The stored run for ``cfg`` on this dataset, if it was trained before."""
    return prepare(cfg, data_root).stored(store)


def train(
    cfg: RunConfig,
    data_root: str | os.PathLike[str],
    store: Store,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    force: bool = False,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Return the stored run for ``cfg`` or train it now (one process at a time per run id).

    ``force`` trains again and replaces the stored run once the new one is complete. ``meta`` is stored beside
    the run's config and does not enter its id (e.g. ``{"trained_by": name}``)."""
    prep = prepare(cfg, data_root, progress=progress)
    if not force:
        record = prep.stored(store)
        if record is not None:
            return TrainResult(record, cached=True, data_root=str(prep.info.root))
    with store.lock(prep.run_id):
        if not force:
            record = prep.stored(store)  # another process may have finished it meanwhile
            if record is not None:
                return TrainResult(record, cached=True, data_root=str(prep.info.root))
        from core.training.trainer import train_uncached  # Keras loads here, and only here

        record = train_uncached(prep, store, progress, should_stop, replace=force, meta=meta)
    return TrainResult(record, cached=False, data_root=str(prep.info.root))
