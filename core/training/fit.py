"""One phase of training: optimizer, callbacks (history, progress, cancel, early stopping, reduce-LR), fit.

The study's recipe, with Keras' own callbacks; :class:`Recorder` adds what SceneLab needs around them:
each epoch recorded with its learning rate, progress reported to the UI or the CLI, and cancellation
honoured at the next batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from core.config import RunConfig
from core.errors import SceneLabError
from core.models.warm import WarmEntry

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]
# Training a head on cached features is all per-step overhead (the matmuls take microseconds): run up
# to this many steps per call of the compiled step (one call per epoch at the study's sizes).
HEAD_STEPS_PER_EXECUTION = 64


class TrainingDiverged(SceneLabError):
    """The loss became NaN or infinite: the settings make training diverge; nothing was saved."""


def make_optimizer(name: str, lr: float, weight_decay: float, momentum: float) -> Any:
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


class Recorder(keras.callbacks.Callback):
    """Records each epoch with its learning rate into ``history``, reports progress, honours cancellation."""

    def __init__(
        self, phase: str, epochs: int, steps: int, history: list[dict[str, float]],
        progress: ProgressFn | None, should_stop: StopFn | None,
    ) -> None:
        super().__init__()
        self.phase, self.epochs, self.steps, self.history = phase, epochs, steps, history
        self.progress, self.should_stop = progress, should_stop
        self.epoch_offset = len(history)
        self.cancelled = False
        self.diverged_at: int | None = None  # the epoch (of this phase) whose loss stopped being a number
        self.t0 = time.monotonic()

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._check_stop()
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.diverged_at = len(self.history) - self.epoch_offset + 1
            self.model.stop_training = True
            return
        # with several steps per call (heads on cached features) every call reports
        many = int(getattr(self.model, "steps_per_execution", 1) or 1) > 1
        if self.progress is not None and (many or batch % 5 == 0 or batch + 1 >= self.steps):
            self.progress(
                {
                    "event": "batch",
                    "phase": self.phase,
                    "epoch": len(self.history) - self.epoch_offset + 1,
                    "epochs": self.epochs,
                    "batch": min(batch + 1, self.steps),
                    "batches": self.steps,
                    "logs": {k: float(v) for k, v in (logs or {}).items()},
                    "elapsed": time.monotonic() - self.t0,
                }
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        lr = float(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        row = {
            "epoch": float(len(self.history) + 1),
            "phase": 0.0 if self.phase == "head" else 1.0,
            "loss": float(logs.get("loss", np.nan)),
            "accuracy": float(logs.get("accuracy", np.nan)),
            "val_loss": float(logs.get("val_loss", np.nan)),
            "val_accuracy": float(logs.get("val_accuracy", np.nan)),
            "lr": lr,
        }
        self.history.append(row)
        if self.progress is not None:
            self.progress(
                {"event": "epoch", "phase": self.phase, "epoch": epoch + 1, "epochs": self.epochs, "row": row,
                 "elapsed": time.monotonic() - self.t0}
            )
        self._check_stop()


def make_callbacks(cfg: RunConfig, recorder: Recorder) -> list[Any]:
    """The recorder first, then the study's early stopping and reduce-LR when they are on."""
    callbacks: list[Any] = [recorder]
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


def compiled_stage(
    entry: WarmEntry, name: str, make: Callable[[], Any], cfg: RunConfig, lr: float, steps_per_execution: int = 1
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


def fit(
    model: Any, x: Any, y: Any, val: Any, cfg: RunConfig, *, epochs: int, phase: str, steps: int,
    history: list[dict[str, float]], progress: ProgressFn | None, should_stop: StopFn | None,
    steps_per_epoch: int | None = None,
) -> bool:
    """Fit one phase and record its epochs in ``history``; True if the user cancelled.

    ``y`` None: ``x`` is a dataset yielding (inputs, labels) (``steps_per_epoch``: one stream that many batches
    an epoch, as the per-epoch banks of ``core.training.augbank.banks_dataset``); else NumPy arrays shuffled by Keras. A
    loss that stops being a number ends the run with :class:`TrainingDiverged` (nothing is stored)."""
    recorder = Recorder(phase, epochs, steps, history, progress, should_stop)
    kwargs: dict[str, Any] = {"epochs": epochs, "callbacks": make_callbacks(cfg, recorder), "verbose": 0}
    if y is None:
        model.fit(x, validation_data=val, steps_per_epoch=steps_per_epoch, **kwargs)
    else:
        model.fit(x, y, validation_data=val, batch_size=cfg.batch_size, shuffle=True, **kwargs)
    if recorder.diverged_at is not None:
        raise TrainingDiverged(
            f"The loss stopped being a number (NaN or infinite) in epoch {recorder.diverged_at} of the {phase} phase, "
            f"so nothing was saved; lower the learning rate ({model.optimizer.learning_rate.numpy():.3g}) or the "
            "weight decay and train again."
        )
    return recorder.cancelled
