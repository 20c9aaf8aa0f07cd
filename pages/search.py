"""Task 5: hyperparameter search with Optuna, on validation accuracy, beside the study's W&B sweep.

Trials run in background processes (``python -m core tune``, started and stopped by
``core.search.processes``) that keep going when you switch pages; this page reads the study from its
storage every two seconds, so it shows studies made anywhere, including by CLI workers on other
machines sharing the storage: every trial's figures and config come from the storage alone, and a best
run trained elsewhere can be trained here under the same run id. The answer comes first (summary, best
trial, trials, charts); storage, workers and optuna-dashboard sit under "Advanced".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.cli import parse_tune
from core.config import RUN_SETTINGS, SHARED_SETTINGS, RunConfig
from core.errors import SceneLabError, first_line
from core.search import processes
from core.search.objective import AUTO_REPEATS_CHEAP
from core.search.samplers import PRUNERS, SAMPLERS
from core.search.space import DEFAULT_SPACE
from core.search.storage import dashboard_command, default_storage_url, open_storage, redact, resolve_storage_url
from core.search.study import DEFAULT_TRIALS, TUNE_DEFAULTS, option_argv
from core.search.summaries import (
    MIN_TRIALS_FOR_IMPORTANCE,
    best_config,
    importances,
    intermediate_frame,
    list_studies,
    load_study,
    param_label,
    param_text,
    study_settings,
    summary,
    trials_frame,
)
from ui import handover, jobs, panel
from ui import reference_search as ref
from ui.charts_search import curves_chart, history_chart, importance_chart, parallel_chart, slice_chart
from ui.compat import ensure_router
from ui.format import backbone_label
from ui.resources import get_store
from ui.settings import settings

logger = logging.getLogger(__name__)
P = "search"
NEW = "+ New search…"
FIXABLE = tuple(DEFAULT_SPACE)  # the study's swept parameters, as core.search.space declares them
FIX = f"{P}_value"  # the panel page name of the fixed values' widgets (keys search_value_<field>)
TABLE_COLUMNS = {  # technical name -> (header, tooltip)
    "number": ("Trial", "number: the trial's number in the study"),
    "state": ("State", "state: COMPLETE, PRUNED (stopped early), FAIL, SURPLUS (never run), RUNNING or WAITING"),
    "value": ("Val accuracy", "value: the mean validation accuracy the search maximises"),
    "test_accuracy": ("Test accuracy", "test_accuracy: never looked at by the search"),
    "epochs_reported": ("Epochs", "epochs_reported: epochs the trial reported before it ended"),
    "duration_s": ("Seconds", "duration_s"),
    "host": ("Machine", "host: where the trial was trained"),
    "run_id": ("Run", "run_id: its run in the artifacts of the machine that trained it"),
    "retry_of": ("Retry of", "retry_of: the trial whose configuration it runs again (its worker died)"),
    "reason": ("Why it stopped", "fail_reason / prune_reason"),
    "worker": ("Worker", "worker: host:pid of the process"),
}


def one_sentence(exc: BaseException) -> str:
    if isinstance(exc, SceneLabError):
        return str(exc)
    logger.error("The search page could not read the study storage", exc_info=exc)
    text = first_line(exc) if str(exc).strip() else ""
    return f"The study storage could not be read ({type(exc).__name__}{': ' + text if text else ''})."


def _acc(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"  # None or NaN: no figure


# -- the study: answer first (polled while trials run) -----------------------------------------------------
def summary_view(figures: dict[str, Any], settings_: dict[str, Any]) -> None:
    target = figures["n_trials_target"]
    finished = figures["n_trials_complete"] + figures["n_trials_pruned"]
    cols = st.columns(7)
    cols[0].metric("finished", f"{finished} of {target}" if target else finished, help="complete + pruned; the study's target")
    for col, (label, key) in zip(cols[1:5], [("complete", "complete"), ("pruned", "pruned"), ("failed", "failed"), ("running", "running")], strict=True):
        col.metric(label, figures[f"n_trials_{key}"])
    cols[5].metric("best val accuracy", _acc(figures["best_value"]))
    cols[6].metric("its test accuracy", _acc(figures["best_test_accuracy"]))
    if target:
        st.progress(min(1.0, finished / target), text=f"{finished} of {target} trials finished")
    if settings_:
        base = settings_.get("base_config", {})
        st.caption(
            f"Searched: {', '.join(param_label(p) for p in settings_.get('space', {}))} · "
            f"{'TPE' if settings_.get('sampler') == 'tpe' else 'random'} sampler · "
            f"{'median pruning' if settings_.get('pruner') == 'median' else 'no pruning'} · {backbone_label(base.get('backbone'))} "
            f"({base.get('weights')} weights) · {base.get('image_size')} px · phase {base.get('phase')} · "
            f"{base.get('epochs')} epochs{' · flip augmentation' if (base.get('augment') or {}).get('hflip') else ''}"
            f"{' · test-time flip' if base.get('tta') else ''} · {int(settings_.get('repeats', 1))} seed(s) per trial · "
            f"dataset {Path(str(settings_.get('data_root', '?'))).name}"
        )


def best_view(figures: dict[str, Any], cfg: dict[str, Any] | None, data_root: str) -> None:
    if not figures["best_params"]:
        return
    run_id = figures["best_run_id"]
    here = bool(run_id) and get_store().load_run(run_id) is not None
    with st.container(border=True):
        st.markdown(
            f"**Best trial {figures['best_trial']}** (selected on validation): "
            + " · ".join(param_text(k, v) for k, v in figures["best_params"].items())
            + f" · val {_acc(figures['best_value'])}, test {_acc(figures['best_test_accuracy'])} · run `{run_id}`"
        )
        if here:
            st.caption("Its run is in this machine's artifacts: the other pages open it at once.")
        else:
            where = figures.get("best_host") or "another machine"
            folder = f" (artifacts {figures['best_artifacts']})" if figures.get("best_artifacts") else ""
            st.info(f"Trained on **{where}**{folder}: its run is not in this machine's artifacts; its figures come from the study's storage.")
        c1, c2 = st.columns(2)
        if c1.button("Load its settings into Fine-tune", key=f"{P}_load_best", disabled=cfg is None, type="primary"):
            handover.load_config(cfg or {}, handover.PAGES["finetune"])
        if not here and c2.button("Train it here", key=f"{P}_train_here", disabled=cfg is None,
                                  help="Trains the same config on this machine's copy of the dataset: the same run id."):
            job = jobs.submit_runs(P, [RunConfig.from_dict(cfg or {})], data_root)[0]
            if run_id and job.id != run_id:
                st.session_state[f"{P}_other_id"] = f"The dataset here is not the one the study was trained on, so this run gets another id ({job.id}, not {run_id})."
            st.rerun()


def table_view(df: pd.DataFrame, params: list[str]) -> None:
    config: dict[str, Any] = {}
    for name, (header, tip) in TABLE_COLUMNS.items():
        fmt = None  # value and test accuracy: text below, "–" where a trial has none (pruned, failed)
        config[name] = st.column_config.NumberColumn(header, help=tip, format=fmt) if fmt else st.column_config.Column(header, help=tip)
    for p in params:
        info = RUN_SETTINGS.get(p)
        tip = f"{p}: {info.help}" if info else p
        fmt = ("%.1e" if info.log else "%.3f") if info is not None and info.kind == "float" else None
        config[p] = st.column_config.NumberColumn(param_label(p), help=tip, format=fmt) if fmt else st.column_config.Column(param_label(p), help=tip)
    config["cached"] = None  # not for reading
    shown = df.assign(**{c: [_acc(v) for v in df[c]] for c in ("value", "test_accuracy") if c in df})
    text = [c for c in shown if not pd.api.types.is_numeric_dtype(shown[c])]  # None in them: a dash too
    shown = shown.assign(**{c: shown[c].astype(object).where(shown[c].notna(), "–") for c in text})
    st.dataframe(shown, key=f"{P}_trials_table", hide_index=True, width="stretch", column_config=config)


def charts_view(study: Any, df: pd.DataFrame, inter: pd.DataFrame, params: list[str], space: dict[str, Any]) -> None:
    done = int((df["state"] == "COMPLETE").sum())
    left, right = st.columns(2)
    if done:
        left.altair_chart(history_chart(df), key=f"{P}_history_chart", width="stretch")
    if not inter.empty:
        right.altair_chart(curves_chart(inter), key=f"{P}_curves_chart", width="stretch")
    st.markdown("**Parameter importances**")
    st.caption(
        f"fANOVA's share of the variance of validation accuracy, drawn from {MIN_TRIALS_FOR_IMPORTANCE} finished trials "
        f"on: from fewer they say more about the draw than about the parameters. Your search has {done}."
    )
    imp = importances(study)
    if imp:
        st.altair_chart(importance_chart(imp), key=f"{P}_importance_chart", width="stretch")
    pc = parallel_chart(df, params, space)
    if pc is not None:
        st.altair_chart(pc, key=f"{P}_parallel_chart", width="stretch")
    if done and params:
        charts = [slice_chart(df, p, space.get(p)) for p in params]
        rows = [alt.hconcat(*charts[i : i + 3]) for i in range(0, len(charts), 3)]
        st.altair_chart(alt.vconcat(*rows).properties(title="Slice plots: validation accuracy against each parameter"), key=f"{P}_slice_chart")


def study_view(url: str, name: str, artifacts: str, data_root: str) -> dict[str, Any] | None:
    """The study, answer first; its summary figures (None when its storage could not be read)."""
    try:
        study = load_study(open_storage(url), name)
        figures = summary(study)
        df = trials_frame(study)
        inter = intermediate_frame(study)
        cfg = best_config(study)
    except Exception as exc:  # noqa: BLE001 - one sentence, never a traceback
        st.error(one_sentence(exc))
        return None
    settings_ = study_settings(study) or {}
    summary_view(figures, settings_)
    workers = processes.live_workers(artifacts, name)
    finished = figures["n_trials_complete"] + figures["n_trials_pruned"]
    if workers or figures["n_trials_running"]:
        st.caption("Trials are running (in this app's workers or elsewhere); the page updates every 2 s.")
    elif figures["n_trials_target"] and finished < figures["n_trials_target"]:
        st.info(f"{finished} of {figures['n_trials_target']} trials are finished and nothing runs: start a worker under Advanced below.")
    best_view(figures, cfg, data_root)
    if df.empty:
        st.info("No trials yet; the first one starts once the worker has loaded TensorFlow (a few seconds).")
        return figures
    params = [c for c in df.columns if c not in TABLE_COLUMNS and c != "cached"]
    st.subheader("Trials")
    table_view(df, params)
    charts_view(study, df, inter, params, settings_.get("space", {}))
    reference_view(df)
    return figures


def reference_view(df: pd.DataFrame) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown(f"**{ref.LABEL}**")
        st.dataframe(pd.DataFrame(ref.best_per_optimizer(), columns=["optimizer", "accuracy"]), key=f"{P}_reference_table", hide_index=True,
                     column_config={"optimizer": "Optimizer", "accuracy": st.column_config.NumberColumn("Test accuracy", format="%.3f")})
        st.caption(
            f"These are the study's reported figures (its top trials, the best per optimizer): {ref.SWEEP['method']}, "
            f"{ref.SWEEP['trials']} trials, "
            f"best {ref.SWEEP['best_accuracy']:.3f}; {ref.SWEEP['model']}. It picked its trials on test."
        )
    with right:
        st.markdown("**your search: best trial per optimizer (selected on validation)**")
        done = df[df["state"] == "COMPLETE"]
        if "optimizer" in done and not done.empty:
            best = done.sort_values("value", ascending=False).groupby("optimizer", as_index=False).head(1)
            st.dataframe(
                best[["optimizer", "value", "test_accuracy", "number"]], key=f"{P}_ours_table", hide_index=True,
                column_config={"optimizer": "Optimizer", "value": st.column_config.NumberColumn("Val accuracy", format="%.3f"),
                               "test_accuracy": st.column_config.NumberColumn("Test accuracy", format="%.3f"), "number": "Trial"},
            )  # fmt: skip
            st.caption("Our test accuracy is the comparable figure; dataset, backbone and image size as listed above.")
        else:
            st.caption("Appears when completed trials searched the optimizer.")


# -- a new study ------------------------------------------------------------------------------------------
def new_study_form(s: dict[str, Any], url: str, artifacts: str, names: list[str]) -> None:
    for key, value in panel.defaults(FIX, FIXABLE).items():
        st.session_state.setdefault(key, value)
    with st.form(f"{P}_new_form"):
        st.markdown(
            f"Backbone **{backbone_label(s['backbone'])}** ({s['weights']} weights), **{s['image_size']} px**, seed {s['seed']}, "
            f"test-time flip **{'on' if s['tta'] else 'off'}**, all from the sidebar (so the figures compare with the "
            "other pages); heads on cached features."
        )
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Study name", value="search-1", key=f"{P}_new_name")
        trials = c2.number_input("Trials", min_value=1, max_value=500, value=DEFAULT_TRIALS, step=1, key=f"{P}_new_trials")
        sampler = c3.selectbox("Sampler", SAMPLERS, key=f"{P}_new_sampler", help="random is what the study's W&B sweep did",
                               format_func=lambda v: {"tpe": "TPE (Optuna's default)", "random": "Random (the study's)"}[v])
        pruner = c4.selectbox("Pruner", PRUNERS, key=f"{P}_new_pruner", format_func=str.capitalize,
                              help="Median: a trial whose validation accuracy falls below the median of earlier trials at the same epoch is stopped.")
        epochs = c1.number_input("Epochs per trial", min_value=1, max_value=200, value=TUNE_DEFAULTS["epochs"], key=f"{P}_new_epochs")
        hflip = c2.checkbox("Flip augmentation", value=TUNE_DEFAULTS["aug_hflip"], key=f"{P}_new_hflip",
                            help="Heads train on the cached features of each image and of its mirror image: the study's flip, at no cost per epoch.")
        repeats = c3.number_input(
            "Seeds per trial", min_value=1, max_value=20, value=AUTO_REPEATS_CHEAP, key=f"{P}_new_repeats",
            help="Each trial trains this many times (other validation splits and initial weights) and scores the mean "
            "validation accuracy: a steadier ranking than one 282-image split.",
        )  # fmt: skip
        st.markdown("**Fix parameters** (ticked ones are not searched):")
        fix: dict[str, Any] = {}
        for field, col in zip(FIXABLE, [*st.columns(4), *st.columns(3)], strict=True):
            ticked = col.checkbox(f"fix {param_label(field).lower()}", key=f"{P}_fix_{field}")
            value = panel.widget(FIX, field, col, label_visibility="collapsed", style="select", in_form=True,
                                 **({"step": 1e-4} if field == "weight_decay" else {}))  # fmt: skip
            if ticked:
                fix[field] = value
        submitted = st.form_submit_button("Start", type="primary", key=f"{P}_start")
    if submitted:
        start_study(s, url, artifacts, names, name.strip(), fix,
                    ["--trials", str(int(trials)), "--sampler", sampler, "--pruner", pruner, "--repeats", str(int(repeats)),
                     *option_argv({"aug_hflip": hflip, "epochs": int(epochs)})])  # fmt: skip


def start_study(s: dict[str, Any], url: str, artifacts: str, names: list[str], name: str, fix: dict[str, Any], extra: list[str]) -> None:
    argv = ["--data", s["data_root"], "--study", name, "--storage", url, "--artifacts", artifacts, "--phase", "head",
            *option_argv({k: s[k] for k in SHARED_SETTINGS}), *extra, *option_argv(fix), "--json"]  # fmt: skip
    if not name:
        st.error("Give the search a name.")
    elif name in names:
        st.error(f"A search named {name!r} exists already; pick it in the list above to add a worker, or choose another name.")
    else:
        try:
            processes.start_worker(parse_tune(argv))
        except SceneLabError as exc:
            st.error(str(exc))
        except SystemExit:
            st.error("These settings are not valid for a search; check the numbers and try again.")
        else:
            st.session_state[f"{P}_select_next"] = name
            st.rerun()


# -- Advanced: storage, workers, optuna-dashboard ---------------------------------------------------------
def workers_view(pick: str, url: str, storage: Any, artifacts: str, studies: list[dict[str, Any]], s: dict[str, Any]) -> None:
    workers = processes.live_workers(artifacts, pick)
    st.markdown("**Workers of this app** (each runs trials in the background until the study holds its trials)")
    c1, c2, c3 = st.columns([1, 1, 1])
    target = next((r["target"] for r in studies if r["study"] == pick and r["target"]), DEFAULT_TRIALS)
    more = c1.number_input("Trials in total", min_value=1, max_value=1000, value=int(target), key=f"{P}_more_trials")
    if c2.button("Start a worker", key=f"{P}_add_worker", help="Start two to see Optuna's multi-worker mode."):
        try:
            argv = ["--study", pick, "--storage", url, "--artifacts", artifacts, "--trials", str(int(more)), "--json"]
            stored = study_settings(load_study(storage, pick)) or {}
            if not Path(str(stored.get("data_root", ""))).is_dir():  # made on another machine: the sidebar's copy
                argv += ["--data", s["data_root"]]
            processes.start_worker(parse_tune(argv))
        except SceneLabError as exc:
            st.error(str(exc))
        else:
            st.rerun()
    if c3.button("Stop workers", key=f"{P}_stop", disabled=not workers, help="Their running trial is marked failed; finished ones are kept."):
        st.toast(f"Stopped {processes.stop_workers(artifacts, pick)} worker(s).")
    st.caption(f"{len(workers)} worker(s) of this app running" + (f" (pid {', '.join(map(str, workers))})." if workers else "."))
    tail = processes.log_tail(artifacts, pick)
    if tail:
        st.markdown("Worker log (last lines)")
        st.code(tail, language=None)


def storage_view(url: str, studies: list[dict[str, Any]]) -> None:
    st.markdown("**Open this storage in optuna-dashboard** (then browse to http://127.0.0.1:8080):")
    st.code(dashboard_command(url), language="bash")
    if "***" in redact(url):
        st.caption("Put the database password in place of ***.")
    if studies:
        table = pd.DataFrame(studies)
        table["finished"] = table["complete"] + table["pruned"]
        st.dataframe(
            table[["study", "finished", "target", "complete", "pruned", "failed", "running", "best_value", "started"]],
            key=f"{P}_studies_table", hide_index=True, width="stretch",
            column_config={"study": "Study", "finished": "Finished", "target": "Target", "complete": "Complete",
                           "pruned": "Pruned", "failed": "Failed", "running": "Running", "started": "Started",
                           "best_value": st.column_config.NumberColumn("Best val accuracy", format="%.3f")},
        )  # fmt: skip


# -- the page ---------------------------------------------------------------------------------------------
ensure_router()  # a deep link on a fresh server: hand over to app.py first
st.title("5 · Hyperparameter search")
st.caption(
    "The study swept optimizer, learning rate, weight decay, momentum, dropout, batch size and batch norm with 30 "
    "random trials. Here Optuna searches the same space, selects on the validation split, stops trials that fall "
    "behind and reports test accuracy. Trials train heads on cached backbone features, a few seconds each."
)
s = settings()
artifacts = s["artifacts"]
top = st.container()
advanced = st.expander("Advanced: study storage, workers, optuna-dashboard")
advanced.text_input(
    "Study storage", key=f"{P}_storage", placeholder=default_storage_url(artifacts),
    help="Empty: the SQLite file under the artifacts folder. Or an Optuna storage URL (postgresql://user@host/db, "
    "mysql://...) or a journal file ending .log; workers on other machines join a study through the same URL.",
)  # fmt: skip
try:
    url = resolve_storage_url((st.session_state.get(f"{P}_storage") or "").strip() or None, artifacts)
    storage = open_storage(url)
    studies = list_studies(storage)
except Exception as exc:  # noqa: BLE001 - one sentence, never a traceback
    top.error(one_sentence(exc))
    st.stop()
with advanced:
    storage_view(url, studies)

names = [r["study"] for r in studies]
wanted = st.session_state.pop(f"{P}_select_next", None)
if wanted in names:
    st.session_state[f"{P}_study_pick"] = wanted
if st.session_state.get(f"{P}_study_pick") not in [*names, NEW]:
    st.session_state[f"{P}_study_pick"] = names[-1] if names else NEW
pick = top.selectbox("Study", [*names, NEW], key=f"{P}_study_pick")
if pick == NEW:
    with top:
        new_study_form(s, url, artifacts, names)
    st.stop()

with advanced:
    workers_view(pick, url, storage, artifacts, studies, s)
try:  # where "Train it here" finds the dataset: the study's folder, or the sidebar's copy when made elsewhere
    stored_root = str((study_settings(load_study(storage, pick)) or {}).get("data_root", ""))
    active = bool(processes.live_workers(artifacts, pick)) or any(r["running"] for r in studies if r["study"] == pick)
except Exception:  # noqa: BLE001 - the view below says why in one sentence
    logger.exception("Could not read study %r", pick)
    stored_root, active = "", False
data_root = stored_root if stored_root and Path(stored_root).is_dir() else s["data_root"]
with top:
    if st.session_state.get(f"{P}_other_id"):
        st.warning(st.session_state.pop(f"{P}_other_id"))
    jobs.live_progress(P)  # "Train it here"


@st.fragment(run_every=2.0 if active else None)
def live() -> None:
    figures = study_view(url, pick, artifacts, data_root)
    if active and figures and not figures["n_trials_running"] and not processes.live_workers(artifacts, pick):
        st.rerun()  # the workers are done: redraw the page once, without polling


with top:
    live()
