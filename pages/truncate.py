"""Task 1: cut dense blocks off the backbone; parameters against accuracy."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.backbones import BACKBONES
from core.errors import SceneLabError
from core.model import describe
from ui import common
from ui import reference as ref

P = "truncate"
DEFAULTS = {f"{P}_remove_blocks": 0, f"{P}_dense_1024": False, f"{P}_epochs": 20, f"{P}_lr": 1e-3, f"{P}_phase": "head"}
FIELDS = {
    "remove_blocks": f"{P}_remove_blocks",
    "dense_1024": f"{P}_dense_1024",
    "epochs": f"{P}_epochs",
    "lr": f"{P}_lr",
    "phase": f"{P}_phase",
}


@st.cache_data(max_entries=64, show_spinner="Counting parameters…")
def param_counts(backbone: str, remove_blocks: int, dense_1024: bool, classes: int, image_size: int) -> dict:
    """Parameter counts of the classifier (weights are never loaded; a few seconds the first time)."""
    return describe(backbone, remove_blocks, classes=classes, dense_1024=dense_1024, image_size=image_size)


common.ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("1 · Truncate the backbone")
st.markdown(
    "A network pretrained on ImageNet ends in its most object-specific features. Cut whole blocks off its end "
    "and train a head on what is left: far fewer parameters, and see how much accuracy each block is worth."
)
info = common.require_dataset()
s = common.settings()
common.setup_widgets(P, FIELDS, DEFAULTS)
common.show_loaded_extras(P)
ss = st.session_state
backbone = s["backbone"]
unit = "dense blocks" if backbone == "densenet121" else "stages"

# the architecture controls redraw the parameter count at once (outside the training form)
a1, a2 = st.columns([2, 1])
a1.slider(f"{unit.capitalize()} removed from the end", 0, 3, step=1, key=f"{P}_remove_blocks", persist_state="session")
a2.toggle("Dense(1024) layer in the head", key=f"{P}_dense_1024", persist_state="session")
remove, dense = int(ss[f"{P}_remove_blocks"]), bool(ss[f"{P}_dense_1024"])

try:
    counts = param_counts(backbone, remove, dense, len(info.classes), s["image_size"])
except SceneLabError as exc:
    st.error(str(exc))
    st.stop()
m1, m2, m3, m4 = st.columns(4)
m1.metric("Backbone parameters", f"{counts['backbone_params']:,}")
m2.metric("Head parameters", f"{counts['head_params']:,}")
m3.metric("Total parameters", f"{counts['params_total']:,}")
m4.metric("Cut after layer", counts["cut_layer"])
if backbone == "densenet121":
    study_params, study_acc = ref.TRUNCATION[remove]
    st.caption(
        f"The study's DenseNet121 {ref.TRUNCATION_LABELS[remove]}: {study_params / 1e6:.2g}M backbone parameters, "
        f"{study_acc:.3f} accuracy. Feature map at the cut: {' x '.join(map(str, counts['feature_shape']))} at {s['image_size']} px."
    )
else:
    st.caption(f"{BACKBONES[backbone].label} is cut at the end of its last stages; the study's figures are DenseNet121's.")

with st.form(f"{P}_form"):
    f1, f2, f3, f4 = st.columns(4)
    f1.radio("What to train", ["head", "head+full"], key=f"{P}_phase", persist_state="session",
             format_func={"head": "Head only (seconds)", "head+full": "Head, then the whole cut network"}.get)
    f2.number_input("Epochs", 1, 500, step=1, key=f"{P}_epochs", persist_state="session")
    f3.number_input("Learning rate", 1e-6, 1.0, step=1e-4, format="%.1e", key=f"{P}_lr", persist_state="session")
    submitted = f4.form_submit_button("Train this cut", type="primary", key=f"{P}_train", icon=":material/play_arrow:")
    all_cuts = f4.form_submit_button("Train all four cuts", key=f"{P}_train_all")

values = {
    "remove_blocks": remove,
    "dense_1024": dense,
    "phase": ss[f"{P}_phase"],
    "epochs": int(ss[f"{P}_epochs"]),
    "lr": float(ss[f"{P}_lr"]),
}
cfg = common.page_config(P, {}, values)
if cfg is None:
    st.stop()
run_id, record = common.lookup(cfg, s["data_root"])
if submitted and run_id:
    common.submit_runs(P, [cfg], s["data_root"])
elif all_cuts and run_id:
    common.submit_runs(P, [cfg.replace(remove_blocks=k) for k in range(4)], s["data_root"])
common.track_jobs(P, watch=[run_id])

if record is not None:
    m = record.metrics
    common.result_caption(record)
    r1, r2, r3, r4 = st.columns(4)
    r1.metric("Test accuracy", common.fmt_acc(m.get("test_accuracy")))
    r2.metric("Validation accuracy", common.fmt_acc(m.get("val_accuracy")))
    r3.metric("Train accuracy", common.fmt_acc(m.get("train_accuracy")))
    r4.metric("Training time", common.fmt_seconds(m.get("seconds")))
else:
    st.info("This cut is not trained yet with these settings: press **Train this cut** (or all four).")

# -- parameters against accuracy over every stored truncation run like this one ---------------------
st.subheader("Parameters against test accuracy")
rows = []
for r in common.runs_like(info, cfg):
    run = r.config["run"]
    rows.append(
        {
            "who": f"ours: {r.config['dataset']['name']}, {backbone}, {cfg.image_size} px",
            "blocks removed": run.get("remove_blocks", 0),
            "parameters": r.metrics.get("backbone_params"),
            "test accuracy": r.metrics.get("test_accuracy"),
            "run": r.run_id,
            "settings": common.summarise_config(run),
            "current": r.run_id == run_id,
        }
    )
if backbone == "densenet121":
    for k, (params, acc) in ref.TRUNCATION.items():
        rows.append(
            {"who": "the study (DenseNet121, 256 px)", "blocks removed": k, "parameters": params, "test accuracy": acc,
             "run": "study", "settings": ref.TRUNCATION_LABELS[k], "current": False}
        )
df = pd.DataFrame(rows)
if df.empty or not (df["run"] != "study").any():
    st.caption("No truncation run is stored yet for this dataset, backbone and image size.")
if not df.empty:
    base = alt.Chart(df).encode(
        x=alt.X("parameters:Q", scale=alt.Scale(type="log"), title="backbone parameters (log scale)"),
        y=alt.Y("test accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("who:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=400)),
    )
    points = base.mark_point(filled=True, size=90).encode(
        shape=alt.Shape("current:N", legend=None),
        tooltip=["who", "blocks removed", alt.Tooltip("parameters:Q", format=","), alt.Tooltip("test accuracy:Q", format=".3f"), "settings", "run"],
    )
    labels = base.mark_text(dy=-10, fontSize=11).encode(text="blocks removed:N")
    st.altair_chart((points + labels).properties(height=320), key=f"{P}_chart")
    st.caption("Numbers above the points: blocks removed. Our points cover every stored run on this dataset, "
               "backbone and image size; hover for their settings.")
