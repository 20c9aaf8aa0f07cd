"""Task 2: train on a few images per class and watch it overfit, beside the same run on the full set."""

from __future__ import annotations

import streamlit as st

from core.store import RunRecord
from ui import handover, panel
from ui import reference as ref
from ui.charts import curves_chart
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import fmt_acc, result_caption
from ui.jobs import submit_runs, track_jobs
from ui.resources import lookup
from ui.settings import settings

P = "small_data"
FIELDS = ("train_per_class", "epochs", "lr", "phase")
DEFAULTS = panel.defaults(P, FIELDS, {"train_per_class": 50})
PER_CLASS = panel.key(P, "train_per_class")

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("2 · Small data")
st.markdown(
    "The study trained on only 50 images per class (400 in all). With so few images a network learns its "
    "training set by heart: training accuracy climbs while validation accuracy stalls. Both runs below share "
    "one validation split, drawn before the small set."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
if st.session_state[PER_CLASS] is None:  # a loaded full-set run: its small twin has the default size
    st.session_state[PER_CLASS] = DEFAULTS[PER_CLASS]
handover.show_loaded_extras(P)
ss = st.session_state

smallest = min(info.counts()["train"].values())
with st.form(f"{P}_form"):
    f1, f2, f3, f4 = st.columns([2, 1, 1, 1])
    panel.widget(P, "train_per_class", f1, style="slider", min_value=10, max_value=100, step=5,
                 help=f"Drawn at random (with the seed) from what is left of train after the validation split; "
                 f"the smallest class has {smallest} training images before that split.")
    panel.widget(P, "epochs", f2, help=None)
    panel.widget(P, "lr", f3, help=None)
    panel.widget(P, "phase", f3, options=["head", "head+full"], horizontal=True, help=None)
    submitted = f4.form_submit_button("Train both", type="primary", key=f"{P}_train", icon=":material/play_arrow:")

values = panel.values(P, FIELDS)
small_cfg = handover.page_config(P, {}, values)
full_cfg = handover.page_config(P, {}, {**values, "train_per_class": None})
if small_cfg is None or full_cfg is None:
    st.stop()
small_id, small = lookup(small_cfg, s["data_root"])
full_id, full = lookup(full_cfg, s["data_root"])
if submitted and small_id and full_id:
    submit_runs(P, [small_cfg, full_cfg], s["data_root"])
track_jobs(P, watch=[small_id, full_id])

n = int(ss[PER_CLASS])
st.caption(
    f"Reference: {ref.STUDY} reached {ref.SMALL_DATA['accuracy']:.3f} with {ref.SMALL_DATA['images']} training "
    f"images ({ref.SMALL_DATA['per_class']} per class)."
)


def column(title: str, record: RunRecord | None, key: str) -> None:
    st.subheader(title)
    if record is None:
        st.info("Not trained yet with these settings: press **Train both**.")
        return
    m = record.metrics
    result_caption(record)
    c = st.columns(4)
    c[0].metric("Training images", m.get("n_train"))
    c[1].metric("Train accuracy", fmt_acc(m.get("train_accuracy")))
    c[2].metric("Validation accuracy", fmt_acc(m.get("val_accuracy")))
    c[3].metric("Test accuracy", fmt_acc(m.get("test_accuracy")))
    gap = (m.get("train_accuracy") or 0) - (m.get("val_accuracy") or 0)
    st.caption(f"Train − validation gap: {gap:+.3f}" + ("  (overfitting)" if gap > 0.1 else ""))
    st.altair_chart(curves_chart({record.run_id: record.history}, width=250, height=200), key=key)


left, right = st.columns(2)
with left:
    column(f"{n} images per class", small, f"{P}_small_curves")
with right:
    column("The full training set", full, f"{P}_full_curves")
