"""The result strip every task page shares: what a run scored, in one order, with one format."""

from __future__ import annotations

import streamlit as st

from core.store.folders import RunRecord
from ui.format import fmt_acc, fmt_seconds, result_caption

METRICS = (("train_accuracy", "Train accuracy"), ("val_accuracy", "Validation accuracy"), ("test_accuracy", "Test accuracy"))


def result_strip(record: RunRecord, *, previous: RunRecord | None = None, versus: str = "previous") -> None:
    """Context line (with the training time), then train, validation and test accuracy (3 decimals; with their
    change against ``previous`` when given), epochs and the parameters trained."""
    result_caption(record)
    m = record.metrics
    pm = previous.metrics if previous is not None else {}
    cols = st.columns(5)
    helps = {
        "train_accuracy": "As Keras reported it at the kept epoch (with dropout and augmentation on).",
        "val_accuracy": f"{m.get('n_val')} images held out of the training folder; early stopping and the search look at these.",
        "test_accuracy": f"{m.get('n_test')} images of the test folder: the final figure.",
    }
    for col, (name, label) in zip(cols, METRICS, strict=False):
        delta = None
        if previous is not None and m.get(name) is not None and pm.get(name) is not None:
            delta = f"{m[name] - pm[name]:+.3f} vs {versus}"
        col.metric(label, fmt_acc(m.get(name)), delta=delta, help=helps[name],
                   delta_color="off" if name == "train_accuracy" else "normal")
    cols[3].metric("Epochs", m.get("epochs_run", "–"), help=f"The kept epoch is {m.get('kept_epoch')}; trained in "
                   f"{fmt_seconds(m.get('seconds'))}.")  # fmt: skip
    cols[4].metric("Trained weights", f"{m.get('params_trainable', 0):,}",
                   help=f"Parameters the run trained, of {m.get('params_total', 0):,} in the network.")
