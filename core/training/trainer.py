"""The training of one run that is not stored yet: decode, build or reuse a model, train its phases, evaluate,
save (``core.training.train.train`` calls it under the run's lock; importing this module loads Keras)."""

from __future__ import annotations

import logging
import time
from typing import Any

from core.config import RunConfig
from core.data.arrays import decode_dataset, make_splits
from core.errors import TrainingCancelled
from core.models.model import HeadOnly, backbone_shape, classifier_for, count_trainable
from core.models.warm import WARM, extractor, head_key, key_for, ready_head, ready_model
from core.runtime import seed_all
from core.store.folders import RunRecord, Store
from core.training.features import features_key
from core.training.fit import ProgressFn, StopFn
from core.training.identity import Prepared
from core.training.metrics import run_metrics
from core.training.phases import Phases, train_phases
from core.training.runs import save_run

logger = logging.getLogger(__name__)


def train_uncached(
    prep: Prepared, store: Store, progress: ProgressFn | None, should_stop: StopFn | None, *, replace: bool = False,
    meta: dict[str, Any] | None = None,
) -> RunRecord:
    cfg = prep.cfg
    t_start = time.monotonic()
    if progress is not None:
        progress({"event": "status", "message": "decoding images"})
    ds = decode_dataset(prep.info, cfg.image_size, store.datasets_dir, progress=progress)
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
