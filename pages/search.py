"""Task 5: hyperparameter search with Optuna, on validation accuracy, beside the study's W&B sweep.

Trials run in background processes (``python -m core tune``, started and stopped by
``core.search.processes``) that keep going when you switch pages; this page reads the study from its
storage every two seconds, so it shows studies made anywhere, including by CLI workers on other
machines sharing the storage.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.config import OPTIMIZERS
from core.errors import SceneLabError, first_line
from core.search import processes
from core.search.objective import AUTO_REPEATS_CHEAP
from core.search.storage import default_storage_url, open_storage, resolve_storage_url
from core.search.summaries import (
    best_config,
    importances,
    intermediate_frame,
    list_studies,
    load_study,
    study_settings,
    summary,
    trials_frame,
)
from ui import handover
from ui import reference_search as ref
from ui.charts_search import curves_chart, history_chart, importance_chart, parallel_chart, slice_chart
from ui.compat import ensure_router
from ui.settings import settings

P = "search"
NEW = "➕ New study…"
PARAM_LABELS = {
    "optimizer": "optimizer",
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "momentum": "momentum (sgd, rmsprop)",
    "dropout": "dropout",
    "batch_size": "batch size",
    "batch_norm": "batch norm",
}


def one_sentence(exc: BaseException) -> str:
    if isinstance(exc, SceneLabError):
        return str(exc)
    text = first_line(exc) if str(exc).strip() else ""
    return f"The study storage could not be read ({type(exc).__name__}{': ' + text if text else ''})."


# -- the study view (polled while workers run) -----------------------------------------------------
def study_view(url: str, name: str, artifacts: str) -> None:
    try:
        study = load_study(open_storage(url), name)
        figures = summary(study)
        df = trials_frame(study)
        inter = intermediate_frame(study)
    except Exception as exc:  # noqa: BLE001 - one sentence, never a traceback
        st.error(one_sentence(exc))
        return
    settings = study_settings(study) or {}
    workers = processes.live_workers(artifacts, name)
    target = figures["n_trials_target"]
    finished = figures["n_trials_complete"] + figures["n_trials_pruned"]

    cols = st.columns(6)
    cols[0].metric("complete", figures["n_trials_complete"])
    cols[1].metric("pruned", figures["n_trials_pruned"])
    cols[2].metric("failed", figures["n_trials_failed"])
    cols[3].metric("running", figures["n_trials_running"])
    cols[4].metric("best val accuracy", "–" if figures["best_value"] is None else f"{figures['best_value']:.4f}")
    cols[5].metric("its test accuracy", "–" if figures["best_test_accuracy"] is None else f"{figures['best_test_accuracy']:.4f}")
    if target:
        st.progress(min(1.0, finished / target), text=f"{finished} of {target} trials finished")
    if workers:
        st.caption(f"{len(workers)} background worker(s) of this app running (pid {', '.join(map(str, workers))}); updated every 2 s.")
    elif figures["n_trials_running"]:
        st.caption("Trials are running in workers outside this app (other processes or machines); updated every 2 s.")
    if settings:
        base = settings.get("base_config", {})
        st.caption(
            f"Searched: {', '.join(settings.get('space', {}))} · sampler {settings.get('sampler')} · pruner "
            f"{settings.get('pruner')} · {base.get('backbone')} ({base.get('weights')} weights) · "
            f"{base.get('image_size')} px · phase {base.get('phase')} · {base.get('epochs')} epochs"
            f"{' · flip augmentation' if (base.get('augment') or {}).get('hflip') else ''}"
            f"{' · test-time flip' if base.get('tta') else ''} · {int(settings.get('repeats', 1))} seed(s) per trial "
            f"· dataset {Path(str(settings.get('data_root', '?'))).name}"
        )
    if figures["best_params"]:
        st.markdown(
            f"**Best trial {figures['best_trial']}** (selected on validation): "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in figures["best_params"].items())
            + f" · run `{figures['best_run_id']}`"
        )

    if df.empty:
        st.info("No trials yet; the first one starts once the worker has loaded TensorFlow (a few seconds).")
    else:
        space = settings.get("space", {})
        params = [c for c in df.columns if c not in {
            "number", "state", "value", "test_accuracy", "epochs_reported", "duration_s", "run_id", "cached", "reason", "worker"
        }]
        left, right = st.columns(2)
        if (df["state"] == "COMPLETE").any():
            left.altair_chart(history_chart(df), key=f"{P}_history_chart", width="stretch")
        if not inter.empty:
            right.altair_chart(curves_chart(inter), key=f"{P}_curves_chart", width="stretch")
        pc = parallel_chart(df, params, space)
        if pc is not None:
            st.altair_chart(pc, key=f"{P}_parallel_chart", width="stretch")
        imp = importances(study)
        if imp:
            st.altair_chart(importance_chart(imp), key=f"{P}_importance_chart", width="stretch")
        else:
            st.caption("Parameter importances appear once two trials have completed with different results.")
        if (df["state"] == "COMPLETE").any() and params:
            charts = [slice_chart(df, p, space.get(p)) for p in params]
            rows = [alt.hconcat(*charts[i : i + 3]) for i in range(0, len(charts), 3)]
            st.altair_chart(alt.vconcat(*rows).properties(title="Slice plots: validation accuracy against each parameter"), key=f"{P}_slice_chart")
        st.subheader("Trials")
        st.dataframe(
            df,
            key=f"{P}_trials_table",
            hide_index=True,
            width="stretch",
            column_config={
                "value": st.column_config.NumberColumn("val accuracy", format="%.4f"),
                "test_accuracy": st.column_config.NumberColumn("test accuracy", format="%.4f"),
                "lr": st.column_config.NumberColumn("lr", format="%.2e"),
                "weight_decay": st.column_config.NumberColumn("weight decay", format="%.2e"),
            },
        )
        reference_view(df)
    tail = processes.log_tail(artifacts, name)
    if tail:
        with st.expander("Worker log (last lines)"):
            st.code(tail, language=None)


def reference_view(df: pd.DataFrame) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown(f"**{ref.LABEL}**")
        st.dataframe(
            pd.DataFrame(ref.TOP_TRIALS, columns=["optimizer", "accuracy"]),
            key=f"{P}_reference_table",
            hide_index=True,
        )
        st.caption(
            f"These are the study's reported figures: {ref.SWEEP['method']}, {ref.SWEEP['trials']} trials, "
            f"best {ref.SWEEP['best_accuracy']:.3f}; {ref.SWEEP['model']}. It picked its trials on test."
        )
    with right:
        st.markdown("**this study: best trial per optimizer (selected on validation)**")
        done = df[df["state"] == "COMPLETE"]
        if "optimizer" in done and not done.empty:
            best = done.sort_values("value", ascending=False).groupby("optimizer", as_index=False).head(1)
            st.dataframe(
                best[["optimizer", "value", "test_accuracy", "number"]].rename(
                    columns={"value": "val accuracy", "test_accuracy": "test accuracy", "number": "trial"}
                ),
                key=f"{P}_ours_table",
                hide_index=True,
            )
            st.caption("Our test accuracy is the comparable figure; dataset, backbone and image size as listed above.")
        else:
            st.caption("Appears when completed trials searched the optimizer.")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# -- the page -------------------------------------------------------------------------------------
ensure_router()  # a deep link on a fresh server: hand over to app.py first
st.title("5 · Hyperparameter search")
st.caption(
    "The study swept optimizer, learning rate, weight decay, momentum, dropout, batch size and batch norm "
    "with 30 random trials. Here Optuna searches the same space (TPE or random), selects on the validation "
    "split, prunes trials that fall behind, and reports test accuracy. Trials train heads on cached "
    "backbone features, a few seconds each."
)
s = settings()
artifacts = s["artifacts"]
st.text_input(
    "Study storage",
    key=f"{P}_storage",
    placeholder=default_storage_url(artifacts),
    help="Empty: the SQLite file under the artifacts folder. Or an Optuna storage URL "
    "(postgresql://user@host/db, mysql://...) or a journal file ending .log; workers on other machines "
    "join a study through the same URL.",
)
try:
    url = resolve_storage_url((st.session_state.get(f"{P}_storage") or "").strip() or None, artifacts)
    storage = open_storage(url)
    studies = list_studies(storage)
except Exception as exc:  # noqa: BLE001 - one sentence, never a traceback
    st.error(one_sentence(exc))
    st.stop()

if studies:
    table = pd.DataFrame(studies)
    st.dataframe(table, key=f"{P}_studies_table", hide_index=True, width="stretch")
names = [r["study"] for r in studies]
wanted = st.session_state.pop(f"{P}_select_next", None)
if wanted in names:
    st.session_state[f"{P}_study_pick"] = wanted
if st.session_state.get(f"{P}_study_pick") not in [*names, NEW]:
    st.session_state[f"{P}_study_pick"] = names[-1] if names else NEW
pick = st.selectbox("Study", [*names, NEW], key=f"{P}_study_pick")

if pick == NEW:
    with st.form(f"{P}_new_form"):
        st.markdown(
            f"Backbone **{s['backbone']}** ({s['weights']} weights), **{s['image_size']} px**, seed {s['seed']} "
            "from the sidebar; phase head on cached features."
        )
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Study name", value="search-1", key=f"{P}_new_name")
        trials = c2.number_input("Trials", min_value=1, max_value=500, value=30, step=1, key=f"{P}_new_trials")
        sampler = c3.selectbox("Sampler", ["tpe", "random"], key=f"{P}_new_sampler", help="random is what the study's W&B sweep did")
        pruner = c4.selectbox("Pruner", ["median", "none"], key=f"{P}_new_pruner")
        epochs = c1.number_input("Epochs per trial", min_value=1, max_value=200, value=30, key=f"{P}_new_epochs")
        hflip = c2.checkbox(
            "Flip augmentation", value=True, key=f"{P}_new_hflip",
            help="Heads train on the cached features of each image and of its mirror image: the study's flip, at no cost per epoch.",
        )
        tta = c3.checkbox(
            "Test-time flip", value=True, key=f"{P}_new_tta",
            help="Validation and test predictions average each image with its mirror image.",
        )
        repeats = c4.number_input(
            "Seeds per trial", min_value=1, max_value=20, value=AUTO_REPEATS_CHEAP, key=f"{P}_new_repeats",
            help="Each trial trains this many times (other validation splits and initial weights) and scores the mean "
            "validation accuracy: a steadier ranking than one 282-image split.",
        )
        st.markdown("**Fix parameters** (ticked ones are not searched):")
        fix: dict[str, Any] = {}
        row1 = st.columns(4)
        row2 = st.columns(3)
        widgets = [
            ("optimizer", lambda c: c.selectbox("optimizer", OPTIMIZERS, index=OPTIMIZERS.index("adam"), key=f"{P}_fix_optimizer_value")),
            ("lr", lambda c: c.number_input("learning rate", min_value=1e-6, max_value=1.0, value=1e-3, step=1e-4, format="%.1e", key=f"{P}_fix_lr_value")),
            ("weight_decay", lambda c: c.number_input("weight decay", min_value=0.0, max_value=1.0, value=1e-4, step=1e-4, format="%.1e", key=f"{P}_fix_weight_decay_value")),
            ("momentum", lambda c: c.number_input("momentum", min_value=0.0, max_value=0.99, value=0.9, step=0.05, key=f"{P}_fix_momentum_value")),
            ("dropout", lambda c: c.number_input("dropout", min_value=0.0, max_value=0.95, value=0.0, step=0.05, key=f"{P}_fix_dropout_value")),
            ("batch_size", lambda c: c.selectbox("batch size", [8, 16, 32, 64, 128], index=2, key=f"{P}_fix_batch_size_value")),
            ("batch_norm", lambda c: c.selectbox("batch norm", [False, True], key=f"{P}_fix_batch_norm_value")),
        ]
        for (param, draw), col in zip(widgets, [*row1, *row2], strict=True):
            ticked = col.checkbox(f"fix {PARAM_LABELS[param]}", key=f"{P}_fix_{param}")
            value = draw(col)
            if ticked:
                fix[param] = value
        submitted = st.form_submit_button("Start", type="primary", key=f"{P}_start")
    if submitted:
        name = name.strip()
        argv = [
            "--data", s["data_root"], "--study", name, "--trials", str(int(trials)), "--storage", url,
            "--artifacts", artifacts, "--sampler", sampler, "--pruner", pruner, "--backbone", s["backbone"],
            "--weights", s["weights"], "--image-size", str(s["image_size"]), "--seed", str(s["seed"]),
            "--aug-hflip", str(hflip).lower(), "--tta", str(tta).lower(), "--repeats", str(int(repeats)), "--phase", "head", "--epochs", str(int(epochs)), "--json",
        ]
        for param, value in fix.items():
            argv += [f"--{param.replace('_', '-')}", str(value)]
        if not name:
            st.error("Give the study a name.")
        elif name in names:
            st.error(f"A study named {name!r} exists already; pick it in the list above to add a worker, or choose another name.")
        else:
            try:
                processes.start_worker(argv, artifacts, name)
            except SceneLabError as exc:
                st.error(str(exc))
            except SystemExit:
                st.error("These settings are not valid for a search; check the numbers and try again.")
            else:
                st.session_state[f"{P}_select_next"] = name
                st.rerun()
    st.stop()

# an existing study: workers, the best config, and the live view
workers = processes.live_workers(artifacts, pick)
c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
more = c1.number_input("Trials in total", min_value=1, max_value=1000, value=int(next((r["target"] for r in studies if r["study"] == pick and r["target"]), 30)), key=f"{P}_more_trials")
if c2.button("Start a worker", key=f"{P}_add_worker", help="Runs trials in the background until the study holds this many; start two to see Optuna's multi-worker mode."):
    try:
        argv = ["--study", pick, "--storage", url, "--artifacts", artifacts, "--trials", str(int(more)), "--json"]
        stored = study_settings(load_study(storage, pick)) or {}
        if not Path(str(stored.get("data_root", ""))).is_dir():  # made on another machine: the sidebar's copy
            argv += ["--data", s["data_root"]]
        processes.start_worker(argv, artifacts, pick)
    except SceneLabError as exc:
        st.error(str(exc))
    else:
        st.rerun()
if c3.button("Stop workers", key=f"{P}_stop", disabled=not workers, help="Stops this app's workers; their running trial is marked failed, finished ones are kept."):
    st.toast(f"Stopped {processes.stop_workers(artifacts, pick)} worker(s).")
try:
    best_cfg = best_config(load_study(storage, pick))
except Exception as exc:  # noqa: BLE001
    best_cfg = None
    st.error(one_sentence(exc))
if c4.button("Load the best trial's config into Fine-tune", key=f"{P}_load_best", disabled=best_cfg is None, type="primary"):
    handover.load_config(best_cfg, handover.PAGES["finetune"])

try:
    active = bool(workers) or any(r["running"] for r in studies if r["study"] == pick)
except Exception:  # noqa: BLE001
    active = False


@st.fragment(run_every=2.0 if active else None)
def live() -> None:
    study_view(url, pick, artifacts)
    if active and not processes.live_workers(artifacts, pick):
        with contextlib.suppress(Exception):
            if not summary(load_study(storage, pick))["n_trials_running"]:
                st.rerun()  # the workers are done: redraw the page once, without polling


live()
