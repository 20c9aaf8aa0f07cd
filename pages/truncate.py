"""Task 1: cut dense blocks off the backbone; parameters against accuracy."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.backbones import get_backbone
from core.errors import SceneLabError
from core.model import describe
from ui import handover, panel
from ui import reference as ref
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import fmt_acc, fmt_seconds, result_caption, summarise_config
from ui.jobs import submit_runs, track_jobs
from ui.resources import lookup, runs_like
from ui.settings import settings

P = "truncate"
FIELDS = ("remove_blocks", "dense_1024", "epochs", "lr", "phase")
DEFAULTS = panel.defaults(P, FIELDS)


@st.cache_data(max_entries=64, show_spinner="Counting parameters…")
def param_counts(backbone: str, remove_blocks: int, dense_1024: bool, classes: int, image_size: int) -> dict:
    """Parameter counts of the classifier (weights are never loaded; a few seconds the first time)."""
    return describe(backbone, remove_blocks, classes=classes, dense_1024=dense_1024, image_size=image_size)


ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("1 · Truncate the backbone")
st.markdown(
    "A network pretrained on ImageNet ends in its most object-specific features. Cut whole blocks off its end "
    "and train a head on what is left: far fewer parameters, and see how much accuracy each block is worth."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
handover.show_loaded_extras(P)
ss = st.session_state
backbone = s["backbone"]
spec = get_backbone(backbone)
unit = f"{spec.block_word}s"

# the architecture controls redraw the parameter count at once (outside the training form)
a1, a2 = st.columns([2, 1])
panel.widget(P, "remove_blocks", a1, label=f"{unit.capitalize()} removed from the end", style="slider", help=None)
panel.widget(P, "dense_1024", a2, label="Dense(1024) layer in the head", help=None)
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
study_params, study_acc = ref.TRUNCATION[remove]
st.caption(
    f"The study's DenseNet121 {ref.TRUNCATION_LABELS[remove]}: {study_params / 1e6:.2g}M backbone parameters, "
    f"{study_acc:.3f} accuracy. {spec.label} here: feature map at the cut "
    f"{' x '.join(map(str, counts['feature_shape']))} at {s['image_size']} px."
)

with st.form(f"{P}_form"):
    f1, f2, f3, f4 = st.columns(4)
    panel.widget(P, "phase", f1, options=["head", "head+full"], help=None,
                 format_func={"head": "Head only (seconds)", "head+full": "Head, then the whole cut network"}.get)
    panel.widget(P, "epochs", f2, help=None)
    panel.widget(P, "lr", f3, help=None)
    submitted = f4.form_submit_button("Train this cut", type="primary", key=f"{P}_train", icon=":material/play_arrow:")
    all_cuts = f4.form_submit_button("Train all four cuts", key=f"{P}_train_all")

cfg = handover.page_config(P, {}, panel.values(P, FIELDS))
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
if submitted and run_id:
    submit_runs(P, [cfg], s["data_root"])
elif all_cuts and run_id:
    submit_runs(P, [cfg.replace(remove_blocks=k) for k in range(spec.blocks)], s["data_root"])
track_jobs(P, watch=[run_id])

if record is not None:
    m = record.metrics
    result_caption(record)
    r1, r2, r3, r4 = st.columns(4)
    r1.metric("Test accuracy", fmt_acc(m.get("test_accuracy")))
    r2.metric("Validation accuracy", fmt_acc(m.get("val_accuracy")))
    r3.metric("Train accuracy", fmt_acc(m.get("train_accuracy")))
    r4.metric("Training time", fmt_seconds(m.get("seconds")))
else:
    st.info("This cut is not trained yet with these settings: press **Train this cut** (or all four).")

# -- parameters against accuracy over every stored truncation run like this one ---------------------
st.subheader("Parameters against test accuracy")
rows = []
for r in runs_like(info, cfg):
    run = r.config["run"]
    rows.append(
        {
            "who": f"ours: {r.config['dataset']['name']}, {backbone}, {cfg.image_size} px",
            "blocks removed": run.get("remove_blocks", 0),
            "parameters": r.metrics.get("backbone_params"),
            "test accuracy": r.metrics.get("test_accuracy"),
            "run": r.run_id,
            "settings": summarise_config(run),
            "current": r.run_id == run_id,
        }
    )
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
