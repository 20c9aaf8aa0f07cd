"""Task 5: hyperparameter search with Optuna, on validation accuracy, beside the study's W&B sweep.

Trials run in background processes (``python -m core tune``) that keep going when you switch pages;
this page reads the study from its storage every two seconds, so it shows studies made anywhere,
including by CLI workers on other machines sharing the storage.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core import tuning
from core.cli import build_parser, default_artifacts
from core.config import OPTIMIZERS
from core.errors import SceneLabError
from ui import reference_search as ref

try:  # the shared helpers of the app (fall back to the session state when run alone)
    from ui import common
except ImportError:  # pragma: no cover - ui/common.py is another page's file
    common = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parent.parent
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
STATE_COLOURS = alt.Scale(
    domain=["COMPLETE", "PRUNED", "RUNNING", "FAIL"], range=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
)


def shared() -> dict[str, Any]:
    if common is not None:
        return common.settings()
    ss = st.session_state
    return {
        "data_root": str(ss.get("data_root", os.environ.get("SCENELAB_DATA", "data/"))).strip(),
        "backbone": ss.get("backbone", "efficientnet_lite0"),
        "weights": ss.get("weights", "imagenet"),
        "image_size": int(ss.get("image_size", 128)),
        "seed": int(ss.get("seed", 0)),
        "artifacts": ss.get("artifacts") or str(default_artifacts()),
    }


def one_sentence(exc: BaseException) -> str:
    if isinstance(exc, SceneLabError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"The study storage could not be read ({type(exc).__name__}{': ' + text if text else ''})."


# -- background workers ---------------------------------------------------------------------------
def studies_dir(artifacts: str) -> Path:
    return Path(artifacts).expanduser() / "studies"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "study"


def log_path(artifacts: str, name: str) -> Path:
    return studies_dir(artifacts) / f"{safe_name(name)}.log"


def pid_path(artifacts: str, name: str) -> Path:
    return studies_dir(artifacts) / f"{safe_name(name)}.pids"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie (our exited child) is not alive
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _is_tune_worker(pid: int) -> bool:
    """The pid still runs ``python -m core tune`` (a recorded pid may have been reused since)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc").is_dir()  # no /proc (macOS): trust the pid file
    return b"core" in args and b"tune" in args


def live_workers(artifacts: str, name: str) -> list[int]:
    """Pids of the workers this app started for the study that still run."""
    try:
        pids = [int(x) for x in pid_path(artifacts, name).read_text().split()]
    except (OSError, ValueError):
        return []
    return [p for p in pids if _alive(p) and _is_tune_worker(p)]


def launch_worker(argv: list[str], artifacts: str, name: str) -> int:
    """Start ``python -m core tune ARGV`` detached (it survives page switches and reruns)."""
    folder = studies_dir(artifacts)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path(artifacts, name), "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments built from widgets
            [sys.executable, "-m", "core", "tune", *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(pid_path(artifacts, name), "a") as fh:
        fh.write(f"{proc.pid}\n")
    return proc.pid


def stop_workers(artifacts: str, name: str) -> int:
    """SIGTERM the workers this app started for the study (their running trial is marked FAIL)."""
    stopped = 0
    for pid in live_workers(artifacts, name):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            stopped += 1
    return stopped


def log_tail(artifacts: str, name: str, lines: int = 15) -> str:
    try:
        text = log_path(artifacts, name).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def check_and_create(argv: list[str]) -> None:
    """Validate the worker's arguments here and create the study, so errors show at once as one sentence."""
    args = build_parser().parse_args(["tune", *argv])
    tuning.prepare_cli_study(args)


# -- charts ---------------------------------------------------------------------------------------
def history_chart(df: pd.DataFrame) -> alt.LayerChart:
    done = df[df["state"] == "COMPLETE"].sort_values("number").copy()
    done["best so far"] = done["value"].cummax()
    points = (
        alt.Chart(done)
        .mark_circle(size=60)
        .encode(
            x=alt.X("number:Q", title="trial"),
            y=alt.Y("value:Q", title="validation accuracy", scale=alt.Scale(zero=False)),
            color=alt.Color("test_accuracy:Q", title="test accuracy", scale=alt.Scale(scheme="viridis")),
            tooltip=["number", alt.Tooltip("value:Q", format=".4f"), alt.Tooltip("test_accuracy:Q", format=".4f"), "optimizer"]
            if "optimizer" in done
            else ["number", "value", "test_accuracy"],
        )
    )
    best = (
        alt.Chart(done)
        .mark_line(interpolate="step-after", color="black")
        .encode(x="number:Q", y="best so far:Q", tooltip=[alt.Tooltip("best so far:Q", format=".4f")])
    )
    return alt.layer(points, best).properties(height=280, title="Optimisation history (line: best so far)")


def curves_chart(inter: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(inter)
        .mark_line(point=alt.OverlayMarkDef(size=12), opacity=0.75)
        .encode(
            x=alt.X("step:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title="validation accuracy", scale=alt.Scale(zero=False)),
            color=alt.Color("state:N", scale=STATE_COLOURS, title="trial state"),
            strokeDash=alt.condition("datum.state == 'PRUNED'", alt.value([4, 3]), alt.value([1, 0])),
            detail="trial:N",
            tooltip=["trial", "state", "step", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(height=280, title="Learning curves (dashed: pruned trials)")
    )


def normalise(value: Any, spec: dict[str, Any] | None, seen: list[Any]) -> float | None:
    """A parameter value on [0, 1]: by the space's bounds (log-scaled when the space is), or its choice index."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if spec and spec.get("type") == "categorical":
        choices = [json.dumps(c) for c in spec["choices"]]
        key = json.dumps(value)
        return choices.index(key) / max(1, len(choices) - 1) if key in choices else None
    if spec and spec.get("type") in ("float", "int"):
        lo, hi = float(spec["low"]), float(spec["high"])
        v = float(value)
        if spec.get("log"):
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(max(v, 1e-300))
        return (v - lo) / (hi - lo) if hi > lo else 0.5
    # no spec (a foreign study): by the values seen
    nums = [float(x) for x in seen if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and nums:
        lo, hi = min(nums), max(nums)
        return (float(value) - lo) / (hi - lo) if hi > lo else 0.5
    labels = sorted({json.dumps(x) for x in seen})
    return labels.index(json.dumps(value)) / max(1, len(labels) - 1)


def parallel_chart(df: pd.DataFrame, params: list[str], space: dict[str, Any]) -> alt.Chart | None:
    done = df[df["state"] == "COMPLETE"]
    if done.empty or not params:
        return None
    rows = []
    for _, t in done.iterrows():
        for p in params:
            pos = normalise(t[p], space.get(p), list(done[p]))
            if pos is not None:
                rows.append({"trial": int(t["number"]), "axis": p, "position": pos, "setting": str(t[p]), "value": t["value"]})
        rows.append({"trial": int(t["number"]), "axis": "validation accuracy", "position": None, "setting": f"{t['value']:.4f}", "value": t["value"]})
    long = pd.DataFrame(rows)
    vmin, vmax = float(done["value"].min()), float(done["value"].max())
    long.loc[long["axis"] == "validation accuracy", "position"] = (
        (long["value"] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
    )
    order = [*params, "validation accuracy"]
    base = alt.Chart(long).encode(
        x=alt.X("axis:N", sort=order, title=None, axis=alt.Axis(labelAngle=-20, labelOverlap=False)),
        y=alt.Y("position:Q", title="position in the search range", scale=alt.Scale(domain=[0, 1])),
    )
    lines = base.mark_line(opacity=0.6).encode(
        color=alt.Color("value:Q", title="validation accuracy", scale=alt.Scale(scheme="viridis")),
        detail="trial:N",
        tooltip=["trial", "axis", "setting", alt.Tooltip("value:Q", format=".4f")],
    )
    ticks = alt.Chart(pd.DataFrame({"axis": order})).mark_rule(color="#bbb").encode(x=alt.X("axis:N", sort=order))
    return alt.layer(ticks, lines).properties(height=300, title="Parallel coordinates (each parameter scaled to its range; one line per trial)")


def importance_chart(imp: dict[str, float]) -> alt.Chart:
    df = pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())})
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("importance:Q", title="importance (fANOVA, share of variance)"),
            y=alt.Y("parameter:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
            tooltip=["parameter", alt.Tooltip("importance:Q", format=".3f")],
        )
        .properties(height=32 * max(3, len(df)) + 20, title="Parameter importances")
    )


def slice_chart(df: pd.DataFrame, param: str, spec: dict[str, Any] | None) -> alt.Chart:
    done = df[(df["state"] == "COMPLETE") & df[param].notna()][["number", param, "value"]].copy()
    numeric = spec is not None and spec.get("type") in ("float", "int")
    if numeric:
        log = bool(spec.get("log"))
        x = alt.X(
            f"{param}:Q",
            title=param,
            scale=alt.Scale(type="log" if log else "linear"),
            axis=alt.Axis(tickCount=4, grid=not log, format="~e" if log else "~g"),
        )
    else:
        done[param] = done[param].astype(str)
        order = [str(c) for c in spec["choices"]] if spec and spec.get("choices") else None
        x = alt.X(f"{param}:N", title=param, sort=order, axis=alt.Axis(labelAngle=-30, labelOverlap=False))
    return (
        alt.Chart(done)
        .mark_circle(size=50, opacity=0.8)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="val accuracy", scale=alt.Scale(zero=False)),
            color=alt.Color("number:Q", title="trial", scale=alt.Scale(scheme="blues")),
            tooltip=["number", param, alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(width=190, height=170, title=param)
    )


# -- the study view (polled while workers run) -----------------------------------------------------
def study_view(url: str, name: str, artifacts: str) -> None:
    try:
        study = tuning.load_study(tuning.open_storage(url), name)
        summary = tuning.summary(study)
        df = tuning.trials_frame(study)
        inter = tuning.intermediate_frame(study)
    except Exception as exc:  # noqa: BLE001 - one sentence, never a traceback
        st.error(one_sentence(exc))
        return
    settings = tuning.study_settings(study) or {}
    workers = live_workers(artifacts, name)
    target = summary["n_trials_target"]
    finished = summary["n_trials_complete"] + summary["n_trials_pruned"]

    cols = st.columns(6)
    cols[0].metric("complete", summary["n_trials_complete"])
    cols[1].metric("pruned", summary["n_trials_pruned"])
    cols[2].metric("failed", summary["n_trials_failed"])
    cols[3].metric("running", summary["n_trials_running"])
    cols[4].metric("best val accuracy", "–" if summary["best_value"] is None else f"{summary['best_value']:.4f}")
    cols[5].metric("its test accuracy", "–" if summary["best_test_accuracy"] is None else f"{summary['best_test_accuracy']:.4f}")
    if target:
        st.progress(min(1.0, finished / target), text=f"{finished} of {target} trials finished")
    if workers:
        st.caption(f"{len(workers)} background worker(s) of this app running (pid {', '.join(map(str, workers))}); updated every 2 s.")
    elif summary["n_trials_running"]:
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
    if summary["best_params"]:
        st.markdown(
            f"**Best trial {summary['best_trial']}** (selected on validation): "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in summary["best_params"].items())
            + f" · run `{summary['best_run_id']}`"
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
        imp = tuning.importances(study)
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
    tail = log_tail(artifacts, name)
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
from ui import common as _common  # noqa: E402

_common.ensure_router()  # a deep link on a fresh server: hand over to app.py first
st.title("5 · Hyperparameter search")
st.caption(
    "The study swept optimizer, learning rate, weight decay, momentum, dropout, batch size and batch norm "
    "with 30 random trials. Here Optuna searches the same space (TPE or random), selects on the validation "
    "split, prunes trials that fall behind, and reports test accuracy. Trials train heads on cached "
    "backbone features, a few seconds each."
)
s = shared()
artifacts = s["artifacts"]
st.text_input(
    "Study storage",
    key=f"{P}_storage",
    placeholder=tuning.default_storage_url(artifacts),
    help="Empty: the SQLite file under the artifacts folder. Or an Optuna storage URL "
    "(postgresql://user@host/db, mysql://...) or a journal file ending .log; workers on other machines "
    "join a study through the same URL.",
)
try:
    url = tuning.resolve_storage_url((st.session_state.get(f"{P}_storage") or "").strip() or None, artifacts)
    storage = tuning.open_storage(url)
    studies = tuning.list_studies(storage)
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
            "Seeds per trial", min_value=1, max_value=20, value=tuning.AUTO_REPEATS_CHEAP, key=f"{P}_new_repeats",
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
                check_and_create(argv)
            except SceneLabError as exc:
                st.error(str(exc))
            except SystemExit:
                st.error("These settings are not valid for a search; check the numbers and try again.")
            else:
                launch_worker(argv, artifacts, name)
                st.session_state[f"{P}_select_next"] = name
                st.rerun()
    st.stop()

# an existing study: workers, the best config, and the live view
workers = live_workers(artifacts, pick)
c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
more = c1.number_input("Trials in total", min_value=1, max_value=1000, value=int(next((r["target"] for r in studies if r["study"] == pick and r["target"]), 30)), key=f"{P}_more_trials")
if c2.button("Start a worker", key=f"{P}_add_worker", help="Runs trials in the background until the study holds this many; start two to see Optuna's multi-worker mode."):
    try:
        argv = ["--study", pick, "--storage", url, "--artifacts", artifacts, "--trials", str(int(more)), "--json"]
        stored = tuning.study_settings(tuning.load_study(storage, pick)) or {}
        if not Path(str(stored.get("data_root", ""))).is_dir():  # made on another machine: the sidebar's copy
            argv += ["--data", s["data_root"]]
        check_and_create(argv)
    except SceneLabError as exc:
        st.error(str(exc))
    else:
        launch_worker(argv, artifacts, pick)
        st.rerun()
if c3.button("Stop workers", key=f"{P}_stop", disabled=not workers, help="Stops this app's workers; their running trial is marked failed, finished ones are kept."):
    st.toast(f"Stopped {stop_workers(artifacts, pick)} worker(s).")
try:
    best_cfg = tuning.best_config(tuning.load_study(storage, pick))
except Exception as exc:  # noqa: BLE001
    best_cfg = None
    st.error(one_sentence(exc))
if c4.button("Load the best trial's config into Fine-tune", key=f"{P}_load_best", disabled=best_cfg is None, type="primary"):
    st.session_state["loaded_config"] = best_cfg
    if common is not None:
        common.load_config(best_cfg, "pages/finetune.py")
    else:
        st.switch_page("pages/finetune.py")

try:
    active = bool(workers) or any(r["running"] for r in studies if r["study"] == pick)
except Exception:  # noqa: BLE001
    active = False


@st.fragment(run_every=2.0 if active else None)
def live() -> None:
    study_view(url, pick, artifacts)
    if active and not live_workers(artifacts, pick):
        with contextlib.suppress(Exception):
            if not tuning.summary(tuning.load_study(storage, pick))["n_trials_running"]:
                st.rerun()  # the workers are done: redraw the page once, without polling


live()
