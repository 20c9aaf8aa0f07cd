"""Figures from predictions: a ranking of one image's classes; a run's accuracies, confusion matrix, per-class accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.config import RunConfig
from core.data.arrays import DecodedDataset, Splits


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most probable classes with their probabilities, most probable first (ties keep class order)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(classes) != len(p):
        raise ValueError(f"Expected one class name per probability ({len(p)}). Received: {len(classes)} names")
    order = np.argsort(-p, kind="stable")[: max(0, int(k))]
    return [(str(classes[i]), float(p[i])) for i in order]


def kept_epoch(cfg: RunConfig, history: list[dict[str, float]]) -> int:
    """Index of the epoch whose weights the run kept: the best validation loss of the last phase when
    early stopping restored it, else the last epoch."""
    if not history:
        return 0
    if cfg.early_stopping_patience:
        last_phase = history[-1]["phase"]
        idx = [i for i, r in enumerate(history) if r["phase"] == last_phase]
        return min(idx, key=lambda i: history[i]["val_loss"] if np.isfinite(history[i]["val_loss"]) else np.inf)
    return len(history) - 1


def run_metrics(
    cfg: RunConfig,
    ds: DecodedDataset,
    splits: Splits,
    history: list[dict[str, float]],
    p_val: np.ndarray,
    p_test: np.ndarray,
) -> dict[str, Any]:
    """Accuracies (train as Keras reported it at the kept epoch), confusion, per-class accuracy, counts."""
    y_val = ds.y_train[splits.val]
    k = len(ds.classes)
    pred_test = p_test.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (ds.y_test, pred_test), 1)
    per_class = {
        c: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, c in enumerate(ds.classes)
    }
    best = kept_epoch(cfg, history)
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
