"""Training a head on features: the study's recipe without Keras ``fit``'s per-epoch overhead.

A head on cached features is a few small matrix products per batch; Keras' ``fit`` spends about 0.3 s per
epoch around them (a new tf.data iterator per epoch, a validation ``evaluate``), so a 20-epoch head took
5 s whatever its data (measured: BENCHMARKS.md). Here one traced step per batch does the work and the
epoch's bookkeeping is plain NumPy: the same loss (sparse categorical cross-entropy), the optimizer the
head was compiled with (decoupled weight decay included), early stopping on validation loss restoring the
best epoch's weights, reduce-LR on plateau (Keras' defaults: ``min_delta`` 1e-4, ``min_lr`` 1e-7), progress,
cancellation and divergence checks. Each epoch's order (and input, for flips or augmentation) is drawn from
``(seed, epoch)`` alone, so a run repeats exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core.config import RunConfig
from core.training.fit import ProgressFn, StopFn, TrainingDiverged

EpochInput = Callable[[int], np.ndarray]  # epoch -> the training inputs of that epoch (rows in label order)
REDUCE_MIN_DELTA = 1e-4
MIN_LR = 1e-7


class _Steps:
    """The traced training and evaluation steps of one compiled head."""

    def __init__(self, head: Any) -> None:
        self.head = head
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        @tf.function(reduce_retracing=True)
        def train_step(x: Any, y: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                probs = head(x, training=True)
                loss = loss_fn(y, probs)
            grads = tape.gradient(loss, head.trainable_variables)
            head.optimizer.apply(grads, head.trainable_variables)
            hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=1, output_type=tf.int32), y), tf.float32))
            return loss, hits

        @tf.function(reduce_retracing=True)
        def eval_step(x: Any, y: Any) -> tuple[Any, Any]:
            probs = head(x, training=False)
            hits = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(probs, axis=1, output_type=tf.int32), y), tf.float32))
            return loss_fn(y, probs), hits

        self.train_step, self.eval_step = train_step, eval_step


def _steps(head: Any) -> _Steps:
    steps = head.__dict__.get("_scenelab_steps")
    if steps is None:
        steps = head.__dict__["_scenelab_steps"] = _Steps(head)
    return steps


def _epoch(
    steps: _Steps, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch: int, should_stop: StopFn | None,
    report: Callable[[int, int, float], None],
) -> tuple[float, float, bool]:
    """One epoch in ``order``: (mean loss, accuracy, cancelled); ``report(batch, batches, loss)`` now and then."""
    total_loss, hits = 0.0, 0.0
    batches = int(np.ceil(len(order) / batch))
    for i, start in enumerate(range(0, len(order), batch)):
        idx = order[start : start + batch]
        loss, got = steps.train_step(tf.constant(x[idx]), tf.constant(y[idx], tf.int32))
        total_loss += float(loss) * len(idx)
        hits += float(got)
        if i % 10 == 9 or i + 1 == batches:
            report(i + 1, batches, total_loss / (start + len(idx)))
        if should_stop is not None and should_stop():
            return total_loss / max(1, start + len(idx)), hits / max(1, start + len(idx)), True
    return total_loss / len(order), hits / len(order), False


class _Plateau:
    """Keras' ReduceLROnPlateau and EarlyStopping on validation loss, as the study used them."""

    def __init__(self, cfg: RunConfig, head: Any) -> None:
        self.cfg, self.head = cfg, head
        self.best_loss, self.best_weights, self.best_epoch = np.inf, None, -1
        self.stop_wait = self.lr_wait = 0
        self.lr_best = np.inf

    def update(self, epoch: int, val_loss: float) -> bool:
        """After an epoch: lower the learning rate or stop; True to stop."""
        cfg = self.cfg
        if cfg.reduce_lr_patience:
            if val_loss < self.lr_best - REDUCE_MIN_DELTA:
                self.lr_best, self.lr_wait = val_loss, 0
            else:
                self.lr_wait += 1
                if self.lr_wait >= cfg.reduce_lr_patience:
                    lr = float(np.asarray(self.head.optimizer.learning_rate))
                    if lr > MIN_LR:
                        self.head.optimizer.learning_rate = max(lr * cfg.reduce_lr_factor, MIN_LR)
                    self.lr_wait = 0
        if not cfg.early_stopping_patience:
            return False
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.stop_wait = val_loss, epoch, 0
            self.best_weights = self.head.get_weights()
            return False
        self.stop_wait += 1
        return self.stop_wait >= cfg.early_stopping_patience

    def restore(self) -> None:
        if self.cfg.early_stopping_patience and self.best_weights is not None:
            self.head.set_weights(self.best_weights)


def fit_head(
    head: Any, epoch_input: EpochInput, y: np.ndarray, val: tuple[np.ndarray, np.ndarray], cfg: RunConfig, *,
    epochs: int, history: list[dict[str, float]], progress: ProgressFn | None, should_stop: StopFn | None,
) -> bool:
    """Train ``head`` (compiled: its optimizer is used) for ``epochs``; rows go to ``history``; True if cancelled."""
    steps, plateau = _steps(head), _Plateau(cfg, head)
    x_val, y_val = tf.constant(val[0]), tf.constant(val[1], tf.int32)
    t0 = time.monotonic()
    for epoch in range(epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(y))

        def report(batch: int, batches: int, running: float, epoch: int = epoch) -> None:
            if progress is not None:
                progress({"event": "batch", "phase": "head", "epoch": epoch + 1, "epochs": epochs, "batch": batch,
                          "batches": batches, "logs": {"loss": running}, "elapsed": time.monotonic() - t0})  # fmt: skip

        loss, acc, cancelled = _epoch(steps, epoch_input(epoch), y, order, cfg.batch_size, should_stop, report)
        if cancelled:
            return True
        if not np.isfinite(loss):
            raise TrainingDiverged(
                f"The loss stopped being a number (NaN or infinite) in epoch {epoch + 1} of the head phase, so nothing "
                f"was saved; lower the learning rate ({cfg.lr:.3g}) or the weight decay and train again."
            )
        val_loss, val_acc = (float(v) for v in steps.eval_step(x_val, y_val)) if len(val[1]) else (np.nan, np.nan)
        lr = float(np.asarray(head.optimizer.learning_rate))
        row = {"epoch": float(len(history) + 1), "phase": 0.0, "loss": loss, "accuracy": acc, "val_loss": val_loss,
               "val_accuracy": val_acc, "lr": lr}  # fmt: skip
        history.append(row)
        if progress is not None:
            progress({"event": "epoch", "phase": "head", "epoch": epoch + 1, "epochs": epochs, "row": row,
                      "elapsed": time.monotonic() - t0})  # fmt: skip
        if plateau.update(epoch, val_loss):
            break
    plateau.restore()
    return False
