"""Task 2: train on a few images per class and watch it overfit, beside the same run on the full set."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.study import reference as ref
from ui import handover, panel
from ui.charts import draw_curves, sweep_chart
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import PHASE_LABELS, fmt_acc, fmt_signed
from ui.jobs import Plan, live_progress, not_trained_note, submit_runs, train_panel
from ui.links import apply_page_link, link_notice, write_link
from ui.resources import lookup
from ui.settings import settings
from ui.strip import result_strip

P = "small_data"
FIELDS = ("train_per_class", "phase", "epochs", "lr")
DEFAULTS = panel.defaults(P, FIELDS, {"train_per_class": ref.SMALL_DATA["per_class"]})
PER_CLASS = panel.key(P, "train_per_class")
SWEEP = (5, 10, 25, 50, 100, None)

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
apply_page_link(P, FIELDS)
link_notice()
handover.show_loaded_extras(P)

smallest = min(info.counts()["train"].values())
with st.container(border=True):
    f1, f2, f3, f4 = st.columns([2, 1.4, 1, 1])
    panel.widget(P, "train_per_class", f1, style="slider", min_value=5, max_value=100, step=5,
                 help=f"Drawn at random (with the seed) from what is left of the training folder after the validation "
                 f"split; the smallest class has {smallest} training images before that split.")  # fmt: skip
    panel.widget(P, "phase", f2, options=["head", "head+full"], format_func=PHASE_LABELS.get)
    panel.widget(P, "epochs", f3)
    panel.widget(P, "lr", f4)

values = panel.values(P, FIELDS)
small_cfg = handover.page_config(P, {}, values)
full_cfg = handover.page_config(P, {}, {**values, "train_per_class": None})
if small_cfg is None or full_cfg is None:
    st.stop()
(small_id, small), (full_id, full) = lookup(small_cfg, s["data_root"]), lookup(full_cfg, s["data_root"])
handover.check_opened(small_id if st.session_state.get(handover.OPENED) != full_id else full_id, small_cfg)
sweep_cfgs = [small_cfg.replace(train_per_class=n) for n in SWEEP]
sweep = [lookup(c, s["data_root"]) for c in sweep_cfgs]
train_panel(P, Plan([small_cfg, full_cfg], [small_id, full_id], [small, full], label="Train both"), s["data_root"])
write_link(P, FIELDS, DEFAULTS)
live_progress(P, watch=[small_id, full_id, *(i for i, _ in sweep)])

n = int(st.session_state[PER_CLASS])
n_train = sum(info.counts()["train"].values())


def gap(record) -> float:
    return (record.metrics.get("train_accuracy") or 0) - (record.metrics.get("val_accuracy") or 0)


histories = {}
for title, rid, record in ((f"{n} images per class", small_id, small), ("the full training set", full_id, full)):
    st.subheader(title)
    if record is None:
        not_trained_note([rid], "Not trained yet with these settings: press **Train both** in the sidebar.")
        continue
    result_strip(record, previous=None if record is full or full is None else full, versus="full set", page=P)
    st.caption(f"Train − validation gap: {fmt_signed(gap(record))}.")
    histories[title] = record.history
some = small or full
if some is not None:
    m = some.metrics
    st.caption(f"Of the {n_train} images of the training folder, {m.get('n_val')} ({small_cfg.val_fraction:.0%} of "
               f"each class) are held out for validation; the full set trains on the other {full.metrics.get('n_train') if full else '…'}, "
               f"the small set on {n} per class.")  # fmt: skip
st.caption(f"The study reached {ref.SMALL_DATA['accuracy']:.3f} with {ref.SMALL_DATA['images']} training images "
           f"({ref.SMALL_DATA['per_class']} per class; {ref.SELECTION_NOTE}).")  # fmt: skip
if small is not None and full is not None:
    more = gap(small) - gap(full)
    st.markdown(f"**The small set overfits {'more' if more > 0 else 'no more'}**: its train − validation gap is "
                f"{fmt_signed(gap(small))} against {fmt_signed(gap(full))} on the full set ({fmt_signed(more)}); its "
                f"test accuracy {fmt_signed(small.metrics['test_accuracy'] - full.metrics['test_accuracy'])}.")  # fmt: skip
if histories:
    st.subheader("Learning curves, both runs")
    draw_curves(histories, key=f"{P}_curves")

st.subheader("Test accuracy against images per class")
rows = [{"images per class": nn if nn is not None else "all", "test accuracy": r.metrics.get("test_accuracy"),
         "n_train": r.metrics.get("n_train")} for nn, (_, r) in zip(SWEEP, sweep, strict=True) if r is not None]  # fmt: skip
missing = [c for c, (i, r) in zip(sweep_cfgs, sweep, strict=True) if i is not None and r is None]
if st.button(
    f"Train the sweep ({len(missing)} of {len(SWEEP)} not trained yet)",
    key=f"{P}_train_sweep",
    disabled=not missing,
    help=f"{', '.join(str(x or 'all') for x in SWEEP)} images per class, these settings.",
):
    submit_runs(P, missing, s["data_root"])
    st.rerun()
if rows:
    st.altair_chart(sweep_chart(pd.DataFrame(rows), ref.SMALL_DATA), key=f"{P}_sweep", width="stretch")
    st.caption(
        "Best of the sweep: " + fmt_acc(max(r["test accuracy"] for r in rows)) + f"; the red diamond is the study's "
        f"{ref.SMALL_DATA['accuracy']:.3f} ({ref.SMALL_DATA['per_class']} per class, DenseNet121 at 256 px)."
    )
