"""Task 1: cut blocks off the backbone; parameters against accuracy, beside the study's."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import SceneLabError
from core.models.backbones import get_backbone
from core.models.counts import describe_cached
from core.study import reference as ref
from ui import handover, panel
from ui.charts import truncation_chart
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import PHASE_LABELS, fmt_acc, fmt_signed
from ui.jobs import Plan, live_progress, not_trained_note, submit_runs, train_panel
from ui.links import apply_page_link, link_notice, write_link
from ui.resources import get_store, lookup
from ui.settings import settings
from ui.strip import result_strip

P = "truncate"
FIELDS = ("remove_blocks", "dense_1024", "phase", "epochs", "lr")
DEFAULTS = panel.defaults(P, FIELDS)


@st.cache_data(max_entries=64, show_spinner="Counting parameters…")
def param_counts(backbone: str, remove_blocks: int, dense_1024: bool, classes: int, image_size: int) -> dict:
    """Parameter counts of the classifier (weights are never loaded; a few seconds the first time)."""
    return describe_cached(get_store().root, backbone, remove_blocks, classes=classes, dense_1024=dense_1024,
                           image_size=image_size)  # fmt: skip


ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("1 · Truncate the backbone")
st.markdown(
    "A network pretrained on ImageNet ends in its most object-specific features. Cut whole blocks off its end "
    "and train a head on what is left: far fewer parameters, and see how much accuracy each block is worth."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
apply_page_link(P, FIELDS)
link_notice()
handover.show_loaded_extras(P)
ss = st.session_state
spec = get_backbone(s["backbone"])

with st.container(border=True):
    a1, a2, a3, a4 = st.columns([2, 1.2, 1.2, 1])
    panel.widget(
        P,
        "remove_blocks",
        a1,
        style="slider",
        max_value=spec.blocks - 1,
        help=f"Blocks cut off the end of the backbone; a block of {spec.label} is a {spec.block_word}.",
    )
    panel.widget(P, "dense_1024", a2)
    panel.widget(P, "phase", a2, options=["head", "head+full"], format_func=PHASE_LABELS.get)
    panel.widget(P, "epochs", a3)
    panel.widget(P, "lr", a4)
remove, dense = int(ss[panel.key(P, "remove_blocks")]), bool(ss[panel.key(P, "dense_1024")])

try:
    counts = param_counts(spec.name, remove, dense, len(info.classes), s["image_size"])
except SceneLabError as exc:
    st.error(str(exc))
    st.stop()

cfg = handover.page_config(P, {}, panel.values(P, FIELDS))
if cfg is None:
    st.stop()
cuts = [cfg.replace(remove_blocks=k) for k in range(spec.blocks)]
looked_up = [lookup(c, s["data_root"]) for c in cuts]
run_id, record = looked_up[remove]
handover.check_opened(run_id, cfg)
train_panel(P, Plan([cfg], [run_id], [record]), s["data_root"])
write_link(P, FIELDS, DEFAULTS)
live_progress(P, watch=[i for i, _ in looked_up])

m1, m2, m3, m4 = st.columns(4)
m1.metric("Backbone parameters", f"{counts['backbone_params']:,}")
m2.metric("Head parameters", f"{counts['head_params']:,}")
m3.metric("Total parameters", f"{counts['params_total']:,}")
kept = spec.blocks - remove
m4.metric("Blocks kept", f"{kept} of {spec.blocks}",
          help=f"The network ends after its {spec.block_word} {kept} (layer `{counts['cut_layer']}`); feature map "
          f"there: {' x '.join(map(str, counts['feature_shape']))} at {s['image_size']} px.")  # fmt: skip
study_params, study_acc = (ref.TRUNCATION_DENSE if dense and remove else ref.TRUNCATION)[remove]
st.caption(f"The study's DenseNet121, {ref.TRUNCATION_LABELS[remove]}{' with Dense(1024)' if dense else ''}: "
           f"{study_params / 1e6:.2g}M parameters, {study_acc:.3f} ({ref.SELECTION_NOTE}).")  # fmt: skip
missing = [c for c, (i, r) in zip(cuts, looked_up, strict=True) if i is not None and r is None]
if st.button(
    f"Train every cut ({len(missing)} not trained yet)",
    key=f"{P}_train_all",
    disabled=not missing,
    help="Queues the cuts not trained yet with these settings; each shows here as it finishes.",
):
    submit_runs(P, missing, s["data_root"])
    st.rerun()

if record is not None:
    result_strip(record, page=P)
else:
    not_trained_note(
        [run_id],
        "This cut is not trained yet with these settings: press **Train** in the sidebar (or train every cut).",
    )

# -- the trade-off: one point per cut, these training settings, beside the study's ---------------------
st.subheader("Parameters against test accuracy")
rows = []
whole = looked_up[0][1]
for k, (rid, r) in enumerate(looked_up):
    if r is None:
        continue
    acc = r.metrics.get("test_accuracy")
    base = whole.metrics.get("test_accuracy") if whole is not None else None
    rows.append({"who": f"ours ({spec.label}, {s['image_size']} px)", "blocks removed": k,
                 "parameters": r.metrics.get("backbone_params"), "test accuracy": acc, "run": rid,
                 "change": None if base is None or acc is None else acc - base})  # fmt: skip
study = ref.TRUNCATION_DENSE if dense else ref.TRUNCATION
for k, (params, acc) in study.items():
    rows.append({"who": "the study (DenseNet121, 256 px)", "blocks removed": k, "parameters": params,
                 "test accuracy": acc, "run": "study", "change": acc - ref.TRUNCATION[0][1]})  # fmt: skip
df = pd.DataFrame(rows)
st.altair_chart(truncation_chart(df), key=f"{P}_chart", width="stretch")
table = df.assign(cut=df["blocks removed"].map(ref.TRUNCATION_LABELS))[
    ["who", "cut", "parameters", "test accuracy", "change"]
]
st.dataframe(
    table.style.format({"change": fmt_signed}),  # the real minus sign (a column format would print a hyphen)
    key=f"{P}_table",
    hide_index=True,
    width="stretch",
    column_config={
        "who": st.column_config.TextColumn("network"),
        "parameters": st.column_config.NumberColumn("backbone parameters", format="%,d"),
        "test accuracy": st.column_config.NumberColumn(format="%.3f"),
        "change": st.column_config.NumberColumn("change against no blocks removed"),
    },
)
st.caption("Ours: the runs with the settings above, one per cut; the study's as published "
              f"({ref.SELECTION_NOTE}). Best of ours: {fmt_acc(df[df['run'] != 'study']['test accuracy'].max()) if (df['run'] != 'study').any() else '–'}.")  # fmt: skip
