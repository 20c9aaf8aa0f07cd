"""The sidebar every page shares, and the first screen when no usable dataset is set."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.backbones import BACKBONES, default_backbone, weights_status
from core.data import DatasetInfo
from ui.resources import dataset_report, get_worker
from ui.settings import IMAGE_SIZES, WEIGHT_CHOICES, settings


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
