"""Every stored run in one table: readable names, compare curves, download a model or a config, reopen a run."""

from __future__ import annotations

import hashlib
import json

import streamlit as st

from ui import handover
from ui.catalog import page_of_run
from ui.charts import draw_curves
from ui.compat import ensure_router
from ui.downloads import export_buttons
from ui.format import fmt_acc, result_caption, run_name, runs_table, shown_path
from ui.resources import all_runs, get_store, get_worker
from ui.settings import is_admin, settings, user_name

P = "runs"
SELECTED = f"{P}_selected"  # run ids, so a tick follows its run when the table changes under it
COLUMNS = ["select", "name", "test_accuracy", "val_accuracy", "train_accuracy", "seed", "image_size", "trained_by",
           "trained", "epochs_run", "seconds", "run_id", "dataset", "backbone"]  # fmt: skip
ONLY_IF_SEVERAL = ("dataset", "backbone")  # shown when the table holds more than one (the name says the page)

ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("Runs")
st.markdown("Every run trained so far, from any page. Tick runs to compare their learning curves, download them "
            "or open them in their page.")  # fmt: skip
s = settings()
records = all_runs()
if not records:
    st.info(f"No run is stored yet in `{shown_path(s['artifacts'])}`. Train one on any page; it appears here.")
    st.stop()

table = runs_table(records)
f1, f2, f3 = st.columns([1, 1, 2])
datasets = sorted(d for d in table["dataset"].dropna().unique())
choice = f1.selectbox("Dataset", ["All datasets", *datasets], key=f"{P}_dataset")
mine = f2.toggle("Only my runs", key=f"{P}_mine", disabled=not user_name(),
                 help="Runs trained under the name you gave in the sidebar.")  # fmt: skip
if choice != "All datasets":
    table = table[table["dataset"] == choice]
if mine and user_name():
    table = table[table["trained_by"] == user_name()]
table = table.sort_values("created", ascending=False).reset_index(drop=True)
selected: list[str] = [i for i in st.session_state.get(SELECTED, []) if i in set(table["run_id"])]
table.insert(0, "select", table["run_id"].isin(selected))
f3.caption(f"{len(table)} run(s){' in `' + s['artifacts'] + '`' if is_admin() else ''}; tick runs to select them.")

# the editor's key changes with the rows shown, so its ticks are always the ones stored by run id above
digest = hashlib.sha256("|".join(table["run_id"]).encode()).hexdigest()[:12]
edited = st.data_editor(
    table[[c for c in COLUMNS if c in table.columns]],
    column_order=[c for c in COLUMNS if c in table.columns and (c not in ONLY_IF_SEVERAL or table[c].nunique() > 1)],
    key=f"{P}_table_{digest}",
    hide_index=True,
    width="stretch",
    disabled=[c for c in COLUMNS if c != "select"],
    column_config={
        "select": st.column_config.CheckboxColumn("", width="small"),
        "name": st.column_config.TextColumn("run", width=330, help="Its page, and what differs from the defaults."),
        "page": st.column_config.TextColumn(width="small"),
        "test_accuracy": st.column_config.NumberColumn("test", format="%.3f", width="small"),
        "val_accuracy": st.column_config.NumberColumn("validation", format="%.3f", width="small"),
        "train_accuracy": st.column_config.NumberColumn("train", format="%.3f", width="small"),
        "backbone": st.column_config.TextColumn(width="medium"),
        "image_size": st.column_config.NumberColumn("px", width="small"),
        "seed": st.column_config.NumberColumn(width="small"),
        "trained": st.column_config.TextColumn("trained", help="When, in your time zone."),
        "epochs_run": st.column_config.NumberColumn("epochs", width="small"),
        "seconds": st.column_config.NumberColumn(format="%.0f", width="small"),
        "trained_by": st.column_config.TextColumn("by", width="small"),
        "run_id": st.column_config.TextColumn("id", width="small"),
    },
)
st.session_state[SELECTED] = list(edited.loc[edited["select"], "run_id"])
by_id = {r.run_id: r for r in records}
chosen = [by_id[i] for i in st.session_state[SELECTED] if i in by_id]
if not chosen:
    st.caption("Tick two runs to compare their curves.")
else:
    st.subheader("Learning curves")
    curves = {f"{run_name(r.config.get('run', {}))} ({r.run_id[:6]})": r.history for r in chosen if r.history}
    if curves:
        draw_curves(curves, key=f"{P}_curves")
    if len(curves) < len(chosen):
        st.caption("An ensemble (a best model of `python -m core best`) has no learning curve of its own; its runs do.")
    st.subheader("Selected runs")
for r in chosen:
    with st.container(border=True):
        result_caption(r)
        m = r.metrics
        st.markdown(f"train {fmt_acc(m.get('train_accuracy'))} · validation {fmt_acc(m.get('val_accuracy'))} · "
                    f"test **{fmt_acc(m.get('test_accuracy'))}** · {m.get('epochs_run')} epochs")  # fmt: skip
        b1, b2, b3 = st.columns(3)
        b1.download_button("Config (JSON)", data=json.dumps(r.config, indent=2, sort_keys=True),
                           file_name=f"scenelab-{r.run_id}.json", mime="application/json",
                           key=f"{P}_config_{r.run_id}", icon=":material/download:")  # fmt: skip
        export_buttons(r, b2)
        page = page_of_run(r.config.get("run", {}))
        verb = (
            "Open its settings in" if r.config.get("search_study") else "Open in"
        )  # a search trial: its settings' page
        if (
            page.takes_runs
            and not r.members
            and b3.button(f"{verb} {page.label}", key=f"{P}_open_{r.run_id}", icon=":material/open_in_new:")
        ):
            handover.load_config(r.config.get("run", {}), page.file, run_id=r.run_id)


if is_admin():
    with st.expander("Owner: reset the app"):
        busy = {j.id for j in get_worker().jobs() if j.active}
        st.caption(f"Deletes every stored run and every feature and image cache of `{s['artifacts']}`, except the "
                   f"{len(busy)} run(s) training now; nothing another session is using is touched.")  # fmt: skip
        if st.checkbox("I want to delete them", key=f"{P}_reset_ok") and st.button(
            "Reset", key=f"{P}_reset", type="primary"
        ):
            counts = get_store().reset(keep=busy)
            st.cache_data.clear()
            st.success(f"Deleted {counts['runs']} run(s) and {counts['caches']} cache file(s).")
            st.session_state.pop(SELECTED, None)
