"""Task 3: data augmentation, previewed live on the same eight training images, then trained and compared."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import streamlit as st

from core.augment import preview
from core.config import AUGMENT_SETTINGS, AugmentConfig
from core.data import DatasetInfo, decode_image
from core.errors import SceneLabError
from ui import handover, panel
from ui import reference as ref
from ui.charts import curves_chart
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.format import augment_label, fmt_acc, fmt_seconds, result_caption
from ui.jobs import submit_runs, track_jobs
from ui.resources import lookup, runs_like
from ui.settings import settings

P = "augmentation"
AUG_FIELDS = tuple(AUGMENT_SETTINGS)
SLIDERS = tuple(f for f, info in AUGMENT_SETTINGS.items() if info.kind == "float")
TOGGLES = tuple(f for f, info in AUGMENT_SETTINGS.items() if info.kind == "bool")
SLIDER_MAX = {"rotation": 180.0}  # the fractions' sliders stop at 0.5
STUDY_GRID = [
    AugmentConfig(),
    AugmentConfig(hflip=True),
    AugmentConfig(zoom=0.2),
    AugmentConfig(hflip=True, zoom=0.2),
    AugmentConfig(rotation=20.0),
    AugmentConfig(width_shift=0.2, height_shift=0.2),
    AugmentConfig(shear=0.2),
]
FIELDS = (*(f"augment.{k}" for k in AUG_FIELDS), "epochs", "lr")
DEFAULTS = {**panel.defaults(P, FIELDS, {"epochs": 10}), f"{P}_preview_seed": 0}


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


ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("3 · Augmentation")
st.markdown(
    "Show the network transformed copies of each training image so that it learns what does not matter "
    "(a mirrored coast is still a coast). Move a control and the preview below follows; then train with "
    "those settings and compare them in the table."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
handover.show_loaded_extras(P)
ss = st.session_state

# -- the controls (outside any form: the preview redraws at once) -------------------------------------
controls, shown = st.columns([1, 2])
with controls:
    for field in SLIDERS:
        panel.widget(P, f"augment.{field}", style="slider", max_value=SLIDER_MAX.get(field, 0.5))
    for field in TOGGLES:
        panel.widget(P, f"augment.{field}")

aug = panel.values(P, [f"augment.{k}" for k in AUG_FIELDS])["augment"]
with shown:
    files = preview_files(info)
    images = load_images(str(info.root), tuple(files), s["image_size"])
    head = st.columns([3, 1])
    head[0].markdown(f"**Augmented** ({augment_label(dataclasses.asdict(aug))}) · preview seed {ss[f'{P}_preview_seed']}")
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
    panel.widget(P, "epochs", f1, help="Augmented images go through the frozen backbone every epoch: slower than a plain head.")
    panel.widget(P, "lr", f2, help=None)
    submitted = f3.form_submit_button("Train with these settings", type="primary", key=f"{P}_train", icon=":material/play_arrow:")
    grid = f3.form_submit_button(f"Queue the study's grid ({len(STUDY_GRID)} runs)", key=f"{P}_train_grid",
                                 help="; ".join(augment_label(dataclasses.asdict(a)) for a in STUDY_GRID))

cfg = handover.page_config(P, {"phase": "head"}, {"augment": aug, **panel.values(P, ("epochs", "lr"))})
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
if submitted and run_id:
    submit_runs(P, [cfg], s["data_root"])
elif grid and run_id:
    submit_runs(P, [cfg.replace(augment=a) for a in STUDY_GRID], s["data_root"])
track_jobs(P, watch=[run_id])

if record is not None:
    m = record.metrics
    result_caption(record)
    c = st.columns(4)
    c[0].metric("Test accuracy", fmt_acc(m.get("test_accuracy")))
    c[1].metric("Validation accuracy", fmt_acc(m.get("val_accuracy")))
    c[2].metric("Train accuracy", fmt_acc(m.get("train_accuracy")))
    c[3].metric("Training time", fmt_seconds(m.get("seconds")))
    st.altair_chart(curves_chart({record.run_id: record.history}), key=f"{P}_curves")
else:
    st.info("Not trained yet with these augmentations: press **Train with these settings**.")

# -- grid-search table ---------------------------------------------------------------------------------
st.subheader("Every stored augmentation run")
same_only = st.toggle("Only runs with the training settings above (epochs, learning rate, …)", value=True, key=f"{P}_same_only")
reference = {k: v for k, v in cfg.to_dict().items() if k != "augment"}
rows = []
for r in runs_like(info, cfg):
    run = dict(r.config["run"])
    run_aug = run.pop("augment", {}) or {}
    if same_only and run != reference:
        continue
    if not same_only and not any(run_aug.values()):
        continue
    rows.append(
        {
            "augmentation": augment_label(run_aug),
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
