"""6 Activations: what a network's conv blocks respond to, and where it looks (Grad-CAM).

Pick a trained run (or the ImageNet backbone alone) and an image (a test-set image or an upload);
the page shows the prediction, the most active channels of any conv block and Grad-CAM for the
predicted or a chosen class. All the work is in :mod:`core.activations`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.activations import Inspector, imagenet_inspector
from core.decode import UPLOAD_TYPES, decode_image, decode_upload
from core.errors import SceneLabError, StoreError
from core.render import channel_grid, overlay, top_channels, top_k
from core.runs import load_classifier
from core.scan import test_images
from core.store import Store
from ui.compat import ensure_router
from ui.settings import settings

IMAGENET = "imagenet"  # the model-source option that is not a run id
SOURCE_TEST, SOURCE_UPLOAD = "Test-set image", "Upload a photo"
DISPLAY = 288  # pixels: images are enlarged to this for display
TOP = 5


# -- caches ------------------------------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner=False)
def _store(artifacts: str) -> Store:
    return Store(artifacts)


@st.cache_data(ttl=10, max_entries=4, show_spinner=False)
def _run_rows(artifacts: str) -> list[dict[str, Any]]:
    """One small dict per stored run, newest first."""
    rows = []
    for r in _store(artifacts).list_runs():
        run, ds = r.config.get("run", {}), r.config.get("dataset", {})
        rows.append(
            {
                "run_id": r.run_id,
                "dataset": ds.get("name") or Path(str(ds.get("root", "?"))).name,
                "root": ds.get("root"),
                "backbone": run.get("backbone", "?"),
                "weights": run.get("weights", "?"),
                "image_size": run.get("image_size"),
                "test_accuracy": r.metrics.get("test_accuracy"),
                "classes": list(ds.get("classes") or []),
                "created": r.config.get("created") or "",
            }
        )
    return sorted(rows, key=lambda row: row["created"], reverse=True)


@st.cache_resource(max_entries=4, show_spinner=False)
def _run_inspector(run_id: str, artifacts: str) -> Inspector:
    """A trained run's classifier, taken apart once (layers compile in the background when first used)."""
    record = _store(artifacts).load_run(run_id)
    if record is None:
        raise StoreError(f"Run {run_id} is no longer in {artifacts}; pick another run or train it again.")
    return Inspector(load_classifier(record), classes=record.config["dataset"]["classes"])


@st.cache_resource(max_entries=4, show_spinner=False)
def _imagenet_inspector(backbone: str, image_size: int) -> Inspector:
    return imagenet_inspector(backbone, image_size)


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _test_images(root: str) -> dict[str, list[str]]:
    return test_images(root)


@st.cache_data(max_entries=64, show_spinner=False)
def _decode_path(path: str, size: int, mtime_ns: int) -> np.ndarray:
    return decode_image(path, size)


@st.cache_data(max_entries=16, show_spinner=False)
def _decode_upload(data: bytes, size: int, name: str) -> np.ndarray:
    return decode_upload(data, size, name=f"The file {name}")


def _enlarge(image: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    if image.shape[0] >= size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _run_label(row: dict[str, Any]) -> str:
    acc = row["test_accuracy"]
    acc_text = f"test acc {acc:.3f}" if isinstance(acc, (int, float)) else "test acc –"
    return f"{row['dataset']} · {row['backbone']} ({row['weights']}) · {row['image_size']} px · {acc_text} · {row['run_id']}"


def _bar_chart(pairs: list[tuple[str, float]]) -> alt.Chart:
    df = pd.DataFrame(pairs, columns=["class", "probability"])
    order = list(df["class"])
    bars = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            y=alt.Y("class:N", sort=order, title=None),
            tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
        )
    )
    text = bars.mark_text(align="left", dx=3).encode(text=alt.Text("probability:Q", format=".1%"))
    return alt.layer(bars, text).properties(height=alt.Step(26))


# -- the page ---------------------------------------------------------------------------------------
ensure_router()  # a deep link on a fresh server: hand over to app.py first
st.title("6 · Activations")
st.caption(
    "What each conv block responds to, and where the network looks when it decides: the most active "
    "channels of a block's output, and Grad-CAM (the class score's gradient, averaged per channel, "
    "weighs the channels; red is where the evidence for the class is)."
)

s = settings()
try:
    rows = _run_rows(s["artifacts"])
except SceneLabError as exc:
    st.error(str(exc))
    rows = []
runs = {row["run_id"]: row for row in rows}
imagenet_label = "ImageNet backbone only (the sidebar's backbone, no fine-tuning)"

col_model, col_image = st.columns([3, 2])
with col_model:
    source_model = st.selectbox(
        "Model",
        [*runs, IMAGENET],
        format_func=lambda k: imagenet_label if k == IMAGENET else _run_label(runs[k]),
        key="act_model",
        help="A trained run from the artifacts folder, or the sidebar's backbone with its ImageNet weights.",
    )
    if not runs:
        st.caption(f"No trained runs in {s['artifacts']} yet: train one on pages 0-5 to inspect it here.")
    if source_model == IMAGENET:
        st.caption(
            f"{s['backbone']} with its ImageNet weights at {s['image_size']} px; "
            "change the backbone and image size in the sidebar."
        )

if source_model == IMAGENET:
    row = None
    classes_root = s["data_root"]
    context = f"ImageNet **{s['backbone']}** (not fine-tuned) · **{s['image_size']} px**"
else:
    row = runs[source_model]
    classes_root = str(row["root"] or "")
    context = (
        f"run `{row['run_id']}` · dataset **{row['dataset']}** · **{row['backbone']}** ({row['weights']} weights) "
        f"· **{row['image_size']} px**"
    )

# the model (loaded once per run, shared by every session)
try:
    with st.spinner("Loading the model (first time only)…"):
        if row is None:
            inspector = _imagenet_inspector(s["backbone"], s["image_size"])
        else:
            inspector = _run_inspector(row["run_id"], s["artifacts"])
except SceneLabError as exc:
    st.error(str(exc))
    st.stop()
size = inspector.image_size
classes = inspector.classes or []

# the image
image: np.ndarray | None = None
image_error = False
true_class: str | None = None
with col_image:
    source = st.radio("Image", (SOURCE_TEST, SOURCE_UPLOAD), horizontal=True, key="act_source")
    if source == SOURCE_UPLOAD:
        upload = st.file_uploader(
            "Photo (JPEG, PNG, BMP, GIF or WEBP, at most 40 megapixels)", type=list(UPLOAD_TYPES), key="act_upload"
        )
        if upload is not None:
            try:
                image = _decode_upload(upload.getvalue(), size, upload.name)
                image_name = upload.name
            except SceneLabError as exc:
                st.error(str(exc))
                image_error = True
    else:
        try:
            per_class = _test_images(classes_root) if classes_root else {}
        except SceneLabError as exc:
            st.warning(f"{exc} Upload a photo instead.")
            per_class = {}
        per_class = {c: paths for c, paths in per_class.items() if paths}
        if not per_class:
            if not classes_root:
                st.info("No dataset folder is set (sidebar): upload a photo instead.")
        else:
            pick_cols = st.columns(2)
            cls = pick_cols[0].selectbox("Class", list(per_class), key="act_class")
            path = pick_cols[1].selectbox(
                "Test image", per_class[cls], format_func=lambda p: Path(p).name, key="act_image"
            )
            try:
                image = _decode_path(path, size, Path(path).stat().st_mtime_ns)
                image_name = f"test/{cls}/{Path(path).name}"
                true_class = cls
            except (SceneLabError, OSError) as exc:
                st.error(f"The test image {path} cannot be read ({exc}); pick another one.")
                image_error = True

if image is None:
    if not image_error:
        st.info("Choose a test-set image or upload a photo to see its activations.")
    st.stop()

# layer and class pickers
pick_layer, pick_class, pick_alpha = st.columns([2, 2, 1])
layer = pick_layer.selectbox(
    "Conv block",
    inspector.layers,
    index=len(inspector.layers) - 1,
    key="act_layer",
    help="Block outputs from the input (top of the list) to the backbone's last conv layer (the default).",
)
cam_class: int | None = None
if inspector.has_head:
    chosen_class = pick_class.selectbox(
        "Grad-CAM for",
        [-1, *range(len(classes))],
        format_func=lambda i: "the predicted class" if i < 0 else classes[i],
        key="act_cam_class",
    )
    cam_class = None if chosen_class < 0 else int(chosen_class)
alpha = pick_alpha.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="act_alpha")

cold = not inspector.is_warm(layer)
t0 = time.perf_counter()
try:
    with st.spinner(f"First look at {layer}: computing it uncompiled while it compiles…" if cold else "Computing…"):
        if inspector.has_head:
            result = inspector.inspect(image, layer, cam_class)
            maps = result.maps
        else:
            result = None
            maps = inspector.feature_maps(image, layer)
except (SceneLabError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
seconds = time.perf_counter() - t0

col_img, col_pred = st.columns(2)
with col_img:
    st.subheader("Image")
    st.image(_enlarge(image), caption=f"{image_name}, as the model sees it ({size}×{size} px)", width=DISPLAY)
with col_pred:
    st.subheader("Prediction")
    if result is None:
        st.info(
            f"{s['backbone']} without a classification head gives feature maps only: no prediction and no "
            "Grad-CAM. Pick a trained run, or the efficientnet_lite0 backbone, which comes with its ImageNet top."
        )
    else:
        ranked = top_k(result.probs, classes, k=min(TOP, len(classes)))
        best, p_best = ranked[0]
        verdict = ""
        if true_class is not None and row is not None:
            verdict = " ✓ correct" if best == true_class else f" ✗ (true class: {true_class})"
        st.markdown(f"Predicted: **{best}** ({p_best:.1%}){verdict}")
        st.altair_chart(_bar_chart(ranked), key="act_chart")
    st.caption(context)

h, w, c = maps.shape
n = min(16, c)
col_grid, col_cam = st.columns(2)
with col_grid:
    st.subheader("Channel activations")
    chosen = top_channels(maps, n)
    st.image(
        channel_grid(maps, n, min_tile=64),
        caption=(
            f"The {n} most active of {c} channels of {layer} ({h}×{w}), each scaled to its own range "
            f"(yellow high, purple low). Channels: {', '.join(map(str, chosen))}."
        ),
        width=DISPLAY,
    )
with col_cam:
    st.subheader("Grad-CAM")
    if result is None:
        st.caption("Not available without a classification head.")
    else:
        explained = classes[result.class_index]
        which = "predicted class" if cam_class is None else "chosen class"
        st.image(
            overlay(_enlarge(image), result.heatmap, alpha=alpha),
            caption=f"Where the evidence for {explained} ({which}) is, at {layer} ({h}×{w}, upsampled).",
            width=DISPLAY,
        )
st.caption(
    f"Computed in {seconds * 1000:.0f} ms"
    + (" (uncompiled: this layer is being compiled in the background, later images will be faster)." if cold else ".")
)
