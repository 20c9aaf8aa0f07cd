"""Training with the study's recipe, cached on disk by the hash of everything that decides a result.

``train(cfg, data_root, store)`` returns the stored run when one exists and otherwise trains it:

* phase ``head``: backbone frozen. Without augmentation the head trains on pooled backbone features
  computed once per (backbone, weights, cut, image size, dataset) and cached under ``features/``,
  so a head trains in seconds. With augmentation images go through the frozen backbone each epoch.
* phase ``full``: every layer but BatchNorm trains (BatchNorm stays in inference mode).
* phase ``head+full``: the study's task 0, head first and then the whole network at a lower rate.

Model selection (early stopping, reduce-LR) looks at the validation split only; test is reported.

Speed (see ``core.perf`` and BENCHMARKS.md): a later run of an architecture already trained in this
process reuses its compiled model (no new graph trace), reset to the exact state a fresh build starts
from; feature passes run in graph mode; ``freeze_blocks=K`` fine-tunes all but the first K blocks, on
cached prefix activations when there is no augmentation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import perf
from core.augment import build_augmenter
from core.backbones import ResolvedWeights, resolve_weights
from core.config import RunConfig, stable_hash
from core.data import DatasetInfo, DecodedDataset, Splits, decode_dataset, make_splits, make_tf_dataset, scan_dataset
from core.errors import SceneLabError, StoreError
from core.model import Classifier, build_classifier, count_trainable, set_base_trainable
from core.store import (
    CACHE_FORMAT_VERSION,
    RunRecord,
    Store,
    atomic_write_json,
    atomic_write_npz,
    load_npz,
    write_history_csv,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


class TrainingCancelled(SceneLabError):
    """The user cancelled a run; nothing was saved."""


@dataclass
class TrainResult:
    record: RunRecord
    cached: bool

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
        out["dataset"] = self.record.config.get("dataset", {}).get("root")
        out["path"] = str(self.record.path)
        return out


# -- identities ---------------------------------------------------------------------------------------
LATE_SETTINGS: dict[str, Any] = {"tta": False}  # RunConfig fields added later, with their defaults

def run_id_for(cfg: RunConfig, fingerprint: str, weights: ResolvedWeights) -> str:
    config = cfg.to_dict()
    # settings added after runs were first cached enter the hash only when set, so that earlier run
    # ids stay valid; frozen blocks only where they apply (not to head-only runs)
    config.pop("freeze_blocks", None)
    for name, default in LATE_SETTINGS.items():
        if config.get(name) == default:
            config.pop(name)
    freeze = resolve_freeze_blocks(cfg)
    payload: dict[str, Any] = {
        "config": config,
        "dataset": fingerprint,
        "weights": weights.identity,
        "v": CACHE_FORMAT_VERSION,
    }
    if freeze:
        payload["freeze_blocks"] = int(freeze)
    return stable_hash(payload)


def resolve_freeze_blocks(cfg: RunConfig) -> int:
    """Blocks kept frozen when the backbone trains (validated); 0 for head-only runs, where all are."""
    if cfg.phase == "head":
        return 0
    perf.prefix_layer(cfg.backbone, cfg.remove_blocks, cfg.freeze_blocks)  # validates
    return cfg.freeze_blocks


def features_key(cfg: RunConfig, fingerprint: str, weights: ResolvedWeights) -> str:
    return stable_hash(
        {
            "backbone": cfg.backbone,
            "weights": weights.identity,
            "remove_blocks": cfg.remove_blocks,
            "image_size": cfg.image_size,
            "dataset": fingerprint,
            "v": CACHE_FORMAT_VERSION,
        }
    )


@dataclass
class Prepared:
    """A config resolved against a dataset and weights: everything needed to find or train a run."""

    cfg: RunConfig
    info: DatasetInfo
    weights: ResolvedWeights
    run_id: str
    freeze_blocks: int = 0


def prepare(cfg: RunConfig, data_root: str | os.PathLike[str]) -> Prepared:
    """Validate the config, scan the dataset and resolve weights (no decoding, no training)."""
    cfg.validate()
    freeze = resolve_freeze_blocks(cfg)
    info = scan_dataset(data_root)
    weights = resolve_weights(cfg.backbone, cfg.weights)
    return Prepared(cfg, info, weights, run_id_for(cfg, info.fingerprint, weights), freeze)


def find_run(cfg: RunConfig, data_root: str | os.PathLike[str], store: Store) -> RunRecord | None:
    """The stored run for ``cfg`` on this dataset, if it was trained before."""
    prep = prepare(cfg, data_root)
    return store.load_run(prep.run_id)


# -- callbacks ----------------------------------------------------------------------------------------
def _make_callbacks(
    cfg: RunConfig,
    phase: str,
    epochs: int,
    steps: int,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    history: list[dict[str, float]],
    epoch_offset: int,
) -> list[Any]:
    import keras

    class Recorder(keras.callbacks.Callback):
        """Records each epoch with its learning rate, reports progress, honours cancellation."""

        def __init__(self) -> None:
            super().__init__()
            self.cancelled = False
            self.t0 = time.monotonic()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if should_stop is not None and should_stop():
                self.cancelled = True
                self.model.stop_training = True
            # with several steps per call (heads on cached features) every call reports
            many = int(getattr(self.model, "steps_per_execution", 1) or 1) > 1
            if progress is not None and (many or batch % 5 == 0 or batch + 1 >= steps):
                progress(
                    {
                        "event": "batch",
                        "phase": phase,
                        "epoch": len(history) - epoch_offset + 1,
                        "epochs": epochs,
                        "batch": min(batch + 1, steps),
                        "batches": steps,
                        "logs": {k: float(v) for k, v in (logs or {}).items()},
                        "elapsed": time.monotonic() - self.t0,
                    }
                )

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = dict(logs or {})
            lr = float(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
            row = {
                "epoch": float(len(history) + 1),
                "phase": 0.0 if phase == "head" else 1.0,
                "loss": float(logs.get("loss", np.nan)),
                "accuracy": float(logs.get("accuracy", np.nan)),
                "val_loss": float(logs.get("val_loss", np.nan)),
                "val_accuracy": float(logs.get("val_accuracy", np.nan)),
                "lr": lr,
            }
            history.append(row)
            if progress is not None:
                progress(
                    {
                        "event": "epoch",
                        "phase": phase,
                        "epoch": epoch + 1,
                        "epochs": epochs,
                        "row": row,
                        "elapsed": time.monotonic() - self.t0,
                    }
                )
            if should_stop is not None and should_stop():
                self.cancelled = True
                self.model.stop_training = True

    callbacks: list[Any] = [Recorder()]
    if cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True
            )
        )
    if cfg.reduce_lr_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, min_lr=1e-7
            )
        )
    return callbacks


def make_optimizer(name: str, lr: float, weight_decay: float, momentum: float) -> Any:
    import keras

    wd = weight_decay or None
    opts = {
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, momentum=momentum, weight_decay=wd),
        "adagrad": lambda: keras.optimizers.Adagrad(lr, weight_decay=wd),
        "adadelta": lambda: keras.optimizers.Adadelta(lr, weight_decay=wd),
        "adam": lambda: keras.optimizers.Adam(lr, weight_decay=wd),
        "adamax": lambda: keras.optimizers.Adamax(lr, weight_decay=wd),
        "nadam": lambda: keras.optimizers.Nadam(lr, weight_decay=wd),
    }
    return opts[name]()


# -- features -----------------------------------------------------------------------------------------
def _cached_arrays(path: Path, expected: dict[str, int]) -> dict[str, np.ndarray] | None:
    cached = load_npz(path)
    if cached is None:
        return None
    if all(k in cached and len(cached[k]) == n for k, n in expected.items()):
        return cached
    logger.warning("Feature cache %s does not match the dataset; recomputing it.", path)
    return None


def _map_images(
    fn: perf.FeatureFn,
    arrays: tuple[np.ndarray, ...],
    progress: ProgressFn | None,
    batch_size: int,
    event: str = "features",
) -> list[np.ndarray]:
    """``fn`` over each image array in turn, reporting ``event`` progress over all of them."""
    t0 = time.monotonic()
    total = sum(len(x) for x in arrays)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress({"event": event, "done": done, "total": total, "elapsed": time.monotonic() - t0})

    return [fn.map(x, batch_size, on_batch) for x in arrays]


def compute_features(
    clf: Classifier,
    ds: DecodedDataset,
    key: str,
    store: Store,
    progress: ProgressFn | None = None,
    batch_size: int = 64,
    fn: perf.FeatureFn | None = None,
    mirror: bool = False,
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Pooled backbone features of every train and test image, cached by ``key``.

    ``fn`` is a graph-mode pass of ``clf.features`` (made here if not given; a warm model keeps its own).
    ``mirror``: the features of the horizontally flipped images instead (cached beside the others).
    Returns (train features, test features, cache hit, seconds spent computing)."""
    path = store.features_dir / (f"{key}-hflip.npz" if mirror else f"{key}.npz")
    cached = _cached_arrays(path, {"train": len(ds.x_train), "test": len(ds.x_test)})
    if cached is not None:
        return cached["train"], cached["test"], True, 0.0
    t0 = time.monotonic()
    arrays = (ds.x_train[:, :, ::-1], ds.x_test[:, :, ::-1]) if mirror else (ds.x_train, ds.x_test)
    f_train, f_test = _map_images(fn or perf.FeatureFn(clf.features), arrays, progress, batch_size)
    seconds = time.monotonic() - t0
    try:
        atomic_write_npz(path, train=f_train, test=f_test)
    except SceneLabError as exc:  # caching is an optimisation: warn and go on
        logger.warning("%s", exc)
    return f_train, f_test, False, seconds


def mirrored_features(f: np.ndarray, f_mirror: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> Any:
    """Batches of cached features for training a head with random horizontal flips.

    Each epoch every image is drawn once, as itself or (probability 1/2) as its mirror image, in a new
    order; both come from the feature caches, so the epoch costs what a head epoch costs. The draws
    depend on ``seed`` and the epoch alone: a run repeats exactly."""
    import keras

    class MirroredFeatures(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self._draw()

        def _draw(self) -> None:
            rng = np.random.default_rng([seed, self.epoch])
            self.order = rng.permutation(len(y))
            self.flip = rng.random(len(y)) < 0.5

        def __len__(self) -> int:
            return int(np.ceil(len(y) / batch_size))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            x = np.where(self.flip[idx, None], f_mirror[idx], f[idx])
            return x, y[idx]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self._draw()

    return MirroredFeatures()


def prefix_key(features: str, layer: str) -> str:
    """Cache key of the activations at ``layer`` (the end of a frozen prefix)."""
    return stable_hash({"features": features, "prefix": layer, "v": CACHE_FORMAT_VERSION})


def compute_prefix_activations(
    fn: perf.FeatureFn,
    ds: DecodedDataset,
    key: str,
    store: Store,
    progress: ProgressFn | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Activations of a frozen prefix for every train and test image, cached by ``key`` like features."""
    path = store.features_dir / f"prefix-{key}.npz"
    cached = _cached_arrays(path, {"train": len(ds.x_train), "test": len(ds.x_test)})
    if cached is not None:
        return cached["train"], cached["test"], True, 0.0
    t0 = time.monotonic()
    a_train, a_test = _map_images(fn, (ds.x_train, ds.x_test), progress, batch_size, "prefix")
    seconds = time.monotonic() - t0
    try:
        atomic_write_npz(path, train=a_train, test=a_test)
    except SceneLabError as exc:
        logger.warning("%s", exc)
    return a_train, a_test, False, seconds


# -- training -----------------------------------------------------------------------------------------
def train(
    cfg: RunConfig,
    data_root: str | os.PathLike[str],
    store: Store,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    force: bool = False,
) -> TrainResult:
    """Return the stored run for ``cfg`` or train it now (one process at a time per run id)."""
    prep = prepare(cfg, data_root)
    if not force:
        record = store.load_run(prep.run_id)
        if record is not None:
            return TrainResult(record, cached=True)
    with store.lock(prep.run_id):
        if not force:
            record = store.load_run(prep.run_id)  # another process may have finished it meanwhile
            if record is not None:
                return TrainResult(record, cached=True)
        record = _train_uncached(prep, store, progress, should_stop)
    return TrainResult(record, cached=False)


def _fit(
    model: Any,
    x: Any,
    y: Any,
    val: tuple[Any, Any] | Any,
    cfg: RunConfig,
    epochs: int,
    phase: str,
    steps: int,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    history: list[dict[str, float]],
) -> bool:
    """Fit and record history; return True if the user cancelled."""
    callbacks = _make_callbacks(cfg, phase, epochs, steps, progress, should_stop, history, len(history))
    kwargs: dict[str, Any] = {"epochs": epochs, "callbacks": callbacks, "verbose": 0}
    if y is None:
        model.fit(x, validation_data=val, **kwargs)
    else:
        model.fit(x, y, validation_data=val, batch_size=cfg.batch_size, shuffle=True, **kwargs)
    return bool(callbacks[0].cancelled)


def _warm_key(prep: Prepared, classes: int) -> tuple[Any, ...]:
    cfg = prep.cfg
    return perf.warm_key(
        backbone=cfg.backbone,
        weights_identity=prep.weights.identity,
        remove_blocks=cfg.remove_blocks,
        image_size=cfg.image_size,
        classes=classes,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        dense_1024=cfg.dense_1024,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        freeze_blocks=prep.freeze_blocks,
    )


def _build(prep: Prepared, classes: int) -> Classifier:
    cfg = prep.cfg
    return build_classifier(
        cfg.backbone,
        cfg.image_size,
        classes,
        weights=prep.weights,
        remove_blocks=cfg.remove_blocks,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        dense_1024=cfg.dense_1024,
    )


def _ready_model(prep: Prepared, classes: int, key: tuple[Any, ...]) -> tuple[perf.WarmEntry, bool]:
    """A classifier in the exact state a fresh build for ``cfg.seed`` has: a warm one if this process
    holds one for ``key`` (returned checked out), else a new build. Returns (entry, reused)."""
    import keras

    cfg = prep.cfg
    entry = perf.WARM.checkout(key) if perf.WARM.enabled else None
    if entry is None:
        if not len(perf.WARM):  # clearing the session also drops warm models' optimised graphs
            keras.backend.clear_session()
        perf.seed_all(cfg.seed)
        entry = perf.WarmEntry(_build(prep, classes))
        entry.lock.acquire()
        if perf.WARM.enabled:
            entry.snapshot_initial(cfg.seed)
        return entry, False
    if entry.initial_seed == cfg.seed:
        entry.restore_initial()
    else:  # another seed: the initial values a build for this seed makes (no trace, seconds)
        perf.seed_all(cfg.seed)
        fresh = _build(prep, classes)
        values = [np.array(v.numpy(), copy=True) for v in fresh.model.variables]
        del fresh
        entry.restore_initial(values)
        entry.initial_seed, entry.initial = cfg.seed, values
    return entry, True


def _stage(
    entry: perf.WarmEntry, name: str, make: Callable[[], Any], cfg: RunConfig, lr: float, steps_per_execution: int = 1
) -> Any:
    """The compiled model of stage ``name`` with a fresh optimizer at ``lr`` (compiled once per entry)."""
    if entry.stage(name) is None:
        model = make()
        model.compile(
            optimizer=make_optimizer(cfg.optimizer, lr, cfg.weight_decay, cfg.momentum),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
        entry.add_stage(name, model)
    return entry.reset_stage(name, lr)


def _train_uncached(prep: Prepared, store: Store, progress: ProgressFn | None, should_stop: StopFn | None) -> RunRecord:
    cfg = prep.cfg
    t_start = time.monotonic()
    if progress is not None:
        progress({"event": "status", "message": "decoding images"})
    ds = decode_dataset(prep.info, cfg.image_size, store.datasets_dir)
    splits = make_splits(ds.y_train, cfg.val_fraction, cfg.seed, cfg.train_per_class)
    classes = len(ds.classes)

    if progress is not None:
        progress({"event": "status", "message": "building model"})
    key = _warm_key(prep, classes)
    entry, reused = _ready_model(prep, classes, key)
    try:
        record = _train_entry(prep, store, entry, ds, splits, progress, should_stop, t_start, reused)
    except TrainingCancelled:
        perf.WARM.checkin(key, entry)  # a reuse resets every variable, so a cancelled model is fine
        raise
    except BaseException:
        perf.WARM.discard(key, entry)  # an unexpected failure: never reuse what it left
        raise
    perf.WARM.checkin(key, entry)
    return record


def _train_entry(
    prep: Prepared,
    store: Store,
    entry: perf.WarmEntry,
    ds: DecodedDataset,
    splits: Splits,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    t_start: float,
    reused: bool,
) -> RunRecord:
    import keras

    cfg = prep.cfg
    clf = entry.clf
    perf.seed_all(cfg.seed)  # the same random streams whether the model is new or warm
    history: list[dict[str, float]] = []
    feature_seconds = 0.0
    feature_hit: bool | None = None
    cancelled = False
    f_train = f_test = m_train = m_test = None  # features of the images and of their mirror images
    a_train = a_test = None  # prefix activations (partial fine-tuning on cached activations)
    suffix_model = None

    def check_cancel() -> None:
        if cancelled:
            raise TrainingCancelled("Training was cancelled; nothing was saved.")

    x_tr, y_tr = ds.x_train[splits.train], ds.y_train[splits.train]
    x_val, y_val = ds.x_train[splits.val], ds.y_train[splits.val]
    augmenter = build_augmenter(cfg.augment, cfg.seed)
    steps = int(np.ceil(len(x_tr) / cfg.batch_size))
    fkey = features_key(cfg, ds.fingerprint, prep.weights)

    if cfg.phase in ("head", "head+full"):
        set_base_trainable(clf, False)
        if cfg.uses_feature_cache:
            if progress is not None:
                progress({"event": "status", "message": "computing backbone features"})
            fn = entry.extras.get("features_fn")
            if fn is None:
                fn = entry.extras["features_fn"] = perf.FeatureFn(clf.features)
            f_train, f_test, feature_hit, feature_seconds = compute_features(clf, ds, fkey, store, progress, fn=fn)
            if cfg.augment.hflip or cfg.tta:
                m_train, m_test, hit, seconds = compute_features(clf, ds, fkey, store, progress, fn=fn, mirror=True)
                feature_hit, feature_seconds = feature_hit and hit, feature_seconds + seconds
            head = _stage(entry, "head", lambda: clf.head, cfg, cfg.lr, perf.HEAD_STEPS_PER_EXECUTION)
            if cfg.augment.hflip:
                x_head: Any = mirrored_features(
                    f_train[splits.train], m_train[splits.train], y_tr, cfg.batch_size, cfg.seed
                )
                y_head = None
            else:  # NumPy inputs: Keras' own per-epoch shuffle, as every head run before
                x_head, y_head = f_train[splits.train], y_tr
            cancelled = _fit(
                head,
                x_head,
                y_head,
                (f_train[splits.val], y_val),
                cfg,
                cfg.epochs,
                "head",
                steps,
                progress,
                should_stop,
                history,
            )
        else:
            model = _stage(entry, "head_images", lambda: keras.Model(clf.model.input, clf.model.output), cfg, cfg.lr)
            train_ds = make_tf_dataset(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augmenter)
            val_ds = make_tf_dataset(x_val, y_val, cfg.batch_size)
            cancelled = _fit(
                model, train_ds, None, val_ds, cfg, cfg.epochs, "head", steps, progress, should_stop, history
            )
        check_cancel()

    base_trained = cfg.phase in ("full", "head+full")
    if base_trained:
        lr = cfg.lr if cfg.phase == "full" else cfg.resolved_full_lr
        epochs = cfg.epochs if cfg.phase == "full" else cfg.resolved_full_epochs
        set_base_trainable(clf, True)
        layer = perf.prefix_layer(cfg.backbone, cfg.remove_blocks, prep.freeze_blocks)
        if layer is not None:
            if "split" not in entry.extras:
                entry.extras["split"] = perf.split_base(clf.base, layer)
            prefix, suffix = entry.extras["split"]
            perf.freeze_prefix(clf.base, prefix)
        if progress is not None:
            progress({"event": "status", "message": "fine-tuning the network"})
        if layer is not None and augmenter is None:  # train the suffix alone on cached prefix activations
            fn = entry.extras.get("prefix_fn")
            if fn is None:
                fn = entry.extras["prefix_fn"] = perf.FeatureFn(_prefix_images_model(clf, prefix))
            a_train, a_test, hit, seconds = compute_prefix_activations(fn, ds, prefix_key(fkey, layer), store, progress)
            feature_seconds += seconds
            feature_hit = hit if feature_hit is None else (feature_hit and hit)
            suffix_model = _stage(entry, "partial", lambda: perf.build_suffix_classifier(suffix, clf.head), cfg, lr)
            cancelled = _fit(
                suffix_model,
                perf.array_dataset(a_train[splits.train], y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed),
                None,
                perf.array_dataset(a_train[splits.val], y_val, cfg.batch_size),
                cfg,
                epochs,
                "full",
                steps,
                progress,
                should_stop,
                history,
            )
        else:
            model = _stage(entry, "full", lambda: clf.model, cfg, lr)
            train_ds = make_tf_dataset(x_tr, y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augmenter)
            val_ds = make_tf_dataset(x_val, y_val, cfg.batch_size)
            cancelled = _fit(model, train_ds, None, val_ds, cfg, epochs, "full", steps, progress, should_stop, history)
        check_cancel()

    # -- evaluation: on cached features/activations when they still hold, else on images
    if progress is not None:
        progress({"event": "status", "message": "evaluating"})
    def on_images(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(clf.model.predict(make_tf_dataset(x, y, 64), verbose=0))

    if f_train is not None and not base_trained:
        p_val = np.asarray(clf.head.predict(f_train[splits.val], verbose=0, batch_size=256))
        p_test = np.asarray(clf.head.predict(f_test, verbose=0, batch_size=256))
        if cfg.tta:
            p_val = (p_val + clf.head.predict(m_train[splits.val], verbose=0, batch_size=256)) / 2
            p_test = (p_test + clf.head.predict(m_test, verbose=0, batch_size=256)) / 2
    else:
        if suffix_model is not None and a_train is not None:
            p_val = np.asarray(suffix_model.predict(a_train[splits.val], verbose=0, batch_size=64))
            p_test = np.asarray(suffix_model.predict(a_test, verbose=0, batch_size=64))
        else:
            p_val, p_test = on_images(x_val, y_val), on_images(ds.x_test, ds.y_test)
        if cfg.tta:  # the mirror images through the whole (trained) network
            p_val = (p_val + on_images(x_val[:, :, ::-1], y_val)) / 2
            p_test = (p_test + on_images(ds.x_test[:, :, ::-1], ds.y_test)) / 2
    metrics = _metrics(cfg, ds, splits, history, p_val, p_test, y_val)
    metrics.update(
        {
            "seconds": round(time.monotonic() - t_start, 3),
            "feature_seconds": round(feature_seconds, 3),
            "feature_cache_hit": feature_hit,
            "backbone_params": clf.backbone_params,
            "params_total": int(clf.model.count_params()),
            "params_trainable": count_trainable(clf.model) if base_trained else count_trainable(clf.head),
            "cut_layer": clf.cut_layer,
            "warm_model": reused,
        }
    )
    if prep.freeze_blocks:
        metrics["freeze_blocks"] = prep.freeze_blocks
    return _save_run(prep, store, clf, ds, splits, history, metrics, p_test, base_trained)


def _prefix_images_model(clf: Classifier, prefix: Any) -> Any:
    """``image (0..255) -> preprocess -> frozen prefix`` sharing the classifier's layers."""
    import keras

    inputs = keras.Input(tuple(int(d) for d in clf.model.input.shape[1:]), name="image")
    x = clf.model.get_layer("preprocess")(inputs)
    return keras.Model(inputs, prefix(x, training=False), name="prefix_activations")


def _metrics(
    cfg: RunConfig,
    ds: DecodedDataset,
    splits: Splits,
    history: list[dict[str, float]],
    p_val: np.ndarray,
    p_test: np.ndarray,
    y_val: np.ndarray,
) -> dict[str, Any]:
    k = len(ds.classes)
    pred_test = p_test.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (ds.y_test, pred_test), 1)
    per_class = {
        c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, c in enumerate(ds.classes)
    }
    # training accuracy as Keras reported it at the epoch whose weights were kept
    best = _kept_epoch(cfg, history)
    return {
        "train_accuracy": round(float(history[best]["accuracy"]), 4) if history else None,
        "val_accuracy": round(float((p_val.argmax(axis=1) == y_val).mean()), 4) if len(y_val) else None,
        "test_accuracy": round(float((pred_test == ds.y_test).mean()), 4),
        "epochs_run": len(history),
        "kept_epoch": best + 1,
        "classes": ds.classes,
        "confusion": confusion.tolist(),
        "per_class_accuracy": per_class,
        "n_train": int(len(splits.train)),
        "n_val": int(len(splits.val)),
        "n_test": int(len(ds.y_test)),
        "n_skipped": len(ds.skipped),
    }


def _kept_epoch(cfg: RunConfig, history: list[dict[str, float]]) -> int:
    if not history:
        return 0
    if cfg.early_stopping_patience:
        last_phase = history[-1]["phase"]
        idx = [i for i, r in enumerate(history) if r["phase"] == last_phase]
        return min(idx, key=lambda i: history[i]["val_loss"] if np.isfinite(history[i]["val_loss"]) else np.inf)
    return len(history) - 1


def _save_run(
    prep: Prepared,
    store: Store,
    clf: Classifier,
    ds: DecodedDataset,
    splits: Splits,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    p_test: np.ndarray,
    base_trained: bool,
) -> RunRecord:
    tmp = store.begin_run(prep.run_id)
    try:
        config = {
            "run_id": prep.run_id,
            "run": prep.cfg.to_dict(),
            "dataset": {
                "root": str(prep.info.root),
                "name": prep.info.root.name,
                "fingerprint": prep.info.fingerprint,
                "classes": ds.classes,
            },
            "weights_identity": prep.weights.identity,
            "weights_request": prep.weights.request,
            "base_trained": base_trained,
            "cache_format": CACHE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if base_trained or prep.weights.path is None:
            clf.model.save(tmp / "model.keras")
        else:  # the backbone is the pretrained file's: keep only the head (kilobytes, not megabytes)
            clf.head.save_weights(tmp / "head.weights.h5")
        atomic_write_npz(
            tmp / "predictions.npz",
            probs=p_test.astype("float32"),
            y_true=ds.y_test.astype("int32"),
            paths=np.asarray(ds.test_paths, dtype=str),
        )
        write_history_csv(tmp / "history.csv", history)
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_json(tmp / "config.json", config)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return store.commit_run(prep.run_id, tmp)


# -- loading a trained model ----------------------------------------------------------------------------
def load_classifier(record: RunRecord) -> Any:
    """The trained classifier of a stored run (image 0..255 -> probabilities)."""
    import keras

    cfg = RunConfig.from_dict(record.config["run"])
    if record.model_path.exists():
        try:
            return keras.models.load_model(record.model_path, safe_mode=True, compile=False)
        except Exception as exc:  # damaged zip, foreign or unsafe (Lambda) content: one sentence
            raise _damaged(record, record.model_path, exc) from exc
    weights = resolve_weights(cfg.backbone, cfg.weights)
    clf = build_classifier(
        cfg.backbone,
        cfg.image_size,
        len(record.config["dataset"]["classes"]),
        weights=weights,
        remove_blocks=cfg.remove_blocks,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        dense_1024=cfg.dense_1024,
    )
    try:
        clf.head.load_weights(record.path / "head.weights.h5")
    except Exception as exc:
        raise _damaged(record, record.path / "head.weights.h5", exc) from exc
    return clf.model


def _damaged(record: RunRecord, path: Path, exc: BaseException) -> StoreError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return StoreError(
        f"The stored model of run {record.run_id} ({path}) could not be loaded ({reason}); delete the folder "
        f"{record.path} and train the run again."
    )


def export_model(record: RunRecord, dest: Path) -> Path:
    """Write a stand-alone ``.keras`` file of a run's classifier (takes raw 0..255 pixels)."""
    model = load_classifier(record)
    model.save(dest)
    return dest


def summary_row(record: RunRecord) -> dict[str, Any]:
    """One flat row per run for tables: config columns, accuracies, seconds."""
    run = record.config.get("run", {})
    aug = run.get("augment", {}) or {}
    row: dict[str, Any] = {"run_id": record.run_id, "dataset": record.config.get("dataset", {}).get("name")}
    row.update({k: v for k, v in run.items() if k != "augment"})
    row.update({f"aug_{k}": v for k, v in aug.items()})
    m = record.metrics
    for k in (
        "train_accuracy",
        "val_accuracy",
        "test_accuracy",
        "epochs_run",
        "seconds",
        "params_total",
        "backbone_params",
    ):
        row[k] = m.get(k)
    row["created"] = record.config.get("created")
    return row


def read_config_file(path: str | os.PathLike[str]) -> RunConfig:
    """A RunConfig from a JSON file (a run's config.json or a bare settings object)."""
    data = json.loads(Path(path).read_text())
    return RunConfig.from_dict(data.get("run", data))
