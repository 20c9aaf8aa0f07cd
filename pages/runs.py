"""Every stored run in one table: compare curves, download a model or a config, reopen a run in its page."""

from __future__ import annotations

import json

import streamlit as st

from ui import handover
from ui.charts import curves_chart
from ui.compat import ensure_router
from ui.downloads import export_buttons
from ui.format import fmt_acc, result_caption, runs_table, summarise_config
from ui.resources import all_runs
from ui.settings import settings

P = "runs"
FIRST_COLUMNS = [
    "run_id", "dataset", "backbone", "weights", "image_size", "phase", "test_accuracy", "val_accuracy",
    "train_accuracy", "epochs_run", "seconds", "remove_blocks", "train_per_class", "dropout", "batch_norm",
]

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("Runs")
st.markdown("Every run trained so far, from any page. Select rows to compare their learning curves and to download them.")
s = settings()
records = all_runs()
if not records:
    st.info(f"No run is stored yet in `{s['artifacts']}`. Train one on any page; it appears here.")
    st.stop()

table = runs_table(records)
datasets = sorted(d for d in table["dataset"].dropna().unique())
f1, f2 = st.columns([1, 3])
choice = f1.selectbox("Dataset", ["All datasets", *datasets], key=f"{P}_dataset")
if choice != "All datasets":
    table = table[table["dataset"] == choice]
table = table.sort_values("created", ascending=False).reset_index(drop=True)
columns = [c for c in FIRST_COLUMNS if c in table.columns] + [c for c in table.columns if c not in FIRST_COLUMNS]
f2.caption(f"{len(table)} run(s) in `{s['artifacts']}`; click a column header to sort, tick rows to select.")
event = st.dataframe(
    table[columns],
    key=f"{P}_table",
    on_select="rerun",
    selection_mode="multi-row",
    hide_index=True,
    column_config={
        "test_accuracy": st.column_config.NumberColumn("test acc", format="%.3f"),
        "val_accuracy": st.column_config.NumberColumn("val acc", format="%.3f"),
        "train_accuracy": st.column_config.NumberColumn("train acc", format="%.3f"),
        "seconds": st.column_config.NumberColumn("seconds", format="%.0f"),
        "lr": st.column_config.NumberColumn("lr", format="%.1e"),
    },
)
selected_rows = list(event.selection.rows) if event is not None else []
by_id = {r.run_id: r for r in records}
selected = [by_id[table.iloc[i]["run_id"]] for i in selected_rows if table.iloc[i]["run_id"] in by_id]
if not selected:
    st.caption("Select two runs to compare their curves.")
    st.stop()

st.subheader("Learning curves")
if len(selected) == 1:
    st.caption("Select a second run to overlay its curves.")
labels = {}
for r in selected:
    labels[f"{r.run_id} ({summarise_config(r.config.get('run', {}))})"[:90]] = r.history
st.altair_chart(curves_chart(labels), key=f"{P}_curves")

st.subheader("Selected runs")
for r in selected:
    with st.container(border=True):
        result_caption(r)
        m = r.metrics
        st.markdown(
            f"test **{fmt_acc(m.get('test_accuracy'))}** · validation {fmt_acc(m.get('val_accuracy'))} · "
            f"train {fmt_acc(m.get('train_accuracy'))} · {m.get('epochs_run')} epochs · "
            f"{summarise_config(r.config.get('run', {}))}"
        )
        b1, b2, b3 = st.columns(3)
        b1.download_button(
            "Config (JSON)",
            data=json.dumps(r.config, indent=2, sort_keys=True),
            file_name=f"scenelab-{r.run_id}.json",
            mime="application/json",
            key=f"{P}_config_{r.run_id}",
            icon=":material/download:",
        )
        export_buttons(r, b2)
        if b3.button("Open in its page", key=f"{P}_open_{r.run_id}", icon=":material/open_in_new:"):
            handover.load_config(r.config.get("run", {}))
