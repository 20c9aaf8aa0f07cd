"""Task 4: regularisation (dropout, batch norm, early stopping, reduce-LR), compared with the previous setting."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import common
from ui import reference as ref

P = "regularisation"
DEFAULTS = {
    f"{P}_dropout": 0.0,
    f"{P}_batch_norm": False,
    f"{P}_early_stopping": 0,
    f"{P}_reduce_lr_factor": 0.5,
    f"{P}_reduce_lr_patience": 0,
    f"{P}_epochs": 20,
    f"{P}_lr": 1e-3,
}
FIELDS = {
    "dropout": f"{P}_dropout",
    "batch_norm": f"{P}_batch_norm",
    "early_stopping_patience": f"{P}_early_stopping",
    "reduce_lr_factor": f"{P}_reduce_lr_factor",
    "reduce_lr_patience": f"{P}_reduce_lr_patience",
    "epochs": f"{P}_epochs",
    "lr": f"{P}_lr",
}
REG_KEYS = ("dropout", "batch_norm", "early_stopping_patience", "reduce_lr_patience", "reduce_lr_factor")

common.ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("4 · Regularisation")
st.markdown(
    "Make the head harder to overfit: drop a share of its inputs at random (dropout), normalise the pooled "
    "features (batch norm), stop when validation loss stops improving (early stopping, keeping the best "
    "epoch), or lower the learning rate when it plateaus. Each new setting is drawn over the previous one."
)
info = common.require_dataset()
s = common.settings()
common.setup_widgets(P, FIELDS, DEFAULTS)
common.show_loaded_extras(P)
ss = st.session_state

with st.form(f"{P}_form"):
    f1, f2, f3, f4 = st.columns(4)
    f1.slider("Dropout", 0.0, 0.9, step=0.05, key=f"{P}_dropout", persist_state="session",
              help="Share of the head's inputs zeroed at random while training.")
    f1.toggle("Batch norm", key=f"{P}_batch_norm", persist_state="session", help="BatchNormalization on the pooled features, before the head.")
    f2.number_input("Early-stopping patience (0 = off)", 0, 100, step=1, key=f"{P}_early_stopping",
                    persist_state="session", help="Epochs without a better validation loss before stopping.")
    f2.number_input("Epochs", 1, 500, step=1, key=f"{P}_epochs", persist_state="session")
    f3.number_input("Reduce-LR patience (0 = off)", 0, 100, step=1, key=f"{P}_reduce_lr_patience", persist_state="session")
    f3.slider("Reduce-LR factor", 0.05, 0.95, step=0.05, key=f"{P}_reduce_lr_factor", persist_state="session")
    f4.number_input("Learning rate", 1e-6, 1.0, step=1e-4, format="%.1e", key=f"{P}_lr", persist_state="session")
    submitted = f4.form_submit_button("Train", type="primary", key=f"{P}_train", icon=":material/play_arrow:")

values = {
    "dropout": round(float(ss[f"{P}_dropout"]), 4),
    "batch_norm": bool(ss[f"{P}_batch_norm"]),
    "early_stopping_patience": int(ss[f"{P}_early_stopping"]),
    "reduce_lr_patience": int(ss[f"{P}_reduce_lr_patience"]),
    "reduce_lr_factor": round(float(ss[f"{P}_reduce_lr_factor"]), 4),
    "epochs": int(ss[f"{P}_epochs"]),
    "lr": float(ss[f"{P}_lr"]),
}
cfg = common.page_config(P, {"phase": "head"}, values)
if cfg is None:
    st.stop()
run_id, record = common.lookup(cfg, s["data_root"])
if submitted and run_id:
    common.submit_runs(P, [cfg], s["data_root"])
common.track_jobs(P, watch=[run_id])
st.caption(f"Reference: {ref.STUDY}'s best was {ref.REGULARISATION_BEST['setting']} at {ref.REGULARISATION_BEST['accuracy']:.3f}.")

# the previous setting: the run shown before this one (kept for this browser session)
if record is not None and ss.get(f"{P}_shown") != record.run_id:
    if ss.get(f"{P}_shown"):
        ss[f"{P}_previous"] = ss[f"{P}_shown"]
    ss[f"{P}_shown"] = record.run_id
previous = common.get_store().load_run(ss[f"{P}_previous"]) if ss.get(f"{P}_previous") else None
if record is not None and previous is not None and previous.run_id == record.run_id:
    previous = None

if record is None:
    st.info("Not trained yet with these settings: press **Train**.")
else:
    m = record.metrics
    common.result_caption(record)
    c = st.columns(5)
    pm = previous.metrics if previous is not None else {}

    def delta(key: str) -> str | None:
        if previous is None or m.get(key) is None or pm.get(key) is None:
            return None
        return f"{m[key] - pm[key]:+.3f} vs previous"

    c[0].metric("Test accuracy", common.fmt_acc(m.get("test_accuracy")), delta=delta("test_accuracy"))
    c[1].metric("Validation accuracy", common.fmt_acc(m.get("val_accuracy")), delta=delta("val_accuracy"))
    c[2].metric("Train accuracy", common.fmt_acc(m.get("train_accuracy")), delta=delta("train_accuracy"), delta_color="off")
    c[3].metric("Epochs run", m.get("epochs_run"), help=f"kept epoch {m.get('kept_epoch')}")
    c[4].metric("Training time", common.fmt_seconds(m.get("seconds")))
    histories = {f"current: {common.summarise_config(record.config['run'])}": record.history}
    if previous is not None:
        histories[f"previous: {common.summarise_config(previous.config['run'])}"] = previous.history
        st.caption(f"Previous: {common.result_line(previous)}")
    st.altair_chart(common.curves_chart(histories), key=f"{P}_curves")

# -- every stored head run like this one: which regularisation did best ---------------------------------
st.subheader("Stored head runs on this dataset")
rows = []
for r in common.runs_like(info, cfg):
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
