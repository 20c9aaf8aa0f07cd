"""Augmented heads at the cost of feature passes: each epoch's augmented images through the frozen backbone
once, in graph mode, and shared by every run that asks for the same augmentation.

A head trained with augmentation (``phase`` head, augmentation other than flips alone) sees, each epoch,
a fresh random augmentation of every training image, as the study's ``ImageDataGenerator`` did. Its
backbone is frozen, so what the head trains on is the pooled features of those augmented images: this
module computes them per epoch with a traced pass (about 2.4x the images/s of Keras' fit through the
frozen network, BENCHMARKS.md) and keeps them, keyed by everything that decides them (the feature cache's
key, the augmentation, the seed, the training images, the epoch). Runs that differ only in their head (the
regularisation variants of task 4 on the study's best augmentation) then train on the same banks in
seconds. Epoch ``e``'s augmentation is seeded by ``(seed, e)`` alone: a run repeats exactly.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from core.augment import build_augmenter
from core.config import AugmentConfig, stable_hash
from core.features import FeatureFn

logger = logging.getLogger(__name__)

MAX_BANK_BYTES = 1 << 30  # epochs of augmented features kept in memory (LRU)
BATCH = 64

_banks: OrderedDict[str, np.ndarray] = OrderedDict()
_lock = threading.Lock()


def _remember(key: str, value: np.ndarray) -> None:
    with _lock:
        _banks[key] = value
        _banks.move_to_end(key)
        while sum(v.nbytes for v in _banks.values()) > MAX_BANK_BYTES and len(_banks) > 1:
            _banks.popitem(last=False)


def _recall(key: str) -> np.ndarray | None:
    with _lock:
        value = _banks.get(key)
        if value is not None:
            _banks.move_to_end(key)
        return value


def epoch_seed(seed: int, epoch: int) -> int:
    return int(stable_hash({"seed": seed, "epoch": epoch}, 8), 16) % (2**31 - 1)


def augmented_epochs(
    fn: FeatureFn, images: np.ndarray, augment: AugmentConfig, seed: int, epochs: int, features_key: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[np.ndarray]:
    """One array of pooled features per epoch: epoch ``e`` is ``images`` under augmentation seeded ``(seed, e)``."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]  # which images, exactly
    base = stable_hash({"f": features_key, "a": asdict(augment), "s": seed, "x": digest})
    out = []
    total, t0 = epochs * len(images), time.monotonic()
    for e in range(epochs):
        key = f"{base}-{e}"
        bank = _recall(key)
        if bank is None:
            augmenter = build_augmenter(augment, epoch_seed(seed, e))
            parts = []
            for start in range(0, len(images), BATCH):
                batch = augmenter(images[start : start + BATCH].astype("float32"), training=True)
                parts.append(fn(np.asarray(batch, dtype="float32")))
                if progress is not None:
                    done = e * len(images) + start + len(parts[-1])
                    progress({"event": "features", "done": done, "total": total, "elapsed": time.monotonic() - t0})
            bank = np.concatenate(parts)
            _remember(key, bank)
        out.append(bank)
    return out
