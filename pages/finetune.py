"""Task 0: fine-tune a pretrained network, head first and then the whole network; inspect its mistakes."""

from __future__ import annotations

import streamlit as st

from core.study import reference as ref
from ui import handover, panel
from ui.analysis import error_analysis
from ui.charts import draw_curves
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import PHASE_LABELS
from ui.jobs import Plan, live_progress, not_trained_note, train_panel
from ui.links import apply_page_link, link_notice, write_link
from ui.resources import lookup
from ui.settings import settings
from ui.strip import result_strip

P = "finetune"
FIELDS = ("phase", "epochs", "full_epochs", "lr", "full_lr", "optimizer", "batch_size", "freeze_blocks")
DEFAULTS = panel.defaults(P, FIELDS, {"phase": "head+full", "full_epochs": 2})

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("0 · Fine-tune")
st.markdown(
    "Train a new classification head on the frozen ImageNet backbone, then unfreeze the whole network and "
    "train it a little more at a tenth of the learning rate (BatchNorm stays frozen). Test accuracy is the "
    "final figure; early stopping and model choice only ever look at the validation split."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
apply_page_link(P, FIELDS)
link_notice()
handover.show_loaded_extras(P)
ss = st.session_state

with st.container(border=True):
    c1, c2, c3, c4 = st.columns([2.2, 1, 1, 1])
    panel.widget(P, "phase", c1, format_func=PHASE_LABELS.get, options=list(PHASE_LABELS))
    panel.widget(P, "optimizer", c1, style="select")
    both = ss[panel.key(P, "phase")] == "head+full"
    panel.widget(P, "freeze_blocks", c1, disabled=ss[panel.key(P, "phase")] == "head")
    panel.widget(P, "epochs", c2)
    panel.widget(P, "full_epochs", c2, disabled=not both)
    panel.widget(P, "lr", c3)
    lr = float(ss[panel.key(P, "lr")])
    panel.widget(
        P,
        "full_lr",
        c3,
        disabled=not both,
        help=f"Learning rate of the whole-network phase; {lr / 10:.1e}, "
        "a tenth of the learning rate, unless you change it.",
        from_value=lambda v: lr / 10 if v is None else v,
        to_value=lambda v: None if v is None or abs(v - lr / 10) <= 1e-12 else v,
    )
    panel.widget(P, "batch_size", c4)

values = panel.values(P, FIELDS)
phase = values["phase"]
if phase != "head+full":  # the whole-network settings only matter to head+full: keep them out of other runs' id
    values["full_epochs"] = values["full_lr"] = None
values["freeze_blocks"] = (values["freeze_blocks"] or 0) if phase != "head" else 0
cfg = handover.page_config(P, {}, values)
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
handover.check_opened(run_id, cfg)
train_panel(P, Plan([cfg], [run_id], [record]), s["data_root"])
write_link(P, FIELDS, DEFAULTS)
live_progress(P, watch=[run_id])

st.caption(
    f"The study ({ref.STUDY_MODEL}) reached train {ref.FINETUNE['train_accuracy']:.3f} / validation "
    f"{ref.FINETUNE['val_accuracy']:.3f}; its validation set was MIT_split's test folder, so set it beside our "
    "test accuracy."
)
if record is None:
    not_trained_note(
        [run_id],
        "Not trained yet with these settings. Press **Train** in the sidebar; it runs in "
        "the background, so you can keep exploring.",
    )
    st.stop()

result_strip(record, page=P)
draw_curves({record.run_id: record.history}, key=f"{P}_curves")
error_analysis(P, record, s["data_root"])
