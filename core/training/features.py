"""What a frozen backbone computes once and every later run reuses: pooled features and prefix activations.

* **Pooled features** of every train and test image (and of their mirror images, for flip augmentation
  and test-time flip), cached under ``features/<key>.npz`` per (backbone, weights, cut, image size,
  dataset): a new head then trains in seconds.
* **Prefix activations**: the output of the first K frozen blocks (partial fine-tuning), cached likewise.
* :class:`FeatureFn` runs a frozen model as one traced ``tf.function`` instead of eager Keras calls
  (about 1.8x faster for EfficientNet-Lite0, BENCHMARKS.md §4).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig, stable_hash
from core.data.arrays import DecodedDataset
from core.errors import SceneLabError
from core.models.backbones import ResolvedWeights
from core.store.atomic import atomic_write_npz, load_npz
from core.store.folders import CACHE_FORMAT_VERSION, Store
from core.store.mapped import batches

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


class FeatureFn:
    """``model(x, training=False)`` as one traced function, run over arrays in batches."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.model = model
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(x))

    def map(
        self,
        x: np.ndarray,
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
        dtype: str = "float32",
    ) -> np.ndarray:
        """Outputs for every row of ``x`` (uint8 or float images), ``batch_size`` rows at a time."""
        parts = []
        for batch in batches(x, batch_size, "float32"):  # a memory-mapped x keeps one batch resident
            parts.append(self(batch).astype(dtype, copy=False))
            if on_batch is not None:
                on_batch(len(batch))
        if parts:
            return np.concatenate(parts)
        shape = tuple(int(d) for d in self.model.output.shape[1:])
        return np.zeros((0, *shape), dtype)


class FrozenFn:
    """A model that never trains, as a graph with its weights folded in as constants: Grappler then folds each
    BatchNorm into its convolution and fuses the activations, which Keras' graph (weights as variables) cannot.

    EfficientNet-Lite0's first 3 blocks at 128 px: about 1.3x the images/s of :class:`FeatureFn` (455 against 345
    per core, measured on the 2-core machine) for about 3 s of conversion, so only repeated passes use it (the
    per-epoch banks of ``core.training.augbank``); outputs agree to float rounding (5e-5 where they reach 16). The weights
    are copied at construction: build it for weights that will not change (key it by what decides them).
    """

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        from core.compat import convert_variables_to_constants

        spec = tf.TensorSpec([None, *(int(d) for d in model.input.shape[1:])], tf.float32)
        traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        self.model = model
        self._fn = convert_variables_to_constants(traced)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self._fn(tf.constant(x, tf.float32))
        return np.asarray(out[0] if isinstance(out, (list, tuple)) else out)


def map_many(fn: FeatureFn, x: np.ndarray, batch_size: int = 64, on_batch: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Like :meth:`FeatureFn.map` for a model with several outputs: one array per output."""
    parts: list[list[np.ndarray]] = []
    for batch in batches(x, batch_size, "float32"):
        outs = fn._fn(batch)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]  # a one-output model returns its tensor
        parts.append([np.asarray(o, dtype="float32") for o in outs])
        if on_batch is not None:
            on_batch(len(batch))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


# -- keys -----------------------------------------------------------------------------------------------
def features_key(cfg: RunConfig, fingerprint: str, weights: ResolvedWeights) -> str:
    """What decides a backbone's features: backbone, weights, cut, size, dataset (and, for random weights,
    the seed that drew them)."""
    payload = {
        "backbone": cfg.backbone,
        "weights": weights.identity,
        "remove_blocks": cfg.remove_blocks,
        "image_size": cfg.image_size,
        "dataset": fingerprint,
        "v": CACHE_FORMAT_VERSION,
    }
    if weights.path is None:
        payload["seed"] = cfg.seed
    return stable_hash(payload)


def prefix_key(features: str, layer: str) -> str:
    """Cache key of the activations at ``layer`` (the end of a frozen prefix)."""
    return stable_hash({"features": features, "prefix": layer, "v": CACHE_FORMAT_VERSION})


# -- caches ---------------------------------------------------------------------------------------------
def _cached_arrays(path: Path, expected: dict[str, int]) -> dict[str, np.ndarray] | None:
    cached = load_npz(path, map_large=True)  # 50,000 images' prefix activations need not fit in memory
    if cached is None:
        return None
    if all(k in cached and len(cached[k]) == n for k, n in expected.items()):
        return cached
    logger.warning("Feature cache %s does not match the dataset; recomputing it.", path)
    return None


def _map_images(
    fn: FeatureFn, arrays: tuple[np.ndarray, ...], progress: ProgressFn | None, batch_size: int, event: str
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


def _cached_pass(
    path: Path, fn: FeatureFn, arrays: tuple[np.ndarray, np.ndarray], progress: ProgressFn | None, event: str,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """``fn`` over (train, test) images, cached at ``path``: (train, test, cache hit, seconds computing)."""
    cached = _cached_arrays(path, {"train": len(arrays[0]), "test": len(arrays[1])})
    if cached is not None:
        return cached["train"], cached["test"], True, 0.0
    t0 = time.monotonic()
    out_train, out_test = _map_images(fn, arrays, progress, batch_size, event)
    seconds = time.monotonic() - t0
    try:
        atomic_write_npz(path, train=out_train, test=out_test)
    except SceneLabError as exc:  # caching is an optimisation: warn and go on
        logger.warning("%s", exc)
    return out_train, out_test, False, seconds


def compute_features(
    fn: FeatureFn, ds: DecodedDataset, key: str, store: Store, progress: ProgressFn | None = None, *,
    mirror: bool = False, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Pooled backbone features (``fn`` is a graph-mode pass of the classifier's feature model) of every
    train and test image, cached by ``key``; ``mirror``: of the horizontally flipped images instead
    (cached beside the others). Returns (train features, test features, cache hit, seconds computing)."""
    path = store.features_dir / (f"{key}-hflip.npz" if mirror else f"{key}.npz")
    arrays = (ds.x_train[:, :, ::-1], ds.x_test[:, :, ::-1]) if mirror else (ds.x_train, ds.x_test)
    return _cached_pass(path, fn, arrays, progress, "features", batch_size)


def compute_cut_features(
    get_fn: Callable[[], FeatureFn], cuts: list[int], keys: dict[int, str], ds: DecodedDataset, store: Store,
    progress: ProgressFn | None = None, *, mirror: bool = False, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Pooled features of the cut ``cuts[0]``, computed (when not cached) in one pass that also caches the
    features of every later cut in ``cuts`` (``get_fn()`` outputs them in that order, and is called only when a
    pass is needed: a cached run builds no backbone; ``keys`` names their caches): cutting more blocks off needs
    no pass of its own. Returns what :func:`compute_features` returns."""
    suffix = "-hflip" if mirror else ""
    paths = {k: store.features_dir / f"{keys[k]}{suffix}.npz" for k in cuts}
    arrays = (ds.x_train[:, :, ::-1], ds.x_test[:, :, ::-1]) if mirror else (ds.x_train, ds.x_test)
    cached = _cached_arrays(paths[cuts[0]], {"train": len(arrays[0]), "test": len(arrays[1])})
    if cached is not None:
        return cached["train"], cached["test"], True, 0.0
    t0 = time.monotonic()
    total, done = sum(len(a) for a in arrays), 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress({"event": "features", "done": done, "total": total, "elapsed": time.monotonic() - t0})

    fn = get_fn()
    per_split = [map_many(fn, a, batch_size, on_batch) for a in arrays]
    seconds = time.monotonic() - t0
    for i, k in enumerate(cuts):
        if i == 0 or not paths[k].exists():
            try:
                atomic_write_npz(paths[k], train=per_split[0][i], test=per_split[1][i])
            except SceneLabError as exc:  # caching is an optimisation: warn and go on
                logger.warning("%s", exc)
    return per_split[0][0], per_split[1][0], False, seconds


def compute_prefix_activations(
    fn: FeatureFn, ds: DecodedDataset, key: str, store: Store, progress: ProgressFn | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Activations of a frozen prefix for every train and test image, cached by ``key`` like features."""
    path = store.features_dir / f"prefix-{key}.npz"
    return _cached_pass(path, fn, (ds.x_train, ds.x_test), progress, "prefix", batch_size)


# -- datasets over cached arrays --------------------------------------------------------------------------
def mirrored_epoch(f: np.ndarray, f_mirror: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s inputs of a head trained with random horizontal flips on cached features: each image
    as itself or (probability 1/2) as its mirror image, drawn from ``(seed, epoch)``: a run repeats exactly,
    and each epoch costs what a head epoch costs."""
    flip = np.random.default_rng([seed, epoch, 1]).random(len(f)) < 0.5
    return np.where(flip[:, None], f_mirror, f)


def array_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0, rows: Any = None
) -> Any:
    """Rows ``rows`` (default: all) of ``x`` (prefix activations, perhaps memory-mapped) with their labels ``y`` as a batched
    ``tf.data.Dataset``, reshuffled each epoch with ``seed``. Cheaper per epoch than Keras' pipeline for NumPy inputs
    (about 2x for a head on cached features), but it shuffles differently, so heads keep NumPy inputs: their results
    stay the ones every stored run was trained with. Partial fine-tuning uses this.

    Only the row positions enter TensorFlow: each batch is gathered from ``x`` when it is drawn, so a mapped array
    is never copied whole into TensorFlow's memory. The positions are shuffled by the same ``shuffle`` as the rows
    themselves were (same count, same seed), so the batches are exactly those of ``from_tensor_slices((x[rows],
    y[rows])).shuffle(...)``, the form used before (``tests/test_train.py`` checks it)."""
    import tensorflow as tf

    index = np.arange(len(x)) if rows is None else np.asarray(rows)
    labels = np.asarray(y)  # the labels of the rows taken, in their order
    assert len(labels) == len(index), (len(labels), len(index))
    row_shape = tuple(int(d) for d in x.shape[1:])

    def gather(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picked = index[positions]
        return np.asarray(x[picked], dtype="float32"), labels[positions]

    def load(positions: Any) -> tuple[Any, Any]:
        xs, ys = tf.numpy_function(gather, [positions], (tf.float32, tf.as_dtype(labels.dtype)), stateful=False)
        return tf.ensure_shape(xs, (None, *row_shape)), tf.ensure_shape(ys, (None,))

    ds = tf.data.Dataset.range(len(index))
    if shuffle:
        ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)
