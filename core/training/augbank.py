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

The named shortcut ``aug_copies`` K (``--aug-copies``; 0, the default, is the study's way) cycles the epochs through K
augmented copies (:func:`copy_of`), so only K banks are computed however many epochs run: fewer passes, less variety.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from core.config import AugmentConfig, stable_hash
from core.data.augment import build_augmenter
from core.training.features import FeatureFn, FrozenFn

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


def copy_of(epoch: int, copies: int) -> int:
    """Which augmented copy of the training images epoch ``epoch`` trains on: its own (``copies`` 0, the study's
    way: a fresh augmentation each epoch), or copy ``epoch mod copies`` (the named shortcut ``aug_copies``). Copy
    ``k`` is the augmentation seeded ``(seed, k)``, so a run with K copies trains its first K epochs on exactly
    what the run with fresh copies trains them on."""
    return epoch % copies if copies else epoch


def _augmented_pass(
    fn: FeatureFn | FrozenFn, images: np.ndarray, augment: AugmentConfig, seed: int, epoch: int, batch: int,
    on_batch: Callable[[int], bool | None] | None = None,
) -> np.ndarray | None:  # fmt: skip
    """``fn`` over ``images`` under epoch ``epoch``'s augmentation (seeded ``(seed, epoch)``), ``batch`` rows at a
    time; None when ``on_batch`` (told the rows done so far) returns True: the pass was abandoned."""
    augmenter = build_augmenter(augment, epoch_seed(seed, epoch))
    parts = []
    for start in range(0, len(images), batch):
        x = augmenter(images[start : start + batch].astype("float32"), training=True)  # type: ignore[operator]
        parts.append(fn(np.asarray(x, dtype="float32")))
        if on_batch is not None and on_batch(start + len(parts[-1])):
            return None
    return np.concatenate(parts)


def _images_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]  # which images, exactly


def augmented_epochs(
    fn: FeatureFn, images: np.ndarray, augment: AugmentConfig, seed: int, epochs: int, features_key: str,
    progress: Callable[[dict[str, Any]], None] | None = None, *, copies: int = 0,
) -> list[np.ndarray]:
    """One array of pooled features per epoch: epoch ``e`` is ``images`` under augmentation seeded
    ``(seed, copy_of(e, copies))``; only the distinct copies are computed."""
    base = stable_hash({"f": features_key, "a": asdict(augment), "s": seed, "x": _images_digest(images)})
    distinct = sorted({copy_of(e, copies) for e in range(epochs)})
    banks: dict[int, np.ndarray] = {}
    total, t0 = len(distinct) * len(images), time.monotonic()
    for i, c in enumerate(distinct):
        key = f"{base}-{c}"
        bank = _recall(key)
        if bank is None:

            def report(done: int, i: int = i) -> None:
                if progress is not None:
                    progress({"event": "features", "done": i * len(images) + done, "total": total,
                              "elapsed": time.monotonic() - t0})  # fmt: skip

            bank = _augmented_pass(fn, images, augment, seed, c, BATCH, report)
            assert bank is not None  # report never abandons the pass
            _remember(key, bank)
        banks[c] = bank
    return [banks[copy_of(e, copies)] for e in range(epochs)]


# -- partial fine-tuning: per-epoch banks of prefix activations ------------------------------------------------
PREFIX_BATCH = 64  # images per prefix pass (Lite0's frozen prefix at 128 px: 32 to 128 within 5% of each other)


class EpochBanks:
    """Epoch ``e``'s augmented training images through the frozen prefix of a partially fine-tuned network, once.

    Fine-tuning the blocks after a frozen prefix with augmentation used to run every training step through the
    whole network (3.8x the time of the same run without augmentation, issue 20). The prefix is frozen and in
    inference mode, so what the suffix trains on in epoch ``e`` is the prefix's activations of that epoch's
    augmented images: computed here with the prefix as a frozen graph (``core.training.features.FrozenFn``, 1.3x the
    images/s of a traced Keras pass), just before the epoch that needs them, while the next epoch's are computed
    ahead in a background thread (it overlaps the suffix's steps), and kept in the byte-bounded LRU shared with the
    heads' banks (memory: that bound plus the epoch training and the one ahead, however many epochs run). Epoch
    ``e`` is seeded by ``(seed, e)``: a run repeats exactly, and runs that differ only in what trains after the
    prefix (its learning rate, the head's dropout) share the banks. What remains is the passes themselves: the
    study's small set at 128 px on Lite0 (3 blocks frozen, 15 epochs) computes 6000 augmented prefix activations
    where the run without augmentation computes none beyond its cached 2688, so it takes about 1.9x that run's CPU
    time (the former path 2.5x; BENCHMARKS.md, bench/aug_finetune.py). With ``copies`` K (the named shortcut
    ``aug_copies``), epoch ``e`` takes copy ``e mod K``'s bank: K passes in all.

    Use it as a context manager: leaving it abandons a pass still running (a cancelled or early-stopped run).
    """

    def __init__(
        self, fn: FrozenFn, images: np.ndarray, augment: AugmentConfig, seed: int, prefix_key: str, epochs: int,
        *, batch: int = PREFIX_BATCH, copies: int = 0,
    ) -> None:  # fmt: skip
        self.fn, self.images, self.augment, self.seed = fn, images, augment, seed
        self.epochs, self.batch, self.copies = epochs, batch, copies
        self.shape = tuple(int(d) for d in fn.model.output.shape[1:])
        digest = _images_digest(images)
        self._base = stable_hash({"p": prefix_key, "a": asdict(augment), "s": seed, "x": digest, "b": batch})
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefix-banks")
        self._pending: dict[int, Future[np.ndarray | None]] = {}
        self._closed = threading.Event()
        self._guard = threading.Lock()

    def __enter__(self) -> EpochBanks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._guard:
            self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _compute(self, epoch: int, on_batch: Callable[[int], None] | None = None) -> np.ndarray | None:
        copy = copy_of(epoch, self.copies)
        key = f"{self._base}-{copy}"
        bank = _recall(key)
        if bank is None:

            def step(done: int) -> bool:
                if on_batch is not None:
                    on_batch(done)
                return self._closed.is_set()

            bank = _augmented_pass(self.fn, self.images, self.augment, self.seed, copy, self.batch, step)
            if bank is not None:
                _remember(key, bank)
        return bank

    def _schedule(self, epoch: int) -> None:
        with self._guard:
            if epoch < self.epochs and epoch not in self._pending and not self._closed.is_set():
                self._pending[epoch] = self._pool.submit(self._compute, epoch)

    def first(self, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Epoch 0's bank, computed now in the calling thread (reporting ``prefix`` progress, which may raise to
        cancel), and epoch 1's started ahead."""
        t0 = time.monotonic()

        def report(done: int) -> None:
            if progress is not None:
                progress({"event": "prefix", "done": done, "total": len(self.images), "elapsed": time.monotonic() - t0})

        self._schedule(1)
        done: Future[np.ndarray | None] = Future()
        done.set_result(self._compute(0, report))
        self._pending[0] = done

    def get(self, epoch: int) -> np.ndarray | None:
        """Epoch ``epoch``'s bank (None once closed); the next epoch's starts computing in the background. Passes
        run only in the background thread or in :meth:`first`, never in the caller's (a tf.data thread)."""
        self._schedule(epoch)
        with self._guard:
            future = self._pending.pop(epoch, None)
        if future is None:
            return None
        self._schedule(epoch + 1)
        return future.result()


def banks_dataset(banks: EpochBanks, y: np.ndarray, batch_size: int, seed: int) -> Any:
    """Every epoch's bank in turn as one stream of shuffled batches (epoch ``e`` in an order drawn from
    ``(seed, e)``): a Keras fit with ``steps_per_epoch = ceil(len(y) / batch_size)`` takes one bank per epoch."""
    import tensorflow as tf

    def batches() -> Any:
        for epoch in range(banks.epochs):
            bank = banks.get(epoch)
            if bank is None:  # closed: the fit has ended
                return
            order = np.random.default_rng([seed, epoch, 2]).permutation(len(y))
            for start in range(0, len(y), batch_size):
                rows = order[start : start + batch_size]
                yield bank[rows], y[rows]

    spec = (tf.TensorSpec((None, *banks.shape), tf.float32), tf.TensorSpec((None,), tf.as_dtype(y.dtype)))
    # no prefetch: the banks are computed ahead already, and with one the fit's end stalled for about 19 s with the
    # process idle (15 epochs of Lite0's prefix at 128 px) while TensorFlow tore down the generator's iterator
    return tf.data.Dataset.from_generator(batches, output_signature=spec)
