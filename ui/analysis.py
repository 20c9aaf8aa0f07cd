"""Where a trained run goes wrong on the test set: confusion matrix, accuracy per class, the images of any cell."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.store.folders import RunRecord
from ui.charts import confusion_chart
from ui.gallery import mistakes_gallery

GALLERY = 18


def error_analysis(page: str, record: RunRecord, data_root: str) -> None:
    """The test set's confusion matrix (click a cell), accuracy per class, and that cell's images."""
    classes = list(record.metrics.get("classes") or record.config.get("dataset", {}).get("classes", []))
    confusion = record.metrics.get("confusion")
    preds = record.predictions()
    if not classes or confusion is None or preds is None:
        st.warning("This run has no stored test predictions, so its confusion matrix cannot be shown.")
        return
    _default_cell(page, record.run_id, classes, np.asarray(confusion))
    st.subheader("Test set: where it goes wrong")
    _charts(page, record, classes, confusion)
    ss = st.session_state
    c1, c2, _ = st.columns([1, 1, 2])
    c1.selectbox("True class", classes, key=f"{page}_true")
    c2.selectbox("Predicted as", classes, key=f"{page}_pred")
    t, p = classes.index(ss[f"{page}_true"]), classes.index(ss[f"{page}_pred"])
    probs, y_true = preds["probs"], preds["y_true"]
    y_pred = probs.argmax(axis=1)
    idx = np.flatnonzero((y_true == t) & (y_pred == p))
    idx = idx[np.argsort(-probs[idx, p])] if t != p else idx[np.argsort(probs[idx, p])]
    if t == p:
        st.markdown(f"{len(idx)} **{classes[t]}** test images classified correctly; least confident first.")
    else:
        st.markdown(f"{len(idx)} **{classes[t]}** test images predicted as **{classes[p]}**; most confident mistakes first.")
    if len(idx) == 0:
        st.info(f"No test image of class {classes[t]} was predicted as {classes[p]}.")
    root = Path(record.config.get("dataset", {}).get("root") or data_root)
    mistakes_gallery(record, idx, root if root.is_dir() else Path(data_root), key=page, limit=GALLERY)
    if len(idx) > GALLERY:
        st.caption(f"…and {len(idx) - GALLERY} more.")


def _default_cell(page: str, run_id: str, classes: list[str], conf: np.ndarray) -> None:
    """The cell shown first: the run's most frequent mistake."""
    ss = st.session_state
    if ss.get(f"{page}_cell_run") == run_id and ss.get(f"{page}_true") in classes and ss.get(f"{page}_pred") in classes:
        return
    off = conf.copy()
    np.fill_diagonal(off, -1)
    i, j = np.unravel_index(int(off.argmax()), off.shape)
    ss[f"{page}_true"], ss[f"{page}_pred"] = classes[i], classes[j]
    ss[f"{page}_cell_run"] = run_id


def _charts(page: str, record: RunRecord, classes: list[str], confusion: list[list[int]]) -> None:
    def on_cell_click() -> None:
        state = st.session_state.get(f"{page}_confusion")
        cells = (state or {}).get("selection", {}).get("cell") or []
        if cells:
            st.session_state[f"{page}_true"] = cells[0].get("true", st.session_state[f"{page}_true"])
            st.session_state[f"{page}_pred"] = cells[0].get("predicted", st.session_state[f"{page}_pred"])

    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Confusion matrix** (rows: true class; click a cell to see its images)")
        cell = alt.selection_point(name="cell", fields=["true", "predicted"], on="click", clear=False)
        st.altair_chart(confusion_chart(classes, confusion, cell), key=f"{page}_confusion", on_select=on_cell_click,
                        selection_mode="cell")  # fmt: skip
    with right:
        st.markdown("**Accuracy per class**")
        per = record.metrics.get("per_class_accuracy") or {}
        per_df = pd.DataFrame({"class": list(per), "accuracy": [v if v is not None else np.nan for v in per.values()]})
        chart = (
            alt.Chart(per_df)
            .mark_bar()
            .encode(
                x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
                y=alt.Y("class:N", sort=classes, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=160)),
                color=alt.Color("accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None),
                tooltip=["class", alt.Tooltip("accuracy:Q", format=".1%")],
            )
            .properties(height=max(160, 30 * len(classes)))
        )
        st.altair_chart(chart, key=f"{page}_per_class", width="stretch")
