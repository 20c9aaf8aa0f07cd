"""The result strip every task page shares: what a run scored, in one order, with one format."""

from __future__ import annotations

import streamlit as st

from core.store.folders import RunRecord
from ui.format import fmt_acc, fmt_seconds, fmt_signed, result_caption

METRICS = (
    ("train_accuracy", "Train accuracy"),
    ("val_accuracy", "Validation accuracy"),
    ("test_accuracy", "Test accuracy"),
)


def result_strip(
    record: RunRecord, *, previous: RunRecord | None = None, versus: str = "previous", page: str | None = None
) -> None:
    """Context line (with the training time), then train, validation and test accuracy (3 decimals; with their
    change against ``previous`` when given), epochs and the parameters trained."""
    result_caption(record, page)
    m = record.metrics
    pm = previous.metrics if previous is not None else {}
    cols = st.columns(5)
    helps = {
        "train_accuracy": "As Keras reported it at the kept epoch (with dropout and augmentation on).",
        "val_accuracy": f"{m.get('n_val')} images held out of the training folder; early stopping and the search look at these.",
        "test_accuracy": f"{m.get('n_test')} images of the test folder: the final figure.",
    }
    for col, (name, label) in zip(cols, METRICS, strict=False):
        delta = change = None
        if previous is not None and m.get(name) is not None and pm.get(name) is not None:
            change = round(m[name] - pm[name], 3)
            delta = fmt_signed(change)  # the real minus sign; the comparison below it, never cut off
        colour = "gray" if name == "train_accuracy" or not change else ("green" if change > 0 else "red")
        col.metric(label, fmt_acc(m.get(name)), delta=delta, help=helps[name], delta_color=colour,
                   delta_arrow="off" if not change else ("up" if change > 0 else "down"),
                   delta_description=f"vs {versus}" if delta is not None else None)  # fmt: skip
    cols[3].metric("Epochs", m.get("epochs_run", "–"), help=f"The kept epoch is {m.get('kept_epoch')}; trained in "
                   f"{fmt_seconds(m.get('seconds'))}.")  # fmt: skip
    cols[4].metric(
        "Trained weights",
        f"{m.get('params_trainable', 0):,}",
        help=f"Parameters the run trained, of {m.get('params_total', 0):,} in the network.",
    )
