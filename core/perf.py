"""Speed on a 2-core laptop CPU: warm compiled models, fast feature passes, partial fine-tuning.

Three mechanisms, each kept because a benchmark in ``bench/`` showed it (see BENCHMARKS.md):

* **Warm models.** The first training step of a freshly built DenseNet121 costs 20-60 s of graph
  tracing and optimisation. :data:`WARM` keeps the last few built *and compiled* classifiers, keyed by
  everything that shapes their graphs (:func:`warm_key`). A later run of the same architecture reuses
  one: its variables are reset to exactly the values a fresh build would start from (same seed, same
  numbers, so metrics are identical) and only the learning rate is assigned, so no step is traced again.
* **Graph-mode feature passes.** :class:`FeatureFn` runs a frozen model through one ``tf.function``
  instead of calling the Keras model eagerly batch by batch (about 1.8x faster for EfficientNet-Lite0).
* **Partial fine-tuning.** :func:`split_base` cuts a backbone at a block boundary into a frozen prefix and
  a trainable suffix. With no augmentation the prefix's activations are computed once and the suffix
  trains on them, at the cost of the suffix alone.

Thread settings live here too (:func:`configure_threads`); they are applied only when asked.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.backbones import get_backbone
from core.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_WARM_ENTRIES = 2
# Training a head on cached features is all per-step overhead (the matmuls take microseconds): run up
# to this many steps per call of the compiled step (one call per epoch at the study's sizes).
HEAD_STEPS_PER_EXECUTION = 64


# -- threads ------------------------------------------------------------------------------------------
def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> dict[str, int]:
    """Set TensorFlow's thread pools (must run before TensorFlow executes its first op).

    ``None`` leaves TensorFlow's default (every core for both pools). Returns what is in effect.
    """
    import tensorflow as tf

    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError as exc:  # the runtime is already initialised: settings are fixed now
        logger.warning("Thread settings not applied (%s).", exc)
    return {
        "intra_op": int(tf.config.threading.get_intra_op_parallelism_threads()),
        "inter_op": int(tf.config.threading.get_inter_op_parallelism_threads()),
    }


# -- seeds --------------------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``, except that TensorFlow's global seed is set only when it
    differs: setting it clears TensorFlow's kernel and function caches, which would cost a warm model
    its optimised graph (about 10 s for DenseNet121) although nothing random changes."""
    import random

    import keras
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    try:
        from tensorflow.python.eager import context

        current = context.global_seed()
    except (ImportError, AttributeError):  # pragma: no cover - private API moved: always set
        current = None
    if current != seed:
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


# -- graph-mode feature passes ------------------------------------------------------------------------
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
        for start in range(0, len(x), batch_size):
            batch = np.asarray(x[start : start + batch_size], dtype="float32")
            parts.append(self(batch).astype(dtype, copy=False))
            if on_batch is not None:
                on_batch(len(batch))
        if parts:
            return np.concatenate(parts)
        shape = tuple(int(d) for d in self.model.output.shape[1:])
        return np.zeros((0, *shape), dtype)


def array_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Any:
    """In-memory arrays (prefix activations) as a batched ``tf.data.Dataset``, reshuffled each epoch with
    ``seed``. Cheaper per epoch than Keras' pipeline for NumPy inputs (about 2x for a head on cached
    features), but it shuffles differently, so heads keep NumPy inputs: their results stay the ones every
    stored run was trained with. Partial fine-tuning (new) uses this."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# -- partial fine-tuning ------------------------------------------------------------------------------
def prefix_layer(backbone: str, remove_blocks: int, freeze_blocks: int) -> str | None:
    """Name of the layer ending the frozen prefix when the first ``freeze_blocks`` blocks stay frozen.

    A backbone has ``len(cut_layers)`` blocks (DenseNet121: 4; the cut after block k is a transition
    pooling layer). ``freeze_blocks=0`` freezes nothing (``None``); at least one block must remain
    trainable after ``remove_blocks`` blocks were removed from the end.
    """
    spec = get_backbone(backbone)
    blocks = len(spec.cut_layers)
    if freeze_blocks == 0:
        return None
    if not 0 < freeze_blocks < blocks - remove_blocks:
        raise ConfigError(
            f"freeze_blocks must be 0 to {blocks - remove_blocks - 1} for {backbone} with "
            f"{remove_blocks} block(s) removed (one block at least must train); received {freeze_blocks}."
        )
    return spec.cut_layers[blocks - freeze_blocks]


def split_base(base: Any, layer_name: str) -> tuple[Any, Any]:
    """(prefix, suffix) sub-models of ``base`` cut after ``layer_name``; both share ``base``'s layers."""
    import keras

    try:
        cut = base.get_layer(layer_name)
    except ValueError as exc:
        raise ConfigError(f"{base.name} has no layer {layer_name!r} to split at.") from exc
    prefix = keras.Model(base.input, cut.output, name=f"{base.name}_prefix")
    suffix = keras.Model(cut.output, base.output, name=f"{base.name}_suffix")
    return prefix, suffix


def freeze_prefix(base: Any, prefix: Any) -> None:
    """Mark every layer of ``prefix`` (shared with ``base``) not trainable."""
    names = {layer.name for layer in prefix.layers}
    for layer in base.layers:
        if layer.name in names:
            layer.trainable = False


def build_suffix_classifier(suffix: Any, head: Any) -> Any:
    """``prefix activations -> suffix (training=False) -> avg_pool -> head``, sharing their weights."""
    import keras

    inputs = keras.Input(tuple(int(d) for d in suffix.input.shape[1:]), name="prefix_activations")
    x = suffix(inputs, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, head(pooled), name="suffix_classifier")


# -- warm models --------------------------------------------------------------------------------------
@dataclass
class WarmEntry:
    """A built classifier, its compiled training models, and the state to reset them to.

    ``stages`` maps a stage name (``head``, ``head_images``, ``full``, ``partial``) to a compiled Keras
    model sharing the classifier's layers; ``optimizer_init`` holds each stage's optimizer variables as
    they were right after building, so a reused stage starts from a fresh optimizer's state.
    """

    clf: Any
    initial_seed: int | None = None
    initial: list[np.ndarray] | None = None
    stages: dict[str, Any] = field(default_factory=dict)
    optimizer_init: dict[str, list[np.ndarray]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    uses: int = 0

    def snapshot_initial(self, seed: int) -> None:
        """Remember every variable (weights and seed states) as built for ``seed``."""
        self.initial_seed = seed
        self.initial = [np.array(v.numpy(), copy=True) for v in self.clf.model.variables]

    def restore_initial(self, values: list[np.ndarray] | None = None) -> None:
        """Reset the classifier's variables to ``values`` (default: the snapshot)."""
        values = self.initial if values is None else values
        variables = self.clf.model.variables
        if values is None or len(values) != len(variables):
            raise RuntimeError("warm model snapshot does not match its model")
        for var, value in zip(variables, values, strict=True):
            var.assign(value)

    def stage(self, name: str) -> Any | None:
        return self.stages.get(name)

    def add_stage(self, name: str, model: Any) -> None:
        """Record a compiled model; builds its optimizer now so its fresh state can be restored later."""
        model.optimizer.build(model.trainable_variables)
        self.stages[name] = model
        self.optimizer_init[name] = [np.array(v.numpy(), copy=True) for v in model.optimizer.variables]

    def reset_stage(self, name: str, lr: float) -> Any:
        """The compiled model of stage ``name`` with a fresh optimizer state and learning rate ``lr``."""
        model = self.stages[name]
        for var, value in zip(model.optimizer.variables, self.optimizer_init[name], strict=True):
            var.assign(value)
        model.optimizer.learning_rate = lr
        return model


class WarmModels:
    """A small LRU of :class:`WarmEntry`, safe to share between threads.

    ``checkout(key)`` hands an entry to one trainer at a time (``None`` when absent or busy);
    ``checkin`` returns it. The size comes from ``SCENELAB_WARM_MODELS`` (0 turns reuse off).
    """

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is None:
            max_entries = int(os.environ.get("SCENELAB_WARM_MODELS", DEFAULT_WARM_ENTRIES))
        self.max_entries = max(0, max_entries)
        self._entries: OrderedDict[Hashable, WarmEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def checkout(self, key: Hashable) -> WarmEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.lock.acquire(blocking=False):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            entry.uses += 1
            return entry

    def checkin(self, key: Hashable, entry: WarmEntry) -> None:
        """Keep ``entry`` (released) as the newest for ``key``; evict the oldest beyond the limit."""
        if entry.lock.locked():
            entry.lock.release()
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                old_key, old = next(iter(self._entries.items()))
                if old.lock.locked():  # in use: keep it, it will be checked in again
                    self._entries.move_to_end(old_key)
                    break
                del self._entries[old_key]

    def discard(self, key: Hashable, entry: WarmEntry) -> None:
        """Forget ``entry`` (e.g. after a failed run left it in an unknown state)."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        if entry.lock.locked():
            entry.lock.release()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


WARM = WarmModels()


def warm_key(
    *,
    backbone: str,
    weights_identity: str,
    remove_blocks: int,
    image_size: int,
    classes: int,
    dropout: float,
    batch_norm: bool,
    dense_1024: bool,
    optimizer: str,
    weight_decay: float,
    momentum: float,
    freeze_blocks: int = 0,
    policy: str | None = None,
) -> tuple[Any, ...]:
    """Everything that changes a classifier's graph or its compiled training step.

    The learning rate, epochs, seed, data and augmentation do not: they are state or inputs.
    """
    if policy is None:
        import keras

        policy = keras.mixed_precision.global_policy().name
    return (
        backbone,
        weights_identity,
        remove_blocks,
        image_size,
        classes,
        float(dropout),
        bool(batch_norm),
        bool(dense_1024),
        optimizer,
        float(weight_decay),
        float(momentum),
        freeze_blocks,
        policy,
    )
