"""How fast this machine runs a backbone, and what a run will therefore cost, before it is trained.

:func:`measure` times a few forward passes and training steps of the backbone at one image size (random
weights: speed does not depend on them) and keeps the figures in ``<artifacts>/throughput.json``, so it
runs once per machine, backbone and size. :func:`run_cost` turns a prepared run into seconds from them:
feature passes (skipped when cached), head epochs, epochs through the frozen or trained network. A head on
cached features costs what this machine's stored head runs of the backbone cost per epoch
(:func:`head_epoch_seconds`); before there is one it is a rough constant, and the cost says so (``measured``).
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

HEAD_RUN_S = 3.0  # a rough head run on cached features (BENCHMARKS.md §4) until this machine has stored one
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
    measured: bool = True  # False: part of it is the rough constant HEAD_RUN_S (no head run stored here yet)


def measured_cache(root: Path) -> Path:
    """The file of measured throughputs (``backbone@size`` -> images/s) under the artifacts folder ``root``."""
    return root / "throughput.json"


def known(backbone: str, image_size: int, root: Path) -> Throughput | None:
    """The measured throughput when this machine has it, without measuring (which takes seconds)."""
    try:
        figures = json.loads(measured_cache(root).read_text()).get(f"{backbone}@{image_size}")
        return Throughput(float(figures["infer"]), float(figures["train"]))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def measure(backbone: str, image_size: int, root: Path) -> Throughput:
    """Images/s through ``backbone`` at ``image_size``: measured once, then read from ``root``'s cache."""
    key = f"{backbone}@{image_size}"
    path = measured_cache(root)
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
    measured = True
    if cfg.phase in ("head", "head+full"):
        if cfg.uses_feature_cache:
            passes = 2 if (cfg.augment.hflip or cfg.tta) else 1
            if not (Path(store.features_dir) / f"{key}.npz").exists():
                feature_seconds = passes * n_all / speed.infer
            per_epoch = head_epoch_seconds(store, cfg.backbone)
            seconds += per_epoch * cfg.epochs if per_epoch is not None else HEAD_RUN_S
            measured = per_epoch is not None
        else:  # augmented images through the frozen backbone every epoch
            seconds += cfg.epochs * n_train / speed.infer + n_eval / speed.infer
    if cfg.phase in ("full", "head+full"):
        epochs = cfg.epochs if cfg.phase == "full" else cfg.resolved_full_epochs
        per_image, known_suffix = _train_image_seconds(cfg, prep, store, speed)
        seconds += epochs * n_train * per_image + n_eval * (2 if cfg.tta else 1) / speed.infer
        measured = measured and known_suffix
    return Cost(seconds + feature_seconds, key if feature_seconds else None, feature_seconds, measured)


def _train_image_seconds(cfg: RunConfig, prep: Any, store: Any, speed: Throughput) -> tuple[float, bool]:
    """Seconds per training image and epoch of the network phase: the whole network at its measured speed, or
    the trainable suffix after a frozen prefix, from this machine's stored runs of the same depth (else a rough
    share of the whole network's time: the trained blocks' share of the blocks, which overstates it)."""
    if not prep.freeze_blocks:
        return 1.0 / speed.train, True
    seen = suffix_image_seconds(store, cfg.backbone, cfg.image_size, cfg.remove_blocks, prep.freeze_blocks)
    if seen is not None:
        return seen, True
    from core.models.backbones import get_backbone

    blocks = get_backbone(cfg.backbone).blocks
    return (blocks - cfg.remove_blocks - prep.freeze_blocks) / blocks / speed.train, False


_SUFFIX: dict[tuple[str, float], dict[tuple[str, int, int, int], float]] = {}


def suffix_image_seconds(store: Any, backbone: str, size: int, remove: int, freeze: int) -> float | None:
    """Median seconds per image and epoch of the stored partial fine-tuning runs of this depth (their whole
    time over their network epochs and training images: the head's epochs on cached features are small)."""
    runs_dir = Path(store.runs_dir)
    try:
        stamp = (str(runs_dir), runs_dir.stat().st_mtime)
    except OSError:
        return None
    if stamp not in _SUFFIX:
        per: dict[tuple[str, int, int, int], list[float]] = {}
        for record in store.list_runs():
            cfg, m = record.config.get("run", {}), record.metrics
            if cfg.get("phase") not in ("full", "head+full") or not cfg.get("freeze_blocks") or not m.get("n_train"):
                continue
            epochs = cfg.get("epochs") if cfg.get("phase") == "full" else (cfg.get("full_epochs") or cfg.get("epochs"))
            spent = float(m.get("seconds") or 0.0) - float(m.get("feature_seconds") or 0.0)
            key = (str(cfg.get("backbone")), int(cfg.get("image_size")), int(cfg.get("remove_blocks") or 0),
                   int(cfg["freeze_blocks"]))  # fmt: skip
            if spent > 0 and epochs:
                per.setdefault(key, []).append(spent / (int(epochs) * int(m["n_train"])))
        _SUFFIX.clear()
        _SUFFIX[stamp] = {k: float(np.median(v)) for k, v in per.items()}
    return _SUFFIX[stamp].get((backbone, size, remove, freeze))


_HEAD_EPOCHS: dict[tuple[str, float], dict[str, float]] = {}  # (runs folder, its mtime) -> backbone -> s/epoch


def head_epoch_seconds(store: Any, backbone: str) -> float | None:
    """Median seconds per epoch of the heads trained on cached features of ``backbone`` stored in ``store``
    (what this machine measured; feature passes left out), or None when it has none yet. Read once per
    change of the runs folder (a new run renames a folder into it)."""
    runs_dir = Path(store.runs_dir)
    try:
        stamp = (str(runs_dir), runs_dir.stat().st_mtime)
    except OSError:
        return None
    if stamp not in _HEAD_EPOCHS:
        per: dict[str, list[float]] = {}
        for record in store.list_runs():
            cfg, m = record.config.get("run", {}), record.metrics
            cached = cfg.get("phase") == "head" and not any(
                v for k, v in cfg.get("augment", {}).items() if k != "hflip"
            )
            if cached and m.get("seconds") and m.get("epochs_run"):
                spent = float(m["seconds"]) - float(m.get("feature_seconds") or 0.0)
                per.setdefault(str(cfg.get("backbone")), []).append(max(0.0, spent) / int(m["epochs_run"]))
        _HEAD_EPOCHS.clear()
        _HEAD_EPOCHS[stamp] = {name: float(np.median(v)) for name, v in per.items()}
    return _HEAD_EPOCHS[stamp].get(backbone)


def search_trial_seconds(cfg: RunConfig, store: Any, repeats: int = 1) -> tuple[float, bool]:
    """Seconds one search trial of base config ``cfg`` takes here (``repeats`` heads on cached features, each
    ``cfg.epochs`` epochs; pruning only shortens it) and whether that comes from this machine's stored head
    runs (True) or is the rough constant (False)."""
    per_epoch = head_epoch_seconds(store, cfg.backbone)
    if per_epoch is None:
        return HEAD_RUN_S * repeats, False
    return per_epoch * cfg.epochs * repeats, True
