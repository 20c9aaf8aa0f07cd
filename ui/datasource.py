"""The dataset part of the sidebar: the folder and its report, the bundled copy, the 256 px download.

A fresh install opens on the bundled 64 px MIT_split (``core.data.bundled``); with internet the originals
(256 px) are one click away: a background task (``core.tasks``) downloads and checks them, the sidebar
shows its progress and switches to them when they are ready.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.arrays import DatasetInfo
from core.data.bundled import is_bundled
from core.data.download import default_original_dest, download_original
from core.errors import SceneLabError
from ui.format import fmt_eta, shown_path
from ui.panel import bind
from ui.resources import dataset_report, get_task, start_task
from ui.settings import BUNDLED_ERROR, is_admin, settings

DOWNLOAD_TASK = "download-originals"


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
    bundling = st.session_state.get(BUNDLED_ERROR)
    if bundling:
        st.warning(f"The bundled 64 px copy could not be used: {bundling}")
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


def known_datasets() -> dict[str, str]:
    """Datasets a user can pick without typing a server path: path -> a name to show."""
    from core.data.archive import default_upload_root
    from core.data.bundled import bundled_folder

    found: dict[str, str] = {}
    bundled = bundled_folder(settings()["artifacts"])
    if is_bundled(bundled):
        found[str(bundled)] = "MIT 8-scene, 64 px (bundled)"
    env = os.environ.get("SCENELAB_DATA", "").strip()
    if env:
        found.setdefault(str(Path(env).expanduser()), f"{Path(env).name} (this installation's)")
    original = default_original_dest()
    if (original / "train").is_dir():
        found[str(original)] = "MIT 8-scene, 256 px (downloaded)"
    uploads = default_upload_root()
    with contextlib.suppress(OSError):
        for folder in sorted(p for p in uploads.iterdir() if (p / "train").is_dir() and not p.name.startswith(".")):
            found[str(folder)] = f"{folder.name} (uploaded)"
    current = str(st.session_state.get("data_root") or "")
    if current and current not in found:
        found[current] = shown_path(current)
    return found


def dataset_section() -> DatasetInfo | None:
    """The dataset: picked by name (or typed as a path by the app's owner), its report, a zip upload, and
    for the bundled copy what it is and the download of the originals."""
    ss = st.session_state
    if SWITCH in ss:
        ss["data_root"] = ss.pop(SWITCH)
    if is_admin():
        bind("data_root", st.text_input, "Dataset folder",
             help="A folder with train/<class>/ and test/<class>/ image folders (only the app's owner types paths).")
    else:
        options = known_datasets()
        bind("data_root", st.selectbox, "Dataset", list(options), format_func=lambda p: options.get(p, shown_path(p)))
    info = dataset_report(ss["data_root"], show_error=False)
    if info is None:
        st.error("No usable dataset here; see the main page for what to put where.")
    else:
        _report(info)
    if info is not None and is_bundled(info.root):
        st.caption(
            "The bundled copy: MIT 8-scene in the study's MIT_split at **64 px** (Oliva & Torralba 2001); "
            "the study used the 256 px originals."
        )
    _download_control(info is not None and is_bundled(info.root))
    upload_control()
    return info


def _report(info: DatasetInfo) -> None:
    counts = info.counts()
    n_train, n_test = sum(counts["train"].values()), sum(counts["test"].values())
    st.caption(f"**{info.root.name}**: {len(info.classes)} classes · {n_train} train · {n_test} test images")
    with st.expander("Images per class"):
        st.dataframe(pd.DataFrame(counts).rename_axis("class"), key="sidebar_counts", width="stretch")
    if info.skipped:
        with st.expander(f"Skipped files ({len(info.skipped)})"):
            rows = [{"file": s.path, "reason": s.reason} for s in info.skipped]
            st.dataframe(pd.DataFrame(rows), key="sidebar_skipped", hide_index=True)


def upload_control() -> None:
    """A zip of ``train/<class>/`` and ``test/<class>/`` (or of class folders, then split) becomes the dataset."""
    from core.data.archive import Limits, default_upload_root, import_zip

    limits = Limits()
    with st.expander("Add a dataset (.zip)"):
        upload = st.file_uploader(
            "Zip of train/<class>/ and test/<class>/ folders, or of class folders only", type=["zip"],
            key="data_upload", help=f"A zip of up to {st.get_option('server.maxUploadSize')} MB here (larger: "
            "`python -m core import-data`), unpacked safely (at most "
            f"{limits.max_total_bytes >> 20} MB and {limits.max_files:,} files); class folders only are split 70/30 "
            "per class with the seed.",
        )
        if upload is None or st.session_state.get("_data_uploaded") == upload.file_id:
            return
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(upload.name).stem)[:60] or "dataset"
        dest = default_upload_root() / name
        suffix = 1
        while dest.exists():
            suffix += 1
            dest = default_upload_root() / f"{name}-{suffix}"
        try:
            with st.spinner(f"Unpacking {upload.name}…"):
                result = import_zip(upload, dest, seed=int(settings()["seed"]))
        except SceneLabError as exc:
            st.error(str(exc))
            return
        st.session_state["_data_uploaded"] = upload.file_id
        split = f", split {1 - result.test_share:.0%}/{result.test_share:.0%}" if result.was_split else ""
        st.success(f"{upload.name}: {sum(result.counts['train'].values())} train and "
                   f"{sum(result.counts['test'].values())} test images{split}; now the dataset.")
        _switch_to(result.dest)
        st.rerun()


SWITCH = "_switch_data_root"  # a dataset to switch to on the next run, before the path widget is drawn


def _switch_to(path: Path) -> None:
    st.session_state[SWITCH] = str(path)


def _download_control(offer: bool) -> None:
    task = get_task(DOWNLOAD_TASK)
    dest = default_original_dest()
    if task is None and not offer:
        return
    if task is None:
        if (dest / "train").is_dir():
            st.button("Use the 256 px originals", key="data_use_originals", on_click=_switch_to, args=(dest,),
                      help=f"Downloaded before into {dest}.")
            return
        if st.button("Download the original 8-scene images (256 px)", key="data_download",
                     help="About 70 MB from MIT; checked (size, zip, 2688 images), then split like MIT_split."):
            start_task(DOWNLOAD_TASK, lambda progress, stop: download_original(dest, progress=progress))
            st.rerun()
        return
    running = task.view().status == "running"
    st.fragment(run_every=1.0 if running else None)(_download_progress)()  # polls only while it downloads


def _download_progress() -> None:
    task = get_task(DOWNLOAD_TASK)
    if task is None:
        return
    v = task.view()
    if v.status == "running":
        p = v.progress
        total, done = p.get("total"), int(p.get("bytes") or 0)
        frac = min(1.0, done / total) if total else 0.0
        eta = p.get("eta_s")
        text = f"Downloading the originals: {done / 1e6:.1f}" + (f" of {total / 1e6:.1f} MB" if total else " MB")
        st.progress(frac, text=text + (f" · about {fmt_eta(eta)} left" if eta else ""))
        st.button("Cancel the download", key="data_download_cancel", on_click=task.cancel)
    elif v.status == "failed":
        st.error(f"{v.error} The bundled 64 px copy stays in use.")
        if not st.session_state.get("_download_end_seen"):
            st.session_state["_download_end_seen"] = True
            st.rerun(scope="app")  # the whole page once, so that nothing polls any more
    elif v.status == "done" and v.result is not None and not st.session_state.get(f"{SWITCH}_done"):
        st.session_state[f"{SWITCH}_done"] = True  # switch once; the user may choose another folder later
        _switch_to(Path(v.result))  # validated by the download itself
        st.rerun(scope="app")
