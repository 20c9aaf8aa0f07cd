"""The study, reproduced as a whole: its table beside ours, one button to fill it, links to every row's page."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import reference as ref
from core import reproduce
from core.bundled import is_bundled
from core.studyplan import DEFAULT_GRID_SAMPLE
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import fmt_eta
from ui.resources import get_store
from ui.settings import base_config, settings
from ui.study import cancel_reproduction, known_estimate, reproduction_status, start_reproduction, table_frame

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("The study, reproduced")
st.markdown(
    "A classic transfer-learning study fine-tuned **DenseNet121** (ImageNet weights) on the **MIT 8-scene** "
    "dataset in six steps: fine-tune (0), truncate (1), small data (2), augmentation (3) and regularisation (4) "
    "against its overfitting, a hyperparameter search (5). Each row below is one of its results beside yours, "
    "trained on this machine; each opens its page with those settings."
)
info = require_dataset()
s = settings()
base = base_config()
store = get_store()
ss = st.session_state
ss.setdefault("study_trials", reproduce.DEFAULT_TRIALS)
ss.setdefault("study_grid", DEFAULT_GRID_SAMPLE)

size_note = "64 px (the bundled copy)" if is_bundled(info.root) else f"{info.root.name}"
st.info(
    f"**What differs from the study.** Data: {size_note}, resized to {s['image_size']} px (the study: 256 px "
    f"originals). Backbone: {base.backbone} (the study: DenseNet121). Selection: the study picked its models on "
    "its test folder; here early stopping and the search look only at a validation split carved from the training "
    "folder, and test accuracy is the figure. Tasks 3 and 4 run on the small set (50 per class), as the study did."
)

rows = reproduce.plan(base, int(ss["study_grid"]))
results = reproduce.table(base, s["data_root"], store, trials=int(ss["study_trials"]), grid_sample=int(ss["study_grid"]))
status = reproduction_status()
running = status is not None and status.status == "running"

c1, c2, c3 = st.columns([1, 1, 2])
c1.number_input("Search trials", min_value=0, max_value=200, step=5, key="study_trials", disabled=running,
                help=f"Task 5: the study ran {ref.SWEEP['trials']}; 0 leaves the search out.")  # fmt: skip
c2.number_input("Augmentation grid points", min_value=2, max_value=128, step=1, key="study_grid", disabled=running,
                help="A seeded sample of the study's 128-point grid (task 3).")  # fmt: skip
missing = sum(r.runs - r.done for r in results)
with c3:
    if running:
        p = status.progress
        label = "search trials" if p.get("event") == "search" else "runs"
        done, total = int(p.get("done") or 0), int(p.get("total") or 1)
        st.progress(min(1.0, done / max(1, total)), text=f"Reproducing: {done} of {total} {label}")
        st.button("Cancel the reproduction", key="study_cancel", on_click=cancel_reproduction,
                  help="Stops after the run in progress; finished rows are kept.")
    else:
        estimate = known_estimate(base, s["data_root"], store, int(ss["study_trials"]), int(ss["study_grid"]))
        note = (f"about {fmt_eta(estimate)} on this machine" if estimate is not None
                else "the time is estimated from this machine's speed when you start")  # fmt: skip
        if estimate is not None and estimate > 2 * 3600:
            note += " (hours: a smaller backbone or image size in the sidebar is far quicker)"
        if st.button("Reproduce the study", key="study_reproduce", type="primary", disabled=missing == 0,
                     icon=":material/play_arrow:", help="Trains every missing run, cheapest first, then the search."):
            start_reproduction(base, s["data_root"], store, int(ss["study_trials"]), int(ss["study_grid"]))
            st.rerun()
        st.caption(f"{missing} runs and search trials missing: {note}." if missing else "Every row is stored.")
        if status is not None and status.status == "failed":
            st.error(status.error)
        elif status is not None and status.status == "cancelled":
            st.warning("The reproduction was cancelled; finished rows are kept.")


@st.fragment(run_every=2.0 if running else None)
def study_table() -> None:
    fresh = reproduce.table(base, s["data_root"], store, trials=int(ss["study_trials"]), grid_sample=int(ss["study_grid"]))
    frame = table_frame(fresh, rows)
    numbers = {"the study": "{:.3f}", "ours (test)": "{:.3f}", "ours (validation)": "{:.3f}", "seconds": "{:.0f}"}
    shown = frame.copy()  # as text: Streamlit draws a missing number as "None" whatever the Styler says
    for col, fmt in numbers.items():
        shown[col] = [("–" if pd.isna(v) else fmt.format(v)) for v in frame[col]]
    st.dataframe(
        shown, key="study_table", column_order=["task", "setting", "page", "the study", "ours (test)", "ours (validation)",
                                                "status", "seconds", "run"], hide_index=True, width="stretch", height=36 * (len(frame) + 1) + 4,
        column_config={
            "task": st.column_config.TextColumn(width="small"),
            "setting": st.column_config.TextColumn(width="large"),
            "the study": st.column_config.TextColumn(help=f"Its published figure ({ref.SELECTION_NOTE})."),
            "status": st.column_config.TextColumn(width="small"),
            "run": st.column_config.TextColumn(width="medium"),
            "page": st.column_config.LinkColumn("page", display_text="open", width="small",
                                                help="The page that shows this row's run, with its settings."),
        },
    )
    done = sum(r.cached for r in fresh)
    st.caption(f"{done} of {len(fresh)} rows stored · dataset {info.root.name} · {base.backbone} "
               f"({base.weights} weights) · {s['image_size']} px · seed {s['seed']}"
               f"{' · test-time flip' if base.tta else ''}. The same table: `python -m core reproduce --json`.")  # fmt: skip
    now = reproduction_status()
    if running and (now is None or now.status != "running"):
        st.rerun()  # the reproduction ended: the whole page, with its buttons back


study_table()
