"""Shared UI helpers: session settings, the store and worker, dataset checks, charts, job progress.

Pages import from here; core never does. Shared session keys (set once in app.py with
``setdefault``): ``data_root``, ``backbone``, ``weights``, ``image_size``, ``seed``, ``artifacts``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.backbones import BACKBONES, DENSENET121_NOTOP_FILE, keras_models_dir, weights_status
from core.cli import default_artifacts
from core.config import RunConfig
from core.data import DatasetInfo, decode_image, scan_dataset
from core.errors import SceneLabError
from core.store import RunRecord, Store
from core.train import prepare, summary_row
from core.worker import Job, Worker

SHARED_KEYS = ("data_root", "backbone", "weights", "image_size", "tta", "seed", "artifacts")
CONFIG_SHARED_KEYS = ("backbone", "weights", "image_size", "tta", "seed")
WEIGHT_CHOICES = ("imagenet", "none")
IMAGE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
LOADED = "loaded_config"
_LOADED_SHARED = "_loaded_config_shared_applied"
_ROUTED = "_routed"  # this session has run through app.py's st.navigation

# pages that take a loaded config, and the page a config belongs to (see page_for_config)
PAGES = {
    "finetune": "pages/finetune.py",
    "truncate": "pages/truncate.py",
    "small_data": "pages/small_data.py",
    "augmentation": "pages/augmentation.py",
    "regularisation": "pages/regularisation.py",
}


# -- routing ---------------------------------------------------------------------------------------
def ensure_router() -> None:
    """Hand over to app.py when Streamlit runs a script in its legacy ``pages/`` mode.

    A Streamlit server whose app has a ``pages/`` folder starts in the legacy multipage mode and
    leaves it only once the router has called ``st.navigation``. Until then the first visit runs
    app.py inside that legacy navigation (its sidebar widgets then lose their values on the next
    run), and a deep link such as ``/augmentation`` runs the page script alone, without the router's
    sidebar and settings. Leaving the legacy mode and rerunning puts app.py in charge at once; the
    rerun keeps the page the URL asked for. Only a session's first run is rerun, so no widget
    interaction is ever dropped (AppTest re-enters the legacy mode on every run).
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if not st.session_state.get(_ROUTED):
            st.session_state[_ROUTED] = True
            st.rerun()
    st.session_state[_ROUTED] = True


# -- session settings ------------------------------------------------------------------------------
def default_backbone() -> str:
    """DenseNet121 (the study's) when its ImageNet weights are cached, else the offline EfficientNet-Lite0."""
    cached = keras_models_dir() / DENSENET121_NOTOP_FILE
    usable = cached.is_file() and cached.stat().st_size > 1_000_000  # what core.backbones accepts as cached
    return "densenet121" if weights_status("densenet121") == "ImageNet weights cached" and usable else "efficientnet_lite0"


def session_defaults() -> dict[str, Any]:
    return {
        "data_root": os.environ.get("SCENELAB_DATA") or "data/",
        "backbone": default_backbone(),
        "weights": "imagenet",
        "image_size": 128,
        "tta": False,
        "seed": 0,
        "artifacts": os.environ.get("SCENELAB_ARTIFACTS") or str(default_artifacts()),
    }


def settings() -> dict[str, Any]:
    """The shared settings of this session (defaults for any key not set yet)."""
    ss = st.session_state
    missing = [k for k in SHARED_KEYS if k not in ss]
    defaults = session_defaults() if missing else {}
    out = {k: ss[k] if k in ss else defaults[k] for k in SHARED_KEYS}
    out["data_root"] = str(out["data_root"]).strip()
    out["image_size"] = int(out["image_size"])
    out["seed"] = int(out["seed"])
    out["tta"] = bool(out["tta"])
    return out


def base_config(**overrides: Any) -> RunConfig:
    """A RunConfig with the sidebar's backbone, weights, image size and seed, then ``overrides``."""
    s = settings()
    values: dict[str, Any] = {
        "backbone": s["backbone"],
        "weights": s["weights"],
        "image_size": s["image_size"],
        "tta": s["tta"],
        "seed": s["seed"],
    }
    values.update(overrides)
    return RunConfig.from_dict(values)


# -- store, worker, dataset -----------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner=False)
def _store(artifacts: str) -> Store:
    store = Store(artifacts)
    with contextlib.suppress(OSError):
        store.clean_stale(max_age_s=600.0)  # run folders left half-written by killed processes
    return store


@st.cache_resource(show_spinner=False)
def _worker(artifacts: str) -> Worker:
    return Worker(_store(artifacts))


def get_store() -> Store:
    return _store(settings()["artifacts"])


def get_worker() -> Worker:
    """The app's one training worker (shared by every session; keyed by the artifacts folder)."""
    return _worker(settings()["artifacts"])


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _scan(data_root: str) -> DatasetInfo:
    return scan_dataset(data_root)


def dataset_report(data_root: str | os.PathLike[str], *, show_error: bool = True) -> DatasetInfo | None:
    """The dataset's classes and files (cached a minute), or None after one sentence saying why not."""
    try:
        return _scan(str(data_root).strip())
    except SceneLabError as exc:
        if show_error:
            st.error(str(exc))
        return None


def first_screen(data_root: str) -> None:
    """What to do when no usable dataset is set (the dataset error itself is shown by the caller)."""
    st.subheader("Point SceneLab at a dataset")
    st.markdown(
        "A dataset is a folder of images sorted into one sub-folder per class, for training and for testing:"
    )
    st.code(
        "<root>/train/<class>/*.jpg   e.g. data/mit8/train/coast/cdmc101.jpg\n"
        "<root>/test/<class>/*.jpg    the same class folders as train",
        language=None,
    )
    st.markdown(
        "Type that folder in **Dataset folder** in the sidebar, or start the app with "
        "`SCENELAB_DATA=/path/to/root streamlit run app.py`.\n\n"
        "No dataset yet? With internet, download the MIT 8-scene images (2688 photos, 8 classes) and split "
        "them like the study:"
    )
    st.code("python -m core download-data --to data/mit8", language="bash")
    st.caption(
        f"Currently set: `{data_root or '(empty)'}`. JPEG, PNG, BMP, GIF, WEBP and TIFF are read; "
        "unreadable files are skipped and listed in the sidebar."
    )


def require_dataset() -> DatasetInfo:
    """The current dataset, or the first screen and a stop."""
    s = settings()
    info = dataset_report(s["data_root"])
    if info is None:
        first_screen(s["data_root"])
        st.stop()
    return info


# -- runs -----------------------------------------------------------------------------------------
def lookup(cfg: RunConfig, data_root: str) -> tuple[str | None, RunRecord | None]:
    """(run id, stored run or None) for ``cfg``; (None, None) after one sentence when it cannot be resolved."""
    try:
        run_id = prepare(cfg, data_root).run_id
    except SceneLabError as exc:
        st.error(str(exc))
        return None, None
    return run_id, get_store().load_run(run_id)


@st.cache_data(max_entries=4, show_spinner=False)
def _records(artifacts: str, stamp: tuple[int, int]) -> list[RunRecord]:
    return Store(artifacts).list_runs()


def all_runs() -> list[RunRecord]:
    """Every stored run (re-read when the runs folder changes)."""
    store = get_store()
    try:
        st_ = store.runs_dir.stat()
        stamp = (st_.st_mtime_ns, st_.st_nlink)
    except OSError:
        return []
    return _records(str(store.root), stamp)


def runs_like(info: DatasetInfo, cfg: RunConfig) -> list[RunRecord]:
    """Stored runs on this dataset with ``cfg``'s backbone, weights and image size."""
    out = []
    for r in all_runs():
        run = r.config.get("run", {})
        if (
            r.config.get("dataset", {}).get("fingerprint") == info.fingerprint
            and run.get("backbone") == cfg.backbone
            and run.get("weights") == cfg.weights
            and run.get("image_size") == cfg.image_size
        ):
            out.append(r)
    return out


def runs_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    return pd.DataFrame([summary_row(r) for r in records])


def result_line(record: RunRecord) -> str:
    cfg = record.config.get("run", {})
    ds = record.config.get("dataset", {}).get("name", "?")
    weights = cfg.get("weights", "?")
    return (
        f"dataset **{ds}** · {cfg.get('backbone', '?')} ({weights} weights) · "
        f"{cfg.get('image_size', '?')} px{' · test-time flip' if cfg.get('tta') else ''} · run `{record.run_id}`"
    )


def result_caption(record: RunRecord) -> None:
    """One line naming the dataset, backbone, image size and run id of the numbers next to it."""
    m = record.metrics
    extra = []
    if m.get("seconds") is not None:
        extra.append(f"trained in {fmt_seconds(m['seconds'])}")
    if record.config.get("created"):
        extra.append(str(record.config["created"])[:16].replace("T", " "))
    st.caption(result_line(record) + ("".join(f" · {e}" for e in extra)))


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def fmt_eta(seconds: float) -> str:
    """A rounded time left: seconds under a minute, then minutes, then hours and minutes."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600:.0f} h {round(seconds % 3600 / 60):02d} min"


def fmt_acc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summarise_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """The settings of a run that differ from ``defaults`` (RunConfig's), as short text."""
    base = defaults if defaults is not None else RunConfig().to_dict()
    parts = []
    for k, v in cfg.items():
        if k in CONFIG_SHARED_KEYS:
            continue
        if k == "augment":
            aug = augment_label(v or {})
            if aug != "none":
                parts.append(f"augment: {aug}")
        elif base.get(k) != v:
            parts.append(f"{k}={v}")
    return ", ".join(parts) or "defaults"


def job_label(cfg: RunConfig) -> str:
    """Phase and epochs, then whatever else differs from the defaults."""
    epochs = f"{cfg.epochs}+{cfg.resolved_full_epochs} epochs" if cfg.phase == "head+full" else f"{cfg.epochs} epochs"
    rest = summarise_config({k: v for k, v in cfg.to_dict().items() if k not in ("phase", "epochs", "full_epochs")})
    return f"{cfg.phase}, {epochs}" + ("" if rest == "defaults" else f", {rest}")


def augment_label(aug: Mapping[str, Any]) -> str:
    names = {
        "hflip": "h-flip",
        "vflip": "v-flip",
        "grid_mask": "GridMask",
        "channel_shuffle": "channel shuffle",
    }
    parts = []
    for k in ("rotation", "width_shift", "height_shift", "shear", "zoom"):
        if aug.get(k):
            parts.append(f"{k.replace('_', ' ')} {aug[k]:g}")
    for k, label in names.items():
        if aug.get(k):
            parts.append(label)
    return " + ".join(parts) or "none"


# -- charts ---------------------------------------------------------------------------------------
def curves_frame(histories: Mapping[str, list[dict[str, float]]]) -> pd.DataFrame:
    rows = []
    for run, history in histories.items():
        for row in history:
            for metric in ("loss", "accuracy"):
                for split, col in (("train", metric), ("validation", f"val_{metric}")):
                    value = row.get(col)
                    if value is not None and np.isfinite(value):
                        rows.append(
                            {
                                "run": run,
                                "epoch": int(row["epoch"]),
                                "metric": metric,
                                "split": split,
                                "value": float(value),
                                "phase": "whole network" if row.get("phase") == 1.0 else "head",
                                "lr": row.get("lr"),
                            }
                        )
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "split", "value", "phase", "lr"])


def curves_chart(histories: Mapping[str, list[dict[str, float]]], width: int = 330, height: int = 230) -> alt.HConcatChart:
    """Train and validation loss (left) and accuracy (right) per epoch; several runs overlaid."""
    df = curves_frame(histories)
    several = df["run"].nunique() > 1
    panels = []
    for metric in ("loss", "accuracy"):
        part = df[df["metric"] == metric]
        enc: dict[str, Any] = {
            "x": alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
            "y": alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            "strokeDash": alt.StrokeDash("split:N", title="split", sort=["train", "validation"]),
            "tooltip": ["run", "split", "epoch", alt.Tooltip("value:Q", format=".4f"), "phase", alt.Tooltip("lr:Q", format=".2g")],
        }
        enc["color"] = alt.Color("run:N", title="run") if several else alt.Color("split:N", title="split", sort=["train", "validation"])
        lines = alt.Chart(part).mark_line(point=alt.OverlayMarkDef(size=25)).encode(**enc)
        layers = [lines]
        boundary = part[part["phase"] == "whole network"].groupby("run")["epoch"].min().reset_index()
        if len(boundary):
            boundary["start"] = boundary["epoch"] - 0.5
            layers.append(
                alt.Chart(boundary).mark_rule(strokeDash=[2, 2], color="gray").encode(x="start:Q", tooltip=[alt.Tooltip("run"), alt.Tooltip("epoch", title="whole network from epoch")])
            )
        panels.append(alt.layer(*layers).properties(width=width, height=height, title=f"{metric} per epoch"))
    return alt.hconcat(*panels)


def confusion_chart(classes: list[str], confusion: list[list[int]], selection: Any | None = None) -> alt.LayerChart:
    """Heatmap of true (rows) against predicted (columns) class counts."""
    df = pd.DataFrame(
        [
            {"true": t, "predicted": p, "count": int(confusion[i][j]), "share": (confusion[i][j] / max(1, sum(confusion[i])))}
            for i, t in enumerate(classes)
            for j, p in enumerate(classes)
        ]
    )
    base = alt.Chart(df).encode(
        x=alt.X("predicted:N", sort=classes, title="predicted class"),
        y=alt.Y("true:N", sort=classes, title="true class"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("share:Q", title="share of true class", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=["true", "predicted", "count", alt.Tooltip("share:Q", format=".0%")],
    )
    if selection is not None:
        rect = rect.add_params(selection).encode(
            opacity=alt.condition(selection, alt.value(1.0), alt.value(0.55)),
        )
    text = base.mark_text(fontSize=12).encode(
        text="count:Q",
        color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("black")),
    )
    size = max(260, 42 * len(classes))
    return alt.layer(rect, text).properties(width=size, height=size)


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, size: int = 128) -> np.ndarray | None:
    """An image file as an RGB array for display (None if it cannot be read any more)."""
    try:
        return decode_image(path, size)
    except SceneLabError:
        return None


# -- jobs -----------------------------------------------------------------------------------------
def show_job(job: Job, key_prefix: str = "job") -> None:
    """Progress of a worker job: status, epoch x/y, batch bar, current metrics, time left, Cancel."""
    v = job.view()
    label = job_label(v.cfg)
    if v.status == "queued":
        pos = get_worker().queue_position(v.id)
        ahead = f"; {pos} run(s) ahead of it" if pos else ""
        with st.container(border=True):
            st.markdown(f"**Queued** run `{v.id}` ({label}){ahead}.")
            st.button("Cancel", key=f"{key_prefix}_cancel_{v.id}", on_click=get_worker().cancel, args=(v.id,))
        return
    if v.status == "failed":
        st.error(v.error or "Training failed.")
        return
    if v.status == "cancelled":
        st.warning(f"Run `{v.id}` was cancelled; nothing was saved.")
        return
    if v.status == "done":
        st.success(f"Run `{v.id}` finished" + (" (it was already stored)." if v.cached else "."))
        return
    # running
    p = v.progress
    kind = p.get("event")
    with st.container(border=True):
        elapsed = time.time() - (v.started or time.time())
        st.markdown(f"**Training** run `{v.id}` ({label}) — {v.message or 'starting'} · running for {fmt_seconds(elapsed)}")
        if kind in ("batch", "epoch"):
            epochs = int(p.get("epochs") or 1)
            epoch = int(p.get("epoch") or 1)
            if kind == "batch":  # the bar: this phase's batches done, over all its epochs
                batches = int(p.get("batches") or 1)
                frac = min(1.0, ((epoch - 1) * batches + int(p.get("batch") or 0)) / (epochs * batches))
                text = f"{p.get('phase')} phase · epoch {epoch}/{epochs} · batch {p.get('batch')}/{batches}"
            else:
                frac = min(1.0, epoch / epochs)
                text = f"{p.get('phase')} phase · epoch {epoch}/{epochs} done"
            st.progress(frac, text=text)
        elif kind == "features":
            total = int(p.get("total") or 1)
            st.progress(min(1.0, int(p.get("done") or 0) / total), text=f"backbone features · {p.get('done')}/{total} images")
        else:
            st.progress(0.0, text=v.message or "starting")
        logs = p.get("logs") or {}
        latest = v.history[-1] if v.history else {}
        cols = st.columns(5)
        cols[0].metric("loss", f"{logs.get('loss', latest.get('loss', float('nan'))):.4f}" if (logs or latest) else "–")
        cols[1].metric("accuracy", f"{logs.get('accuracy', latest.get('accuracy', float('nan'))):.3f}" if (logs or latest) else "–")
        cols[2].metric("val loss", f"{latest['val_loss']:.4f}" if latest else "–")
        cols[3].metric("val accuracy", f"{latest['val_accuracy']:.3f}" if latest else "–")
        eta = p.get("eta_s")
        phase_note = " (this phase)" if v.cfg.phase == "head+full" and p.get("phase") == "head" else ""
        cols[4].metric("time left" + phase_note, f"~{fmt_eta(eta)}" if eta is not None else "–",
                       help="Estimated from the speed measured so far.")
        st.button("Cancel", key=f"{key_prefix}_cancel_{v.id}", on_click=get_worker().cancel, args=(v.id,))
        if v.history:
            st.altair_chart(curves_chart({v.id: v.history}), key=f"{key_prefix}_live_{v.id}")


def jobs_key(prefix: str) -> str:
    return f"{prefix}_jobs"


def submit_runs(prefix: str, cfgs: Iterable[RunConfig], data_root: str) -> list[Job]:
    """Ask the worker for ``cfgs`` and remember them as this page's jobs (with its earlier ones still running)."""
    worker = get_worker()
    jobs = [worker.submit(cfg, data_root) for cfg in cfgs]
    ids = [j.id for j in jobs]
    for old in st.session_state.get(jobs_key(prefix), []):
        job = worker.get(old)
        if job is not None and job.active and old not in ids:
            ids.append(old)
    st.session_state[jobs_key(prefix)] = ids
    return jobs


def track_jobs(prefix: str, watch: Iterable[str | None] = ()) -> bool:
    """Show this page's jobs, polling once a second while one is active; True while one is.

    ``watch`` lists run ids the page shows: one already in flight (another tab asked for it) is
    followed too."""
    worker = get_worker()
    ids: list[str] = list(st.session_state.get(jobs_key(prefix), []))
    for run_id in watch:
        job = worker.get(run_id) if run_id else None
        if job is not None and job.active and run_id not in ids:
            ids.append(run_id)
    st.session_state[jobs_key(prefix)] = ids
    jobs = [j for j in (worker.get(i) for i in ids) if j is not None]
    if any(j.active for j in jobs):
        _poll(prefix)
        return True
    for job in jobs:
        if job.status in ("failed", "cancelled"):
            show_job(job, prefix)
    return False


@st.fragment(run_every=1.0)
def _poll(prefix: str) -> None:
    worker = get_worker()
    jobs = [j for j in (worker.get(i) for i in st.session_state.get(jobs_key(prefix), [])) if j is not None]
    for job in jobs:
        if job.status != "done":
            show_job(job, prefix)
    if not any(j.active for j in jobs):
        st.rerun()  # the whole page, to draw the new results


# -- loaded configs ---------------------------------------------------------------------------------
def page_for_config(run: Mapping[str, Any]) -> str:
    """The page that best shows a run's settings (pages/....py)."""
    d = RunConfig().to_dict()
    if any((run.get("augment") or {}).get(k) for k in d["augment"]):
        return PAGES["augmentation"]
    if run.get("train_per_class") is not None:
        return PAGES["small_data"]
    if run.get("remove_blocks") or run.get("dense_1024"):
        return PAGES["truncate"]
    if run.get("phase") != "head":
        return PAGES["finetune"]
    return PAGES["regularisation"]


def load_config(run: Mapping[str, Any], page: str | None = None) -> None:
    """Hand a run's settings to a page (0-4) and go there."""
    st.session_state[LOADED] = dict(run)
    st.session_state.pop(_LOADED_SHARED, None)
    st.switch_page(page or page_for_config(run))


def apply_loaded_shared(consumer: bool = True) -> None:
    """Called by app.py before the sidebar: a loaded config sets backbone/weights/image size/seed.

    When the page about to run does not take loaded configs the hand-off is dropped."""
    ss = st.session_state
    loaded = ss.get(LOADED)
    if not isinstance(loaded, dict):
        ss.pop(LOADED, None)
        return
    if not consumer:
        ss.pop(LOADED, None)
        ss.pop(_LOADED_SHARED, None)
        return
    if ss.get(_LOADED_SHARED):
        return
    if loaded.get("backbone") in BACKBONES:
        ss["backbone"] = loaded["backbone"]
    if loaded.get("weights") in WEIGHT_CHOICES:
        ss["weights"] = loaded["weights"]
    if isinstance(loaded.get("image_size"), int):
        ss["image_size"] = loaded["image_size"]
    if isinstance(loaded.get("seed"), int):
        ss["seed"] = loaded["seed"]
    if isinstance(loaded.get("tta"), bool):
        ss["tta"] = loaded["tta"]
    ss[_LOADED_SHARED] = True


def _get_path(data: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def apply_loaded_config(page_prefix: str, fields: Mapping[str, str]) -> dict[str, Any] | None:
    """Prefill this page's widgets from ``st.session_state["loaded_config"]`` and consume it.

    ``fields`` maps a RunConfig field (``"augment.zoom"`` for augmentation) to the page's widget key.
    Settings the page has no widget for are kept as the page's *loaded extras* (see
    :func:`loaded_extras`) so the page reproduces the loaded run exactly. Returns the loaded dict."""
    ss = st.session_state
    loaded = ss.get(LOADED)
    if not isinstance(loaded, dict):
        return None
    apply_loaded_shared()  # when the page runs alone (tests); app.py has done it already otherwise
    for path, key in fields.items():
        found, value = _get_path(loaded, path)
        if found:
            ss[key] = value
    controlled = {p.split(".")[0] for p in fields} | set(CONFIG_SHARED_KEYS)
    defaults = RunConfig().to_dict()
    extras = {}
    for k, v in loaded.items():
        if k in defaults and k not in controlled and v != defaults[k]:
            extras[k] = v
    ss[f"{page_prefix}_extra"] = extras
    ss.pop(LOADED, None)
    ss.pop(_LOADED_SHARED, None)
    st.toast("Loaded the run's settings into this page.")
    return loaded


def setup_widgets(page_prefix: str, fields: Mapping[str, str], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """A page's widget keys: a loaded config first, then ``defaults`` for the rest, with the defaults' types.

    Returns the loaded config, if one was handed over."""
    loaded = apply_loaded_config(page_prefix, fields)
    ss = st.session_state
    for key, value in defaults.items():
        ss.setdefault(key, value)
        if value is not None and ss[key] is not None and type(ss[key]) is not type(value):
            try:
                ss[key] = type(value)(ss[key])
            except (TypeError, ValueError):
                ss[key] = value
    return loaded


def loaded_extras(page_prefix: str) -> dict[str, Any]:
    return dict(st.session_state.get(f"{page_prefix}_extra") or {})


def show_loaded_extras(page_prefix: str) -> None:
    """A note about settings kept from a loaded run that this page has no control for."""
    extras = loaded_extras(page_prefix)
    if not extras:
        return
    text = ", ".join(f"{k}={augment_label(v) if k == 'augment' else v}" for k, v in extras.items())
    cols = st.columns([5, 1])
    cols[0].info(f"Also kept from the loaded run: {text}.")
    if cols[1].button("Forget these", key=f"{page_prefix}_forget_extra"):
        st.session_state.pop(f"{page_prefix}_extra", None)
        st.rerun()


def page_config(page_prefix: str, defaults: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig | None:
    """base_config over the page's defaults, then loaded extras, then the page's widget values.

    None (after one sentence) when the settings are out of range."""
    try:
        return base_config(**{**defaults, **loaded_extras(page_prefix), **values}).validate()
    except SceneLabError as exc:
        st.error(str(exc))
        return None


# -- sidebar --------------------------------------------------------------------------------------
def draw_sidebar() -> None:
    """Dataset path and its report, backbone and weights with their status, image size, seed."""
    ss = st.session_state
    with st.sidebar:
        st.text_input(
            "Dataset folder",
            key="data_root",
            help="A folder with train/<class>/ and test/<class>/ image folders.",
        )
        info = dataset_report(ss["data_root"], show_error=False)
        if info is None:
            st.error("No usable dataset here; see the main page for what to put where.")
        else:
            counts = info.counts()
            n_train, n_test = sum(counts["train"].values()), sum(counts["test"].values())
            st.caption(f"**{info.root.name}**: {len(info.classes)} classes · {n_train} train · {n_test} test images")
            with st.expander("Images per class"):
                st.dataframe(
                    pd.DataFrame(counts).rename_axis("class"),
                    key="sidebar_counts",
                    width="stretch",
                )
            if info.skipped:
                with st.expander(f"Skipped files ({len(info.skipped)})"):
                    st.dataframe(
                        pd.DataFrame([{"file": s.path, "reason": s.reason} for s in info.skipped]),
                        key="sidebar_skipped",
                        hide_index=True,
                    )
        backbones = sorted(BACKBONES)
        if ss.get("backbone") not in backbones:
            ss["backbone"] = default_backbone()
        st.selectbox(
            "Backbone",
            backbones,
            key="backbone",
            format_func=lambda b: BACKBONES[b].label,
        )
        if ss.get("weights") not in WEIGHT_CHOICES:
            ss["weights"] = "imagenet"
        st.radio(
            "Weights",
            WEIGHT_CHOICES,
            key="weights",
            horizontal=True,
            format_func=lambda w: {"imagenet": "ImageNet", "none": "random"}[w],
        )
        status = weights_status(ss["backbone"])
        if ss["weights"] == "imagenet":
            if "offline" in status or "cached" in status:
                st.caption(f"{status} ({BACKBONES[ss['backbone']].weights_source}).")
            else:
                st.warning(f"{status}: training will try to download them (needs internet), or pick another backbone.")
        else:
            st.caption("Random initial weights: nothing pretrained, expect low accuracy.")
        sizes = sorted(set(IMAGE_SIZES) | {int(ss.get("image_size", 128))})
        st.select_slider("Image size (px)", sizes, key="image_size", help="Images are resized to this square size.")
        st.checkbox(
            "Test-time flip",
            key="tta",
            help="Validation and test predictions average each image with its mirror image (a run of its own).",
        )
        st.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="seed")
        _sidebar_queue()


def _sidebar_queue() -> None:
    worker = get_worker()
    active = [j for j in worker.jobs() if j.active]
    if active:
        running = [j for j in active if j.status == "running"]
        text = f"Worker: {len(running)} training, {len(active) - len(running)} queued"
        st.caption(text)
