"""Task 2: train on a few images per class and watch it overfit, beside the same run on the full set."""

from __future__ import annotations

import streamlit as st

from core.store import RunRecord
from ui import common
from ui import reference as ref

P = "small_data"
DEFAULTS = {f"{P}_per_class": 50, f"{P}_epochs": 20, f"{P}_lr": 1e-3, f"{P}_phase": "head"}
FIELDS = {"train_per_class": f"{P}_per_class", "epochs": f"{P}_epochs", "lr": f"{P}_lr", "phase": f"{P}_phase"}

common.ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("2 · Small data")
st.markdown(
    "The study trained on only 50 images per class (400 in all). With so few images a network learns its "
    "training set by heart: training accuracy climbs while validation accuracy stalls. Both runs below share "
    "one validation split, drawn before the small set."
)
info = common.require_dataset()
s = common.settings()
common.setup_widgets(P, FIELDS, DEFAULTS)
if st.session_state[f"{P}_per_class"] is None:  # a loaded full-set run: its small twin has the default size
    st.session_state[f"{P}_per_class"] = DEFAULTS[f"{P}_per_class"]
common.show_loaded_extras(P)
ss = st.session_state

smallest = min(info.counts()["train"].values())
with st.form(f"{P}_form"):
    f1, f2, f3, f4 = st.columns([2, 1, 1, 1])
    f1.slider("Training images per class", 10, 100, step=5, key=f"{P}_per_class", persist_state="session",
              help=f"Drawn at random (with the seed) from what is left of train after the validation split; "
                   f"the smallest class has {smallest} training images before that split.")
    f2.number_input("Epochs", 1, 500, step=1, key=f"{P}_epochs", persist_state="session")
    f3.number_input("Learning rate", 1e-6, 1.0, step=1e-4, format="%.1e", key=f"{P}_lr", persist_state="session")
    f3.radio("What to train", ["head", "head+full"], key=f"{P}_phase", persist_state="session", horizontal=True)
    submitted = f4.form_submit_button("Train both", type="primary", key=f"{P}_train", icon=":material/play_arrow:")

values = {"epochs": int(ss[f"{P}_epochs"]), "lr": float(ss[f"{P}_lr"]), "phase": ss[f"{P}_phase"]}
small_cfg = common.page_config(P, {}, {**values, "train_per_class": int(ss[f"{P}_per_class"])})
full_cfg = common.page_config(P, {}, {**values, "train_per_class": None})
if small_cfg is None or full_cfg is None:
    st.stop()
small_id, small = common.lookup(small_cfg, s["data_root"])
full_id, full = common.lookup(full_cfg, s["data_root"])
if submitted and small_id and full_id:
    common.submit_runs(P, [small_cfg, full_cfg], s["data_root"])
common.track_jobs(P, watch=[small_id, full_id])

n = int(ss[f"{P}_per_class"])
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
    common.result_caption(record)
    c = st.columns(4)
    c[0].metric("Training images", m.get("n_train"))
    c[1].metric("Train accuracy", common.fmt_acc(m.get("train_accuracy")))
    c[2].metric("Validation accuracy", common.fmt_acc(m.get("val_accuracy")))
    c[3].metric("Test accuracy", common.fmt_acc(m.get("test_accuracy")))
    gap = (m.get("train_accuracy") or 0) - (m.get("val_accuracy") or 0)
    st.caption(f"Train − validation gap: {gap:+.3f}" + ("  (overfitting)" if gap > 0.1 else ""))
    st.altair_chart(common.curves_chart({record.run_id: record.history}, width=250, height=200), key=key)


left, right = st.columns(2)
with left:
    column(f"{n} images per class", small, f"{P}_small_curves")
with right:
    column("The full training set", full, f"{P}_full_curves")
