"""The sidebar every page shares: the dataset, the backbone and its weights, image size, test-time flip, seed."""

from __future__ import annotations

import streamlit as st

from core.backbones import BACKBONES, default_backbone, weights_status
from core.config import RUN_SETTINGS, SEED_MAX
from ui.datasource import dataset_section
from ui.resources import get_worker
from ui.settings import IMAGE_SIZES, WEIGHT_CHOICES


def draw_sidebar() -> None:
    """Dataset path and its report, backbone and weights with their status, image size, seed."""
    ss = st.session_state
    with st.sidebar:
        dataset_section()
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
        st.number_input("Seed", min_value=0, max_value=SEED_MAX, step=1, key="seed", help=RUN_SETTINGS["seed"].help)
        _sidebar_queue()


def _sidebar_queue() -> None:
    worker = get_worker()
    active = [j for j in worker.jobs() if j.active]
    if active:
        running = [j for j in active if j.status == "running"]
        text = f"Worker: {len(running)} training, {len(active) - len(running)} queued"
        st.caption(text)
