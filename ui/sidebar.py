"""The sidebar every page shares: the dataset, the backbone and its weights, image size, test-time flip, seed.

Every shared setting is kept under its own session key and drawn with :func:`ui.panel.bind`, so a run
interrupted before the sidebar was drawn (a Train pressed while the page loads) never loses it. The task
pages add their train panel (``ui.jobs``) below.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.config import DEFAULT_IMAGE_SIZE, RUN_SETTINGS, SEED_MAX
from core.data.arrays import DatasetInfo
from core.data.scan import image_size_of
from core.models.backbones import BACKBONES, default_backbone, weights_status
from ui.datasource import dataset_section
from ui.panel import bind
from ui.resources import get_worker
from ui.settings import (
    DEFAULT_SIZE_WHY,
    IMAGE_SIZES,
    SIZE_TOUCHED,
    WEIGHT_CHOICES,
    admin_section,
    user_section,
)


def _weights_label(choice: str) -> str:
    return {"imagenet": "ImageNet", "none": "random"}.get(choice, f"file: {Path(choice).name}")


def draw_sidebar() -> None:
    """Dataset path and its report, backbone and weights with their status, image size, seed, the user."""
    ss = st.session_state
    with st.sidebar:
        info = dataset_section()
        if ss.get("backbone") not in BACKBONES:
            ss["backbone"] = default_backbone()
        bind("backbone", st.selectbox, "Backbone", sorted(BACKBONES), format_func=lambda b: BACKBONES[b].label,
             help=RUN_SETTINGS["backbone"].help)  # fmt: skip
        choices = list(WEIGHT_CHOICES)
        if ss.get("weights") not in choices:  # a run trained from a weights file was opened: show that file
            if ss.get("weights") and Path(str(ss["weights"])).is_file():
                choices.append(str(ss["weights"]))
            else:
                ss["weights"] = "imagenet"
        bind("weights", st.radio, "Weights", choices, horizontal=True, format_func=_weights_label,
             help="ImageNet: the pretrained weights (the study's); random: nothing pretrained.")  # fmt: skip
        _weights_status(ss["backbone"], ss["weights"])
        _image_size(info)
        bind("tta", st.checkbox, RUN_SETTINGS["tta"].label, help=RUN_SETTINGS["tta"].help)
        bind("seed", st.number_input, "Seed", min_value=0, max_value=SEED_MAX, step=1, help=RUN_SETTINGS["seed"].help)
        user_section()
        admin_section()
        _sidebar_queue()


def _weights_status(backbone: str, weights: str) -> None:
    if weights == "imagenet":
        status = weights_status(backbone)
        if "offline" in status or "cached" in status:
            st.caption(f"{status} ({BACKBONES[backbone].weights_source}).")
        else:
            st.warning(f"{status}: training will try to download them (needs internet), or pick another backbone.")
    elif weights == "none":
        st.caption("Random initial weights: nothing pretrained, expect low accuracy.")
    else:
        st.caption("Weights from a file (a run trained with them was opened); its digest is checked when loaded.")


def _image_size(info: DatasetInfo | None) -> None:
    """The image-size slider: 128 px unless chosen, also for smaller images (upsampled, see ``DEFAULT_SIZE_WHY``)."""
    ss = st.session_state
    native = image_size_of(info) if info is not None else None
    sizes = sorted(set(IMAGE_SIZES) | {int(ss.get("image_size", DEFAULT_IMAGE_SIZE))})

    def chosen(value: int) -> int:
        ss[SIZE_TOUCHED] = True
        return int(value)

    bind("image_size", st.select_slider, "Image size (px)", sizes, to_value=chosen,
         help=f"Images are resized to this square size (the study: 256 px originals). {DEFAULT_SIZE_WHY}")  # fmt: skip
    if native:
        upsampled = native < int(ss["image_size"])
        st.caption(
            f"This dataset's images are about {native} px"
            + (f", shown to the network at {ss['image_size']} px: {DEFAULT_SIZE_WHY}" if upsampled else ".")
        )


def _sidebar_queue() -> None:
    worker = get_worker()
    active = [j for j in worker.jobs() if j.active]
    if worker.local_where != "this machine":  # a Dask cluster: say where runs train, or why they cannot
        problem = worker.problem()
        (st.error if problem else st.caption)(problem or worker.describe())
    if active:
        running = [j for j in active if j.status == "running"]
        where = sorted({j.where for j in running if j.where})
        on = f" on {', '.join(where)}" if where else ""
        st.caption(f"Worker: {len(running)} training{on}, {len(active) - len(running)} queued")
