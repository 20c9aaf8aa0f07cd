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
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from core.config import RunConfig
from core.data.arrays import decode_dataset, make_splits
from core.models.model import HeadOnly, backbone_shape, classifier_for, count_trainable
from core.models.warm import WARM, extractor, head_key, key_for, ready_head, ready_model
from core.runtime import seed_all
from core.store.folders import RunRecord, Store
from core.training.features import features_key
from core.training.fit import ProgressFn, StopFn
from core.training.identity import Prepared, prepare
from core.training.metrics import run_metrics
from core.training.phases import Phases, TrainingCancelled, train_phases
from core.training.runs import save_run

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
    prep = prepare(cfg, data_root)
    if not force:
        record = prep.stored(store)
        if record is not None:
            return TrainResult(record, cached=True, data_root=str(prep.info.root))
    with store.lock(prep.run_id):
        if not force:
            record = prep.stored(store)  # another process may have finished it meanwhile
            if record is not None:
                return TrainResult(record, cached=True, data_root=str(prep.info.root))
        record = _train_uncached(prep, store, progress, should_stop, replace=force, meta=meta)
    return TrainResult(record, cached=False, data_root=str(prep.info.root))


def _train_uncached(
    prep: Prepared, store: Store, progress: ProgressFn | None, should_stop: StopFn | None, *, replace: bool = False,
    meta: dict[str, Any] | None = None,
) -> RunRecord:
    cfg = prep.cfg
    t_start = time.monotonic()
    if progress is not None:
        progress({"event": "status", "message": "decoding images"})
    ds = decode_dataset(prep.info, cfg.image_size, store.datasets_dir)
    splits = make_splits(ds.y_train, cfg.val_fraction, cfg.seed, cfg.train_per_class)
    if progress is not None:
        progress({"event": "status", "message": "building model"})
    classes = len(ds.classes)
    extract = None
    if cfg.phase == "head":  # a head alone: its backbone is built only if a feature cache is missing
        _, _, width = backbone_shape(cfg.backbone, cfg.remove_blocks, cfg.image_size)
        key = head_key(cfg, classes, width)
        entry, reused = ready_head(cfg, classes, width, key)

        def extract() -> Any:
            return extractor(cfg, prep.weights, classes)
    else:
        key = key_for(cfg, prep.weights, classes, prep.freeze_blocks)
        entry, reused = ready_model(cfg, prep.weights, classes, key)
    run = Phases(
        cfg, entry, ds, splits, store, features_key(cfg, ds.fingerprint, prep.weights), prep.prefix_layer,
        progress, should_stop, weights=prep.weights, extract=extract,
    )
    try:
        seed_all(cfg.seed)  # the same random streams whether the model is new or warm
        train_phases(run)
    except TrainingCancelled:
        WARM.checkin(key, entry)  # a reuse resets every variable, so a cancelled model is fine
        raise
    except BaseException:
        WARM.discard(key, entry)  # an unexpected failure: never reuse what it left
        raise
    try:
        record = _evaluate_and_save(prep, store, run, t_start, reused, replace, meta)
    except BaseException:
        WARM.discard(key, entry)
        raise
    WARM.checkin(key, entry)
    return record


def _evaluate_and_save(
    prep: Prepared, store: Store, run: Phases, t_start: float, reused: bool, replace: bool, meta: dict[str, Any] | None
) -> RunRecord:
    cfg, clf = prep.cfg, run.clf
    run.status("evaluating")
    assert run.predict is not None
    p_val, p_test = run.predict()
    base_trained = cfg.phase in ("full", "head+full")
    metrics = run_metrics(cfg, run.ds, run.splits, run.history, p_val, p_test)
    if isinstance(clf, HeadOnly):
        backbone_params, cut_layer, _ = backbone_shape(cfg.backbone, cfg.remove_blocks, cfg.image_size)
        total = backbone_params + int(clf.head.count_params())
        if prep.weights.path is None:  # random weights: the saved model must hold them, so build it now
            clf = _with_trained_head(cfg, prep, len(run.ds.classes), clf.head)
    else:
        backbone_params, cut_layer, total = clf.backbone_params, clf.cut_layer, int(clf.model.count_params())
    metrics.update(
        {
            "seconds": round(time.monotonic() - t_start, 3),
            "feature_seconds": round(run.feature_seconds, 3),
            "feature_cache_hit": run.feature_hit,
            "backbone_params": backbone_params,
            "params_total": total,
            "params_trainable": count_trainable(clf.model) if base_trained else count_trainable(clf.head),
            "cut_layer": cut_layer,
            "warm_model": reused,
        }
    )
    if prep.freeze_blocks:
        metrics["freeze_blocks"] = prep.freeze_blocks
    val = (p_val, run.ds.y_train[run.splits.val])
    return save_run(prep, store, clf, run.ds, run.history, metrics, p_test, base_trained, replace=replace, meta=meta,
                    val=val)


def _with_trained_head(cfg: RunConfig, prep: Prepared, classes: int, head: Any) -> Any:
    """The whole classifier of a head trained alone on random-weight features: the same seeded backbone
    (as the features were computed with), the trained head's weights."""
    seed_all(cfg.seed)
    clf = classifier_for(cfg, classes, prep.weights)
    clf.head.set_weights(head.get_weights())
    return clf
