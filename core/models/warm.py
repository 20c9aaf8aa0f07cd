"""Warm compiled models: the last few built *and compiled* classifiers, reused across runs.

The first training step of a freshly built DenseNet121 costs 20-60 s of graph tracing and optimisation.
:data:`WARM` keeps the last few built and compiled classifiers, keyed by everything that shapes their
graphs (:func:`warm_key`). A later run of the same architecture reuses one (:func:`ready_model`): its
variables are reset to exactly the values a fresh build would start from (same seed, same numbers, so
metrics are identical) and only the learning rate is assigned, so no step is traced again
(BENCHMARKS.md, "first step, architecture already used").
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

from core.config import RunConfig
from core.models.backbones import ResolvedWeights
from core.models.model import Classifier, HeadOnly, classifier_for, head_for
from core.runtime import seed_all

logger = logging.getLogger(__name__)

DEFAULT_WARM_ENTRIES = 2


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


def key_for(cfg: RunConfig, weights: ResolvedWeights, classes: int, freeze_blocks: int) -> tuple[Any, ...]:
    """:func:`warm_key` of a run's config."""
    return warm_key(
        backbone=cfg.backbone,
        weights_identity=weights.identity,
        remove_blocks=cfg.remove_blocks,
        image_size=cfg.image_size,
        classes=classes,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        dense_1024=cfg.dense_1024,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        freeze_blocks=freeze_blocks,
    )


def ready_model(
    cfg: RunConfig, weights: ResolvedWeights, classes: int, key: tuple[Any, ...]
) -> tuple[WarmEntry, bool]:
    """A classifier in the exact state a fresh build for ``cfg.seed`` has: a warm one if this process
    holds one for ``key`` (returned checked out), else a new build. Returns (entry, reused)."""
    import keras

    def first_build() -> None:
        if not len(WARM):  # clearing the session also drops warm models' optimised graphs
            keras.backend.clear_session()

    return _ready(key, cfg.seed, lambda: classifier_for(cfg, classes, weights), first_build)


def head_key(cfg: RunConfig, classes: int, in_features: int) -> tuple[Any, ...]:
    """Everything that shapes a head trained alone (its input width, layers and compiled optimizer)."""
    import keras

    return ("head", in_features, classes, float(cfg.dropout), bool(cfg.batch_norm), bool(cfg.dense_1024),
            cfg.optimizer, float(cfg.weight_decay), float(cfg.momentum), keras.mixed_precision.global_policy().name)  # fmt: skip


def ready_head(cfg: RunConfig, classes: int, in_features: int, key: tuple[Any, ...]) -> tuple[WarmEntry, bool]:
    """A head alone in the state a fresh build after ``seed_all(cfg.seed)`` has (warm when this process holds
    one for ``key``); (entry checked out, reused)."""
    return _ready(key, cfg.seed, lambda: HeadOnly(head_for(cfg, classes, in_features)))


def _ready(key: tuple[Any, ...], seed: int, build: Callable[[], Classifier | HeadOnly],
           first_build: Callable[[], None] | None = None) -> tuple[WarmEntry, bool]:  # fmt: skip
    """The warm entry for ``key`` reset to what ``build()`` after ``seed_all(seed)`` gives, checked out; else a
    new build (``first_build`` runs before it; its initial state is kept for the next reuse). (entry, reused)."""
    entry = WARM.checkout(key) if WARM.enabled else None
    if entry is None:
        if first_build is not None:
            first_build()
        seed_all(seed)
        entry = WarmEntry(build())
        entry.lock.acquire()
        if WARM.enabled:
            entry.snapshot_initial(seed)
        return entry, False
    if entry.initial_seed == seed:
        entry.restore_initial()
    else:  # another seed: the initial values a build for this seed makes (no trace, seconds)
        seed_all(seed)
        fresh = build()
        values = [np.array(v.numpy(), copy=True) for v in fresh.model.variables]
        del fresh
        entry.restore_initial(values)
        entry.initial_seed, entry.initial = seed, values
    return entry, True


_EXTRACTORS: OrderedDict[Hashable, Classifier] = OrderedDict()
_EXTRACTORS_LOCK = threading.Lock()
MAX_EXTRACTORS = 2


def extractor(cfg: RunConfig, weights: ResolvedWeights, classes: int) -> Classifier:
    """A full classifier of ``cfg``'s backbone and cut, for computing features (its head is unused, but its
    layers are those a run's saved model is made of); kept for the next runs of the same backbone."""
    import keras

    random = weights.path is None  # random weights: the backbone follows the seed
    key = (cfg.backbone, weights.identity, cfg.remove_blocks, cfg.image_size, classes, cfg.seed if random else None,
           keras.mixed_precision.global_policy().name)  # fmt: skip
    with _EXTRACTORS_LOCK:
        clf = _EXTRACTORS.get(key)
        if clf is not None:
            _EXTRACTORS.move_to_end(key)
            return clf
    seed_all(cfg.seed)
    clf = classifier_for(cfg.replace(dropout=0.0, batch_norm=False, dense_1024=False), classes, weights)
    with _EXTRACTORS_LOCK:
        _EXTRACTORS[key] = clf
        while len(_EXTRACTORS) > MAX_EXTRACTORS:
            _EXTRACTORS.popitem(last=False)
    return clf
