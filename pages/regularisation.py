"""Task 4: regularisation (dropout, batch norm, early stopping, reduce-LR), compared with the previous setting."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import handover, panel
from ui import reference as ref
from ui.charts import curves_chart
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import fmt_acc, fmt_seconds, result_caption, result_line, summarise_config
from ui.jobs import submit_runs, track_jobs
from ui.resources import get_store, lookup, runs_like
from ui.settings import settings

P = "regularisation"
REG_KEYS = ("dropout", "batch_norm", "early_stopping_patience", "reduce_lr_patience", "reduce_lr_factor")
FIELDS = (*REG_KEYS, "epochs", "lr")
DEFAULTS = panel.defaults(P, FIELDS)

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("4 · Regularisation")
st.markdown(
    "Make the head harder to overfit: drop a share of its inputs at random (dropout), normalise the pooled "
    "features (batch norm), stop when validation loss stops improving (early stopping, keeping the best "
    "epoch), or lower the learning rate when it plateaus. Each new setting is drawn over the previous one."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
handover.show_loaded_extras(P)
ss = st.session_state

with st.form(f"{P}_form"):
    f1, f2, f3, f4 = st.columns(4)
    panel.widget(P, "dropout", f1, style="slider")
    panel.widget(P, "batch_norm", f1)
    panel.widget(P, "early_stopping_patience", f2, label="Early-stopping patience (0 = off)",
                 help="Epochs without a better validation loss before stopping.")
    panel.widget(P, "epochs", f2, help=None)
    panel.widget(P, "reduce_lr_patience", f3, label="Reduce-LR patience (0 = off)", help=None)
    panel.widget(P, "reduce_lr_factor", f3, style="slider", help=None)
    panel.widget(P, "lr", f4, help=None)
    submitted = f4.form_submit_button("Train", type="primary", key=f"{P}_train", icon=":material/play_arrow:")

values = panel.values(P, REG_KEYS, rounding=4) | panel.values(P, ("epochs", "lr"))
cfg = handover.page_config(P, {"phase": "head"}, values)
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
if submitted and run_id:
    submit_runs(P, [cfg], s["data_root"])
track_jobs(P, watch=[run_id])
st.caption(f"Reference: {ref.STUDY}'s best was {ref.REGULARISATION_BEST['setting']} at {ref.REGULARISATION_BEST['accuracy']:.3f}.")

# the previous setting: the run shown before this one (kept for this browser session)
if record is not None and ss.get(f"{P}_shown") != record.run_id:
    if ss.get(f"{P}_shown"):
        ss[f"{P}_previous"] = ss[f"{P}_shown"]
    ss[f"{P}_shown"] = record.run_id
previous = get_store().load_run(ss[f"{P}_previous"]) if ss.get(f"{P}_previous") else None
if record is not None and previous is not None and previous.run_id == record.run_id:
    previous = None

if record is None:
    st.info("Not trained yet with these settings: press **Train**.")
else:
    m = record.metrics
    result_caption(record)
    c = st.columns(5)
    pm = previous.metrics if previous is not None else {}

    def delta(key: str) -> str | None:
        if previous is None or m.get(key) is None or pm.get(key) is None:
            return None
        return f"{m[key] - pm[key]:+.3f} vs previous"

    c[0].metric("Test accuracy", fmt_acc(m.get("test_accuracy")), delta=delta("test_accuracy"))
    c[1].metric("Validation accuracy", fmt_acc(m.get("val_accuracy")), delta=delta("val_accuracy"))
    c[2].metric("Train accuracy", fmt_acc(m.get("train_accuracy")), delta=delta("train_accuracy"), delta_color="off")
    c[3].metric("Epochs run", m.get("epochs_run"), help=f"kept epoch {m.get('kept_epoch')}")
    c[4].metric("Training time", fmt_seconds(m.get("seconds")))
    histories = {f"current: {summarise_config(record.config['run'])}": record.history}
    if previous is not None:
        histories[f"previous: {summarise_config(previous.config['run'])}"] = previous.history
        st.caption(f"Previous: {result_line(previous)}")
    st.altair_chart(curves_chart(histories), key=f"{P}_curves")

# -- every stored head run like this one: which regularisation did best ---------------------------------
st.subheader("Stored head runs on this dataset")
rows = []
for r in runs_like(info, cfg):
    run = r.config["run"]
    if run.get("phase") != "head" or any((run.get("augment") or {}).values()) or run.get("train_per_class") is not None:
        continue
    rows.append(
        {
            **{k: run.get(k) for k in REG_KEYS},
            "epochs": run.get("epochs"),
            "lr": run.get("lr"),
            "test_accuracy": r.metrics.get("test_accuracy"),
            "val_accuracy": r.metrics.get("val_accuracy"),
            "train_accuracy": r.metrics.get("train_accuracy"),
            "epochs_run": r.metrics.get("epochs_run"),
            "run_id": r.run_id,
        }
    )
if rows:
    table = pd.DataFrame(rows).sort_values("test_accuracy", ascending=False)
    st.dataframe(
        table.style.highlight_max(subset=["test_accuracy"], color="#c8f7c5").format(
            {"test_accuracy": "{:.3f}", "val_accuracy": "{:.3f}", "train_accuracy": "{:.3f}", "lr": "{:.1e}",
             "dropout": "{:.2f}", "reduce_lr_factor": "{:.2f}"}, na_rep="–"
        ),
        key=f"{P}_table",
        hide_index=True,
    )
else:
    st.caption("No head run is stored yet for this dataset, backbone and image size.")
