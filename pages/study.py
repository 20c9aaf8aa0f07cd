"""The study, reproduced as a whole: its table beside ours (backbone frozen and fine-tuned), one button to fill
it, how sure each figure is, and whether the study's conclusions hold here."""

from __future__ import annotations

import streamlit as st

from core.data.bundled import is_bundled
from core.study import reference as ref
from core.study import reproduce
from core.study.plan import DEFAULT_GRID_SAMPLE, MODE_LABELS, MODES
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import fmt_eta
from ui.links import apply_page_link, link_notice
from ui.resources import get_store
from ui.settings import base_config, settings
from ui.study import (
    DEFAULT_REPEATS,
    best_model_frame,
    cached_estimate,
    cached_table,
    cancel_reproduction,
    claims_frame,
    differences,
    may_cancel,
    measure_speed,
    measuring,
    progress_counts,
    reproduction_status,
    start_reproduction,
    started_by,
    table_frame,
    training_where,
)

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
apply_page_link("study", ())  # the shared settings of a link (size, backbone...); this page has no others
st.title("The study, reproduced")
link_notice()  # e.g. ?size=9999: one sentence, the rest of the link applied
st.markdown(
    "A classic transfer-learning study fine-tuned **DenseNet121** (ImageNet weights) on the **MIT 8-scene** "
    "dataset in six steps: fine-tune (0), truncate (1), small data (2), augmentation (3) and regularisation (4) "
    "against its overfitting, a hyperparameter search (5). Each row below is one of its results beside yours, "
    "trained on this machine twice over: with the **backbone frozen** (a new head only: quick) and **fine-tuned** "
    "as the study did (the head, then the network: faithful). Each row opens its page with those settings."
)
info = require_dataset()
s = settings()
base = base_config()
store = get_store()
ss = st.session_state
ss.setdefault("study_mode", "faithful")
ss.setdefault("study_trials", reproduce.DEFAULT_TRIALS)
ss.setdefault("study_grid", DEFAULT_GRID_SAMPLE)
for m in MODES:
    ss.setdefault(f"study_repeats_{m}", DEFAULT_REPEATS[m])
status = reproduction_status()
running = status is not None and status.status == "running"


def plan_for(mode: str) -> reproduce.Plan:
    return reproduce.Plan(mode=mode, repeats=int(ss[f"study_repeats_{mode}"]), grid_sample=int(ss["study_grid"]),
                          trials=int(ss["study_trials"]))  # fmt: skip


source = "64 px (the bundled copy)" if is_bundled(info.root) else info.root.name
with st.expander("**What differs from the study**", expanded=False):
    st.markdown(differences(base, source, s["image_size"]))

c1, c2, c3, c4 = st.columns([1.3, 1, 1, 1])
c1.radio("Reproduce", list(MODES), key="study_mode", horizontal=True, disabled=running,
         format_func=lambda m: f"{m} ({MODE_LABELS[m]})",
         help="quick: a new head on the frozen backbone (task 0 fine-tunes the whole network for 2 epochs); "
              "faithful: every row as the study did it, the head and then the network's last block fine-tuned.")  # fmt: skip
mode = ss["study_mode"]
c2.number_input("Seeds per row", min_value=1, max_value=10, step=1, key=f"study_repeats_{mode}", disabled=running,
                help="Each row's run again with other seeds: the table shows their mean and a 95% interval "
                     f"(default {DEFAULT_REPEATS[mode]} for {mode}: what fits an hour on a 2-core laptop).")  # fmt: skip
c3.number_input("Search trials", min_value=0, max_value=200, step=5, key="study_trials", disabled=running,
                help=f"Task 5: the study ran {ref.SWEEP['trials']}; 0 leaves the search out.")  # fmt: skip
c4.number_input("Augmentation grid points", min_value=2, max_value=128, step=1, key="study_grid", disabled=running,
                help="A seeded sample of the study's 128-point grid (task 3).")  # fmt: skip

plans = {m: plan_for(m) for m in MODES}


def estimates_line() -> str:
    parts, unknown = [], False
    speed = measuring(base)
    for m in MODES:
        counts = progress_counts(cached_table(base, s["data_root"], store, plans[m]))
        missing = counts[1] - counts[0] + max(0, counts[3] - counts[2])
        if missing == 0:
            parts.append(f"{m}: every run stored")
            continue
        found = cached_estimate(base, s["data_root"], store, plans[m])
        unknown |= found is None
        when = "measuring this machine's speed…"
        if found is not None:
            when = (
                f"about {fmt_eta(found[0])}"
                if found[1]
                else f"roughly {fmt_eta(found[0])} (no such run measured here yet)"
            )
        if found is None and speed is not None and speed.status == "failed":
            when = f"no estimate ({speed.error})"
        elif found is None and speed is not None and speed.status == "done":
            when = "no estimate: some rows cannot be trained here (the table says why)"
        parts.append(
            f"{m}: {counts[1] - counts[0]} runs and {max(0, counts[3] - counts[2])} search trials missing, {when}"
        )
    if unknown and speed is None:
        measure_speed(base, store)  # a few seconds in the background; the caption below polls it
        st.rerun()
    return " · ".join(parts) + " on this machine."


_speed = measuring(base)


@st.fragment(run_every=2.0 if _speed is not None and _speed.active else None)
def estimate_caption() -> None:
    st.caption(estimates_line())
    if _speed is not None and _speed.active and not measuring(base).active:
        st.rerun()  # measured: the whole page, and no more polling


with st.container(key="study_controls"):
    if running:
        who = started_by()
        st.info(f"Reproducing the **{who.get('mode', mode)}** mode" + (f", started by {who['name']}" if who.get("name") else "")
                + ". The table below fills in as runs land; you may leave this page.")  # fmt: skip
        if may_cancel():
            st.button("Cancel the reproduction", key="study_cancel", on_click=cancel_reproduction,
                      help="Stops after the run in progress; finished rows are kept.")  # fmt: skip
        else:
            st.caption("Only whoever started it (or the app's owner) can cancel it.")
    else:
        counts = progress_counts(cached_table(base, s["data_root"], store, plans[mode]))
        missing = counts[1] - counts[0] + max(0, counts[3] - counts[2])
        if st.button(
            f"Reproduce the study ({mode})",
            key="study_reproduce",
            type="primary",
            disabled=missing == 0,
            icon=":material/play_arrow:",
            help="Trains every missing run, cheapest first, then the search.",
        ):
            start_reproduction(base, s["data_root"], store, plans[mode])
            st.rerun()
        estimate_caption()
        if status is not None and status.status == "failed":
            st.error(status.error)
        elif status is not None and status.status == "cancelled":
            st.warning("The reproduction was cancelled; finished rows are kept.")
        elif status is not None and status.status == "done" and missing == 0:
            st.success(f"The reproduction ended: every row of the {mode} mode is stored.")


@st.fragment(run_every=5.0 if running else None)
def study_table() -> None:
    by_mode = {m: cached_table(base, s["data_root"], store, plans[m]) for m in MODES}
    now = reproduction_status()
    if running:
        stored, total, trials_done, trials = progress_counts(by_mode[mode])
        done = stored + min(trials_done, trials)
        text = f"Reproducing ({mode}): {stored} of {total} runs stored" + (
            f" · {trials_done} of {trials} search trials" if trials else "") + training_where(now)  # fmt: skip
        st.progress(min(1.0, done / max(1, total + trials)), text=text)
    frame = table_frame(by_mode, reproduce.plan(base, how=plans[mode]))
    shown = frame.copy()
    shown["the study"] = ["–" if v is None or v != v else f"{v:.3f}" for v in frame["the study"]]
    columns = ["task", "setting", "the study", *[MODE_LABELS[m] for m in MODES], "page", "runs"]
    if frame["why not"].astype(bool).any():
        columns.append("why not")
    st.dataframe(
        shown, key="study_table", column_order=columns, hide_index=True, width="stretch", height=36 * (len(frame) + 1) + 4,
        column_config={
            "task": st.column_config.TextColumn(width=40),
            "setting": st.column_config.TextColumn(width=235),
            "the study": st.column_config.TextColumn(width=70, help=f"Its published figure ({ref.SELECTION_NOTE})."),
            MODE_LABELS["quick"]: st.column_config.TextColumn(width=205, help="Quick mode: a new head on the frozen "
                                                              "backbone. Test accuracy, its 95% interval (seeds and the "
                                                              "test set's size)."),
            MODE_LABELS["faithful"]: st.column_config.TextColumn(width=205, help="Faithful mode: the head, then the "
                                                                 "network's last block fine-tuned. Test accuracy, its 95% "
                                                                 "interval."),
            "page": st.column_config.LinkColumn("page", display_text="open", width=50,
                                                help="The page that shows this row's run, with its settings."),
            "runs": st.column_config.TextColumn(width=130, help="The row's run ids: frozen · fine-tuned."),
        },
    )  # fmt: skip
    st.caption(f"Dataset {info.root.name} · {base.backbone} ({base.weights} weights) · {s['image_size']} px · seed "
               f"{s['seed']}{' · test-time flip' if base.tta else ''}. The same tables: `python -m core reproduce "
               "--mode quick|faithful --json`.")  # fmt: skip
    st.subheader("The study's conclusions, here")
    st.dataframe(claims_frame(by_mode), key="study_claims", hide_index=True, width="stretch")
    st.caption("“Holds here” when the whole 95% interval of the difference is on the study's side (for −1 block: "
               "no more than 2 points worse), “not here” when it is on the other side, else “too close to tell”: more "
               "seeds per row narrow the intervals.")  # fmt: skip
    if running and (now is None or now.status != "running"):
        st.rerun()  # the reproduction ended: the whole page, with its buttons back


study_table()

st.subheader("Best model")
best_frame = best_model_frame(store, {info.fingerprint})
st.dataframe(best_frame, key="study_best", hide_index=True, width="stretch")
if len(best_frame) <= 2:
    st.caption("No best model is stored for this dataset yet: `python -m core best --minutes 30 [--small] --json` "
               "searches for one, chosen on validation alone (the Runs page, page 6 and export then take it).")  # fmt: skip
else:
    st.caption("Each best model was chosen on the validation split alone; its test accuracy was read once, at the end. "
               "Its run is on the Runs page; `python -m core export RUN_ID --to best.keras` writes it.")  # fmt: skip
