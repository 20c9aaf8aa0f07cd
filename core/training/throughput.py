"""How fast this machine runs a backbone, and what a run will therefore cost, before it is trained.

:func:`measure` times a few forward passes and training steps of the backbone at one image size (random
weights: speed does not depend on them) and keeps the figures in ``<artifacts>/throughput.json``, so it
runs once per machine, backbone and size. :func:`run_cost` turns a prepared run into seconds from them:
feature passes (skipped when cached), head epochs, epochs through the frozen or trained network.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig
from core.errors import SceneLabError
from core.store.atomic import atomic_write_json

logger = logging.getLogger(__name__)

HEAD_RUN_S = 3.0  # building, compiling and fitting a head on cached features (BENCHMARKS.md §4)
BATCH = 16


@dataclass(frozen=True)
class Throughput:
    infer: float  # images per second through the frozen network
    train: float  # images per second through a training step of the whole network


@dataclass(frozen=True)
class Cost:
    seconds: float
    feature_key: str | None = None  # the feature cache a run computes first (shared by later runs)
    feature_seconds: float = 0.0


def _cache(root: Path) -> Path:
    return root / "throughput.json"


def is_measured(backbone: str, image_size: int, root: Path) -> bool:
    """Whether :func:`measure` would answer from the cache (no model built)."""
    try:
        known = json.loads(_cache(root).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(known, dict) and isinstance(known.get(f"{backbone}@{image_size}"), dict)


def measure(backbone: str, image_size: int, root: Path) -> Throughput:
    """Images/s through ``backbone`` at ``image_size``: measured once, then read from ``root``'s cache."""
    key = f"{backbone}@{image_size}"
    path = _cache(root)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), dict):
        return Throughput(float(known[key]["infer"]), float(known[key]["train"]))
    figures = _time_backbone(backbone, image_size)
    known = known if isinstance(known, dict) else {}
    known[key] = {"infer": figures.infer, "train": figures.train, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        atomic_write_json(path, known)
    except SceneLabError as exc:  # a cache: measured again next time
        logger.warning("%s", exc)
    return figures


def _time_backbone(backbone: str, image_size: int) -> Throughput:
    from core.models.backbones import ResolvedWeights
    from core.models.model import build_classifier, set_base_trainable
    from core.training.features import FeatureFn

    clf = build_classifier(backbone, image_size, 8, weights=ResolvedWeights("none", None, f"{backbone}:none"))
    x = np.random.default_rng(0).uniform(0, 255, (BATCH, image_size, image_size, 3)).astype("float32")
    y = np.arange(BATCH) % 8
    fn = FeatureFn(clf.features)  # the traced pass feature caches and augmented heads use
    fn(x)
    t0 = time.perf_counter()
    for _ in range(2):
        fn(x)
    infer = 2 * BATCH / max(1e-6, time.perf_counter() - t0)
    set_base_trainable(clf, True)
    clf.model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    clf.model.train_on_batch(x, y)  # trace
    t0 = time.perf_counter()
    clf.model.train_on_batch(x, y)
    train = BATCH / max(1e-6, time.perf_counter() - t0)
    logger.info("Measured %s at %d px: %.0f img/s inference, %.0f img/s training.", backbone, image_size, infer, train)
    return Throughput(round(infer, 2), round(train, 2))


def _sizes(prep: Any) -> tuple[int, int, int]:
    """(all images, training images of the run, validation + test images)."""
    counts = prep.info.counts()
    n_train_folder = sum(counts["train"].values())
    n_all = n_train_folder + sum(counts["test"].values())
    cfg: RunConfig = prep.cfg
    n_val = int(round(n_train_folder * cfg.val_fraction))
    n_train = n_train_folder - n_val
    if cfg.train_per_class is not None:
        n_train = min(n_train, cfg.train_per_class * len(prep.info.classes))
    return n_all, n_train, n_all - n_train_folder + n_val


def run_cost(prep: Any, store: Any, speed: Throughput | None = None) -> Cost:
    """Seconds ``prep`` (a :class:`core.training.identity.Prepared`) will take to train here, from measured throughput."""
    from core.training.features import features_key

    cfg: RunConfig = prep.cfg
    speed = speed or measure(cfg.backbone, cfg.image_size, Path(store.root))
    n_all, n_train, n_eval = _sizes(prep)
    key = features_key(cfg, prep.info.fingerprint, prep.weights)
    feature_seconds = 0.0
    seconds = 0.0
    if cfg.phase in ("head", "head+full"):
        if cfg.uses_feature_cache:
            passes = 2 if (cfg.augment.hflip or cfg.tta) else 1
            if not (Path(store.features_dir) / f"{key}.npz").exists():
                feature_seconds = passes * n_all / speed.infer
            seconds += HEAD_RUN_S
        else:  # augmented images through the frozen backbone every epoch
            seconds += cfg.epochs * n_train / speed.infer + n_eval / speed.infer
    if cfg.phase in ("full", "head+full"):
        epochs = cfg.epochs if cfg.phase == "full" else cfg.resolved_full_epochs
        seconds += epochs * n_train / speed.train + n_eval * (2 if cfg.tta else 1) / speed.infer
    return Cost(seconds + feature_seconds, key if feature_seconds else None, feature_seconds)
