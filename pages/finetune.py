"""Task 0: fine-tune a pretrained network, head first and then the whole network; inspect its mistakes."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.store import RunRecord
from ui import handover, panel
from ui import reference as ref
from ui.charts import confusion_chart, curves_chart
from ui.compat import ensure_router
from ui.format import fmt_acc, result_caption
from ui.gallery import mistakes_gallery
from ui.jobs import submit_runs, track_jobs
from ui.resources import lookup
from ui.settings import settings
from ui.sidebar import require_dataset

P = "finetune"
PHASE_LABELS = {
    "head+full": "Head, then the whole network (the study)",
    "head": "Head only (backbone frozen)",
    "full": "Whole network from the start",
}
FIELDS = ("phase", "epochs", "full_epochs", "lr", "full_lr", "optimizer", "batch_size", "freeze_blocks")
DEFAULTS = panel.defaults(P, FIELDS, {"phase": "head+full", "epochs": 10, "full_epochs": 2})

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("0 · Fine-tune")
st.markdown(
    "Train a new classification head on the frozen ImageNet backbone, then unfreeze the whole network and "
    "train it a little more at a tenth of the learning rate (BatchNorm stays frozen). Test accuracy is the "
    "final figure; early stopping and model choice only ever look at the validation split."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
handover.show_loaded_extras(P)

with st.form(f"{P}_form"):
    c1, c2, c3, c4 = st.columns([2.2, 1, 1, 1])
    panel.widget(P, "phase", c1, format_func=PHASE_LABELS.get, options=list(PHASE_LABELS), help=None)
    panel.widget(P, "optimizer", c1, style="select", help=None)
    panel.widget(
        P, "freeze_blocks", c1,
        help="0 trains every block. K > 0 keeps the first K blocks frozen, computes their output once (cached) and "
        "trains only the rest: much faster on a CPU, often as accurate. Not used by 'head only'.",
    )
    panel.widget(P, "epochs", c2, label="Head epochs", help="Epochs of the head phase (or of the only phase).")
    panel.widget(P, "full_epochs", c2, placeholder="same as head",
                 help="Used by 'head, then the whole network'; empty = same as the head.")
    panel.widget(P, "lr", c3, help=None)
    panel.widget(P, "full_lr", c3, placeholder="learning rate / 10", help="Empty = a tenth of the learning rate.")
    panel.widget(P, "batch_size", c4, help=None)
    submitted = c4.form_submit_button("Train", type="primary", key=f"{P}_train", icon=":material/play_arrow:")

ss = st.session_state
values = panel.values(P, FIELDS)
phase = values["phase"]
# the whole-network settings only matter to head+full: keep them out of other runs' identity
if phase != "head+full":
    values["full_epochs"] = values["full_lr"] = None
values["freeze_blocks"] = (values["freeze_blocks"] or 0) if phase != "head" else 0
cfg = handover.page_config(P, {}, values)
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
if submitted and run_id:
    submit_runs(P, [cfg], s["data_root"])
    if record is not None:
        st.toast("These settings were trained before: showing the stored run.")
running = track_jobs(P, watch=[run_id])

st.caption(
    f"Reference: {ref.STUDY} reached train {ref.FINETUNE['train_accuracy']:.3f} / validation "
    f"{ref.FINETUNE['val_accuracy']:.3f}; its validation set was MIT_split's test folder, so set it beside our test accuracy."
)
if record is None:
    if not running and run_id:
        st.info("Not trained yet with these settings. Press **Train**; it runs in the background, so you can keep exploring.")
    st.stop()


# -- results ------------------------------------------------------------------------------------------
def show_metrics(record: RunRecord) -> None:
    m = record.metrics
    result_caption(record)
    c = st.columns(5)
    c[0].metric("Train accuracy", fmt_acc(m.get("train_accuracy")), help="As Keras reported it at the kept epoch.")
    c[1].metric("Validation accuracy", fmt_acc(m.get("val_accuracy")), help=f"{m.get('n_val')} images held out of train.")
    c[2].metric("Test accuracy", fmt_acc(m.get("test_accuracy")), help=f"{m.get('n_test')} test images.")
    c[3].metric("Epochs", m.get("epochs_run"))
    c[4].metric("Trainable parameters", f"{m.get('params_trainable', 0):,}", help=f"of {m.get('params_total', 0):,} in all")


show_metrics(record)
st.altair_chart(curves_chart({record.run_id: record.history}), key=f"{P}_curves")

classes = list(record.metrics.get("classes") or record.config.get("dataset", {}).get("classes", []))
confusion = record.metrics.get("confusion")
preds = record.predictions()
if not classes or confusion is None or preds is None:
    st.warning("This run has no stored test predictions, so its confusion matrix cannot be shown.")
    st.stop()

probs, y_true = preds["probs"], preds["y_true"]
y_pred = probs.argmax(axis=1)
conf = np.asarray(confusion)

# the cell shown by default: the most frequent mistake
if ss.get(f"{P}_cell_run") != record.run_id or ss.get(f"{P}_true") not in classes or ss.get(f"{P}_pred") not in classes:
    off = conf.copy()
    np.fill_diagonal(off, -1)
    i, j = np.unravel_index(int(off.argmax()), off.shape)
    ss[f"{P}_true"], ss[f"{P}_pred"] = classes[i], classes[j]
    ss[f"{P}_cell_run"] = record.run_id


def on_cell_click() -> None:
    state = st.session_state.get(f"{P}_confusion")
    cells = (state or {}).get("selection", {}).get("cell") or []
    if cells:
        st.session_state[f"{P}_true"] = cells[0].get("true", st.session_state[f"{P}_true"])
        st.session_state[f"{P}_pred"] = cells[0].get("predicted", st.session_state[f"{P}_pred"])


st.subheader("Test set: where it goes wrong")
left, right = st.columns([3, 2])
with left:
    st.markdown("**Confusion matrix** (rows: true class; click a cell to see its images)")
    cell = alt.selection_point(name="cell", fields=["true", "predicted"], on="click", clear=False)
    st.altair_chart(
        confusion_chart(classes, confusion, cell),
        key=f"{P}_confusion",
        on_select=on_cell_click,
        selection_mode="cell",
    )
with right:
    st.markdown("**Accuracy per class**")
    per = record.metrics.get("per_class_accuracy") or {}
    per_df = pd.DataFrame({"class": list(per), "accuracy": [v if v is not None else np.nan for v in per.values()]})
    st.altair_chart(
        alt.Chart(per_df)
        .mark_bar()
        .encode(
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("class:N", sort=classes, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=160)),
            color=alt.Color("accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None),
            tooltip=["class", alt.Tooltip("accuracy:Q", format=".1%")],
        )
        .properties(height=max(160, 30 * len(classes))),
        key=f"{P}_per_class",
    )

c1, c2, _ = st.columns([1, 1, 2])
c1.selectbox("True class", classes, key=f"{P}_true")
c2.selectbox("Predicted as", classes, key=f"{P}_pred")
t, p = classes.index(ss[f"{P}_true"]), classes.index(ss[f"{P}_pred"])
idx = np.flatnonzero((y_true == t) & (y_pred == p))
idx = idx[np.argsort(-probs[idx, p])] if t != p else idx[np.argsort(probs[idx, p])]
if t == p:
    st.markdown(f"{len(idx)} **{classes[t]}** test images classified correctly; least confident first.")
else:
    st.markdown(f"{len(idx)} **{classes[t]}** test images predicted as **{classes[p]}**; most confident mistakes first.")

root = Path(record.config.get("dataset", {}).get("root") or s["data_root"])
if not root.is_dir():
    root = Path(s["data_root"])
shown = idx[:18]
if len(shown) == 0:
    st.info(f"No test image of class {classes[t]} was predicted as {classes[p]}.")
mistakes_gallery(record, idx, root, key=P)
