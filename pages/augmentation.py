"""Task 3: data augmentation, previewed live on the same eight training images, then trained and compared."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import streamlit as st

from core.augment import preview
from core.config import AugmentConfig
from core.data import DatasetInfo, decode_image
from core.errors import SceneLabError
from ui import common
from ui import reference as ref

P = "augmentation"
SLIDERS = {  # field: (label, max, step, help)
    "rotation": ("Rotation (degrees)", 180.0, 5.0, "Random rotation up to this many degrees either way."),
    "width_shift": ("Width shift", 0.5, 0.05, "Random horizontal shift, as a fraction of the width."),
    "height_shift": ("Height shift", 0.5, 0.05, "Random vertical shift, as a fraction of the height."),
    "shear": ("Shear", 0.5, 0.05, "Random shear, as a fraction (Keras RandomShear; the study used degrees)."),
    "zoom": ("Zoom", 0.5, 0.05, "Random zoom in or out by up to this fraction."),
}
TOGGLES = {  # field: (label, help)
    "hflip": ("Horizontal flip", "Mirror left-right at random."),
    "vflip": ("Vertical flip", "Mirror upside down at random (rarely sensible for scenes)."),
    "grid_mask": ("GridMask", "keras-cv GridMask: blank out a random grid of squares."),
    "channel_shuffle": ("Channel shuffle", "keras-cv ChannelShuffle: permute the colour channels."),
}
AUG_FIELDS = tuple(SLIDERS) + tuple(TOGGLES)
STUDY_GRID = [
    AugmentConfig(),
    AugmentConfig(hflip=True),
    AugmentConfig(zoom=0.2),
    AugmentConfig(hflip=True, zoom=0.2),
    AugmentConfig(rotation=20.0),
    AugmentConfig(width_shift=0.2, height_shift=0.2),
    AugmentConfig(shear=0.2),
]
DEFAULTS = {
    **{f"{P}_{k}": 0.0 for k in SLIDERS},
    **{f"{P}_{k}": False for k in TOGGLES},
    f"{P}_epochs": 10,
    f"{P}_lr": 1e-3,
    f"{P}_preview_seed": 0,
}
FIELDS = {**{f"augment.{k}": f"{P}_{k}" for k in AUG_FIELDS}, "epochs": f"{P}_epochs", "lr": f"{P}_lr"}


def preview_files(info: DatasetInfo, n: int = 8) -> list[str]:
    """The same n training images every time: the first of each class in turn."""
    per_class: dict[int, list[str]] = {}
    for rel, label in info.files["train"]:
        per_class.setdefault(label, []).append(rel)
    out: list[str] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in per_class.values()):
        for label in sorted(per_class):
            if depth < len(per_class[label]) and len(out) < n:
                out.append(per_class[label][depth])
        depth += 1
    return out


@st.cache_data(max_entries=8, show_spinner=False)
def load_images(root: str, files: tuple[str, ...], size: int) -> np.ndarray:
    images = []
    for rel in files:
        try:
            images.append(decode_image(f"{root}/{rel}", size))
        except SceneLabError:
            images.append(np.full((size, size, 3), 200, np.uint8))  # an unreadable file: a grey tile
    return np.stack(images)


@st.cache_data(max_entries=64, show_spinner=False)
def augmented(images: np.ndarray, aug: dict, seed: int) -> np.ndarray:
    return preview(images, AugmentConfig(**aug), seed)


def mosaic(images: np.ndarray, columns: int = 4, gap: int = 2) -> np.ndarray:
    """Images in a grid with white gaps, upscaled (nearest) so small sizes stay visible."""
    n, h, w, _ = images.shape
    scale = max(1, 160 // h)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    rows = -(-n // columns)
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = img
    return out


def reshuffle() -> None:
    st.session_state[f"{P}_preview_seed"] = int(st.session_state[f"{P}_preview_seed"]) + 1


common.ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("3 · Augmentation")
st.markdown(
    "Show the network transformed copies of each training image so that it learns what does not matter "
    "(a mirrored coast is still a coast). Move a control and the preview below follows; then train with "
    "those settings and compare them in the table."
)
info = common.require_dataset()
s = common.settings()
common.setup_widgets(P, FIELDS, DEFAULTS)
common.show_loaded_extras(P)
ss = st.session_state

# -- the controls (outside any form: the preview redraws at once) -------------------------------------
controls, shown = st.columns([1, 2])
with controls:
    for field, (label, top, step, help_text) in SLIDERS.items():
        st.slider(label, 0.0, top, step=step, key=f"{P}_{field}", help=help_text, persist_state="session")
    for field, (label, help_text) in TOGGLES.items():
        st.toggle(label, key=f"{P}_{field}", help=help_text, persist_state="session")

aug = AugmentConfig(
    **{k: float(ss[f"{P}_{k}"]) for k in SLIDERS},
    **{k: bool(ss[f"{P}_{k}"]) for k in TOGGLES},
)
with shown:
    files = preview_files(info)
    images = load_images(str(info.root), tuple(files), s["image_size"])
    head = st.columns([3, 1])
    head[0].markdown(f"**Augmented** ({common.augment_label(dataclasses.asdict(aug))}) · preview seed {ss[f'{P}_preview_seed']}")
    head[1].button("Reshuffle", key=f"{P}_reshuffle", icon=":material/shuffle:", on_click=reshuffle,
                   help="Draw other random transformations of the same images.")
    try:
        out = augmented(images, dataclasses.asdict(aug), int(ss[f"{P}_preview_seed"]))
    except SceneLabError as exc:
        st.error(str(exc))
        out = images
    st.image(mosaic(out), width="stretch", caption=f"{len(files)} training images at {s['image_size']} px, augmented")
    with st.expander("The same images, unchanged"):
        st.image(mosaic(images), width="stretch", caption=", ".join(f.split("/")[-1] for f in files))

# -- training ------------------------------------------------------------------------------------------
st.subheader("Train with these augmentations")
with st.form(f"{P}_form"):
    f1, f2, f3 = st.columns([1, 1, 2])
    f1.number_input("Epochs", 1, 500, step=1, key=f"{P}_epochs", persist_state="session",
                    help="Augmented images go through the frozen backbone every epoch: slower than a plain head.")
    f2.number_input("Learning rate", 1e-6, 1.0, step=1e-4, format="%.1e", key=f"{P}_lr", persist_state="session")
    submitted = f3.form_submit_button("Train with these settings", type="primary", key=f"{P}_train", icon=":material/play_arrow:")
    grid = f3.form_submit_button(f"Queue the study's grid ({len(STUDY_GRID)} runs)", key=f"{P}_train_grid",
                                 help="; ".join(common.augment_label(dataclasses.asdict(a)) for a in STUDY_GRID))

cfg = common.page_config(P, {"phase": "head"}, {"augment": aug, "epochs": int(ss[f"{P}_epochs"]), "lr": float(ss[f"{P}_lr"])})
if cfg is None:
    st.stop()
run_id, record = common.lookup(cfg, s["data_root"])
if submitted and run_id:
    common.submit_runs(P, [cfg], s["data_root"])
elif grid and run_id:
    common.submit_runs(P, [cfg.replace(augment=a) for a in STUDY_GRID], s["data_root"])
common.track_jobs(P, watch=[run_id])

if record is not None:
    m = record.metrics
    common.result_caption(record)
    c = st.columns(4)
    c[0].metric("Test accuracy", common.fmt_acc(m.get("test_accuracy")))
    c[1].metric("Validation accuracy", common.fmt_acc(m.get("val_accuracy")))
    c[2].metric("Train accuracy", common.fmt_acc(m.get("train_accuracy")))
    c[3].metric("Training time", common.fmt_seconds(m.get("seconds")))
    st.altair_chart(common.curves_chart({record.run_id: record.history}), key=f"{P}_curves")
else:
    st.info("Not trained yet with these augmentations: press **Train with these settings**.")

# -- grid-search table ---------------------------------------------------------------------------------
st.subheader("Every stored augmentation run")
same_only = st.toggle("Only runs with the training settings above (epochs, learning rate, …)", value=True, key=f"{P}_same_only")
reference = {k: v for k, v in cfg.to_dict().items() if k != "augment"}
rows = []
for r in common.runs_like(info, cfg):
    run = dict(r.config["run"])
    run_aug = run.pop("augment", {}) or {}
    if same_only and run != reference:
        continue
    if not same_only and not any(run_aug.values()):
        continue
    rows.append(
        {
            "augmentation": common.augment_label(run_aug),
            **{k: run_aug.get(k) for k in AUG_FIELDS},
            "test_accuracy": r.metrics.get("test_accuracy"),
            "val_accuracy": r.metrics.get("val_accuracy"),
            "train_accuracy": r.metrics.get("train_accuracy"),
            "epochs": r.metrics.get("epochs_run"),
            "run_id": r.run_id,
        }
    )
st.caption(
    f"Reference: {ref.STUDY}'s best was {ref.AUGMENTATION_BEST['setting']} at {ref.AUGMENTATION_BEST['accuracy']:.3f}."
)
if rows:
    table = pd.DataFrame(rows).sort_values("test_accuracy", ascending=False)
    st.dataframe(
        table.style.highlight_max(subset=["test_accuracy"], color="#c8f7c5").format(
            {"test_accuracy": "{:.3f}", "val_accuracy": "{:.3f}", "train_accuracy": "{:.3f}"}, na_rep="–"
        ),
        key=f"{P}_table",
        hide_index=True,
    )
else:
    st.caption("No augmentation run is stored yet for this dataset, backbone, image size and settings.")
