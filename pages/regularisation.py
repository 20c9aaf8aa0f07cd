"""Task 4: the learning-curve tools (dropout, batch norm, early stopping, reduce-LR), still on the small set."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.config import AugmentConfig, RunConfig
from core.study import reference as ref
from core.study.plan import SMALL, STUDY_BEST_AUG, regularisation_configs
from ui import handover, panel
from ui.charts import chain_chart, draw_curves
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.findings import finding
from ui.format import run_name, summarise_config
from ui.jobs import Plan, live_progress, not_trained_note, submit_runs, train_panel
from ui.links import apply_page_link, link_notice, write_link
from ui.resources import get_store, lookup, runs_like
from ui.settings import settings
from ui.strip import result_strip

P = "regularisation"
REG_KEYS = ("dropout", "batch_norm", "early_stopping_patience", "reduce_lr_patience", "reduce_lr_factor")
FIELDS = (*REG_KEYS, "train_per_class", "epochs", "lr", "aug_copies")
STUDY_REG = {k: getattr(regularisation_configs(RunConfig())[0], k) for k in REG_KEYS}  # the study's best setting
DEFAULTS = {**panel.defaults(P, FIELDS, {**STUDY_REG, "train_per_class": SMALL}), f"{P}_best_aug": True}
PLAIN = {
    "dropout": 0.0,
    "batch_norm": False,
    "early_stopping_patience": 0,
    "reduce_lr_patience": 0,
    "reduce_lr_factor": RunConfig().reduce_lr_factor,
}  # no regulariser
TRAINING_SETS = {SMALL: f"the small set ({SMALL} per class, the study's)", None: "every training image"}

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("4 · Regularisation")
st.markdown(
    "The study's last step against overfitting, on top of augmentation: drop a share of the head's inputs at "
    "random (dropout), normalise the pooled features (batch norm), stop when validation loss stops improving "
    "(early stopping, keeping the best epoch), or lower the learning rate when it plateaus. Each new setting is "
    "drawn over the previous one."
)
info = require_dataset()
s = settings()
loaded = handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
if loaded is not None:  # an opened run: its augmentation is the toggle's (none or the study's best)
    ss_extra = st.session_state.get(f"{P}_extra") or {}
    st.session_state[f"{P}_best_aug"] = bool(any((ss_extra.pop("augment", None) or {}).values()))
apply_page_link(P, FIELDS)
link_notice()
handover.show_loaded_extras(P)
ss = st.session_state

with st.container(border=True):
    f1, f2, f3, f4 = st.columns(4)
    panel.widget(P, "dropout", f1, style="slider")
    panel.widget(P, "batch_norm", f1)
    panel.widget(P, "early_stopping_patience", f2)
    panel.widget(P, "epochs", f2)
    panel.widget(P, "reduce_lr_patience", f3)
    panel.widget(P, "reduce_lr_factor", f3, style="slider", disabled=not ss[panel.key(P, "reduce_lr_patience")])
    panel.widget(P, "lr", f4)
    panel.bind(
        panel.key(P, "train_per_class"), f4.radio, "Training set", list(TRAINING_SETS), format_func=TRAINING_SETS.get
    )
    panel.bind(
        f"{P}_best_aug",
        f4.toggle,
        "Best augmentation",
        help=f"The study's best augmentation ({ref.AUGMENTATION_BEST['setting']}, page 3) under these settings, "
        "as the study did.",
    )
    panel.widget(P, "aug_copies", f1, disabled=not ss[f"{P}_best_aug"])

values = panel.values(P, FIELDS, rounding=4)
values["augment"] = STUDY_BEST_AUG if ss[f"{P}_best_aug"] else AugmentConfig()
if not values["reduce_lr_patience"]:
    values["reduce_lr_factor"] = DEFAULTS[panel.key(P, "reduce_lr_factor")]  # off: the factor is not part of the run
cfg = handover.page_config(P, {"phase": "head"}, values)
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
handover.check_opened(run_id, cfg)
chain_cfgs = [cfg.replace(augment=AugmentConfig(), **PLAIN), cfg.replace(**PLAIN)]
study_cfgs = [
    c.replace(train_per_class=cfg.train_per_class, augment=cfg.augment) for c in regularisation_configs(chain_cfgs[0])
]
chain = [lookup(c, s["data_root"]) for c in chain_cfgs]
train_panel(P, Plan([cfg], [run_id], [record]), s["data_root"])
write_link(P, FIELDS, DEFAULTS)
live_progress(P, watch=[run_id])
st.caption(f"The study's best was {ref.REGULARISATION_BEST['setting']} at {ref.REGULARISATION_BEST['accuracy']:.3f} "
           f"({ref.SELECTION_NOTE}).")  # fmt: skip
finding_area = st.container()  # one sentence from the stored runs, filled below

# the previous setting: the run shown before this one (kept for this browser session)
if record is not None and ss.get(f"{P}_shown") != record.run_id:
    if ss.get(f"{P}_shown"):
        ss[f"{P}_previous"] = ss[f"{P}_shown"]
    ss[f"{P}_shown"] = record.run_id
previous = get_store().load_run(ss[f"{P}_previous"]) if ss.get(f"{P}_previous") else None
if record is not None and previous is not None and previous.run_id == record.run_id:
    previous = None

if record is None:
    not_trained_note([run_id], "Not trained yet with these settings: press **Train** in the sidebar.")
else:
    result_strip(record, previous=previous, page=P)
    histories = {f"current: {run_name(record.config['run'])}": record.history}
    if previous is not None:
        histories[f"previous: {run_name(previous.config['run'])}"] = previous.history
    draw_curves(histories, key=f"{P}_curves")

st.subheader("The study's chain: small set, + augmentation, + regularisation")
steps = [("small set", chain[0][1], ref.SMALL_DATA["accuracy"]), ("+ augmentation", chain[1][1], ref.AUGMENTATION_BEST["accuracy"]),
         ("+ these settings", record, ref.REGULARISATION_BEST["accuracy"])]  # fmt: skip
rows = [
    {"step": name, "who": "ours", "test accuracy": r.metrics.get("test_accuracy")}
    for name, r, _ in steps
    if r is not None
]
rows += [{"step": name, "who": "the study", "test accuracy": acc} for name, _, acc in steps]
st.altair_chart(chain_chart(pd.DataFrame(rows), [name for name, _, _ in steps]), key=f"{P}_chain", width="stretch")
these = {k: v for k, v in cfg.to_dict().items() if k != "phase"}
st.caption(f"These settings: {summarise_config(these, chain_cfgs[1].to_dict())}. The study's bars are its "
           f"published figures (DenseNet121, 256 px; {ref.SELECTION_NOTE}).")  # fmt: skip
if any(r is None for _, r, _ in steps[:2]):
    st.caption(
        "Train the small set on page 2 and its augmentation on page 3 (or reproduce the study) to fill the chain."
    )

st.subheader("Stored runs on this training set")
looked = [lookup(c, s["data_root"]) for c in study_cfgs]
todo = [c for c, (i, r) in zip(study_cfgs, looked, strict=True) if i is not None and r is None]
if st.button(f"Train the study's regularisers ({len(todo)} of {len(study_cfgs)} not trained yet)", key=f"{P}_train_study",
             disabled=not todo, help="Dropout 0.5, batch norm, early stopping, reduce-LR, alone and together, with "
             "this training set, augmentation, epochs and learning rate."):  # fmt: skip
    submit_runs(P, todo, s["data_root"])
    st.rerun()
rows, named = [], []
alone = chain_cfgs[1].to_dict()
for r in runs_like(info, cfg):
    run = r.config["run"]
    if run.get("phase") != "head" or run.get("train_per_class") != cfg.train_per_class:
        continue
    rows.append({"run": run_name(run), "test accuracy": r.metrics.get("test_accuracy"),
                 "validation accuracy": r.metrics.get("val_accuracy"), "train accuracy": r.metrics.get("train_accuracy"),
                 "epochs run": r.metrics.get("epochs_run"), "id": r.run_id})  # fmt: skip
    if run.get("augment") == alone["augment"] and any(run.get(k) != alone[k] for k in PLAIN):
        named.append((summarise_config({k: v for k, v in run.items() if k != "phase"}, alone), r))
finding_area.markdown(finding("regulariser", named, ("augmentation alone" if cfg.augment != AugmentConfig() else
                              "no regulariser", chain[1][1]), "Train the study's regularisers (button below) and the "
                              "same run without them to see which regulariser helps on this data."))  # fmt: skip
if rows:
    st.dataframe(pd.DataFrame(rows).sort_values("validation accuracy", ascending=False), key=f"{P}_table",
                 hide_index=True, width="stretch", column_config={
                     "run": st.column_config.TextColumn(width="large"),
                     **{c: st.column_config.NumberColumn(format="%.3f") for c in ("test accuracy", "validation accuracy",
                                                                                  "train accuracy")}})  # fmt: skip
    st.caption("Sorted by validation accuracy, which is what SceneLab chooses on.")
else:
    st.caption("No head run is stored yet on this training set for this dataset, backbone and image size.")
