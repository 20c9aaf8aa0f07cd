"""6 Activations: where a network looks, and what fine-tuning changed about it.

Pick a trained run (or the ImageNet backbone alone) and an image (a test-set image, an upload or the
camera). For a run that started from ImageNet weights the page explains the image twice, side by side:
by the ImageNet backbone before fine-tuning and by the run after it, at the same block with the same
method (Grad-CAM, Grad-CAM++, Score-CAM or occlusion), with the difference of the two maps; then the most
active channels of the block. All the work is in :mod:`core.explain.heatmaps` and :mod:`core.explain.activations`.
"""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from core.errors import SceneLabError
from core.explain.heatmaps import METHODS, energy
from core.explain.render import DIVERGING, channel_grid, overlay, top_channels, top_k
from ui import explain as ux
from ui.compat import ensure_router
from ui.settings import settings

IMAGENET = "imagenet"  # the model-source option that is not a run id
TOP = 5

ensure_router()  # a deep link on a fresh server: hand over to app.py first
st.title("6 · Activations")
st.caption(
    "Where a network finds the evidence for a class, and what fine-tuning changed about it: the same image "
    "explained by the ImageNet backbone before fine-tuning and by your trained run after it, side by side."
)

s = settings()
try:
    rows = ux.run_rows(s["artifacts"])
except SceneLabError as exc:
    st.error(str(exc))
    rows = []
runs = {row["run_id"]: row for row in rows}
imagenet_label = "ImageNet backbone only (the sidebar's backbone, no fine-tuning)"

col_model, col_image = st.columns([3, 2])
with col_model:
    source_model = st.selectbox(
        "Model", [*runs, IMAGENET], format_func=lambda k: imagenet_label if k == IMAGENET else ux.run_label(runs[k]),
        key="act_model", help="A trained run from the artifacts folder (best test accuracy first), or the sidebar's "
        "backbone with its ImageNet weights.",
    )  # fmt: skip
    if not runs:
        st.caption("No trained runs yet: train one on pages 0-5 to compare it with the ImageNet backbone here.")

row = None if source_model == IMAGENET else runs[source_model]
if row is None:
    model_key: tuple[str, ...] = (IMAGENET, s["backbone"], str(s["image_size"]))
    classes_root = s["data_root"]
    context = f"ImageNet **{s['backbone']}** (not fine-tuned) · **{s['image_size']} px**"
else:
    model_key = ("run", row["run_id"], s["artifacts"])
    classes_root = str(row["root"] or "")
    context = (f"run `{row['run_id']}` · dataset **{row['dataset']}** · **{row['backbone']}** ({row['weights']} "
               f"weights) · **{row['image_size']} px**")  # fmt: skip

try:
    with st.spinner("Loading the model (first time only)…"):
        inspector = ux.run_inspector(row["run_id"], s["artifacts"]) if row else ux.backbone_inspector(s["backbone"], s["image_size"])
except SceneLabError as exc:
    st.error(str(exc))
    st.stop()
size = inspector.image_size
classes = inspector.classes or []

# the ImageNet backbone before fine-tuning, beside a run that started from it
before = None
before_note = ""
with col_model:
    if row is not None and row["weights"] == "imagenet":
        show_before = st.toggle("Compare with the ImageNet backbone before fine-tuning", value=True, key="act_compare",
                                help="The same backbone with its ImageNet weights, at the run's image size.")  # fmt: skip
        if show_before:
            try:
                before = ux.backbone_inspector(row["backbone"], size)
            except SceneLabError as exc:
                before_note = f"The ImageNet backbone cannot be shown: {exc}"
    elif row is not None:
        before_note = f"This run started from {row['weights']} weights, not ImageNet ones: nothing to compare it with."
    if before_note:
        st.caption(before_note)

with col_image:
    image, image_name, true_class, image_error = ux.pick_image("act", classes_root, size)
if image is None:
    if not image_error:
        st.info("Choose a test-set image, upload a photo or take one with the camera to see where the model looks.")
    st.stop()

# block, method, class, opacity
layers = inspector.layers
pick_layer, pick_method, pick_class, pick_alpha = st.columns([2, 4.4, 2, 1.2])
layer = pick_layer.selectbox(
    "Block", layers, index=layers.index(inspector.default_layer), format_func=lambda n: ux.block_label(inspector, n),
    key="act_layer", help="From the input (top) to the last conv layer (bottom), with the size of each block's map at "
    "this image size. The default is a middle block: deeper blocks see more of the scene but have coarser maps.",
)  # fmt: skip
method = pick_method.radio(
    "Method", list(METHODS), format_func=METHODS.get, horizontal=True, key="act_method",
    help=" ".join(f"**{METHODS[m]}**: {h}" for m, h in ux.METHOD_HELP.items()),
)  # fmt: skip
cam_class: int | None = None
if inspector.has_head:
    chosen = pick_class.selectbox(
        "Explain the class", [-1, *range(len(classes))], format_func=lambda i: "the predicted class" if i < 0 else classes[i],
        key="act_cam_class", help="The class whose evidence the maps show; the ImageNet backbone always explains its "
        "own top class.",
    )  # fmt: skip
    cam_class = None if chosen < 0 else int(chosen)
alpha = pick_alpha.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="act_alpha")
st.caption(ux.block_caption(inspector, layer) + f" {ux.METHOD_HELP[method]}")

cold = inspector.has_head and not inspector.is_warm(layer)
t0 = time.perf_counter()
comparison = after = None
try:
    with st.spinner("First look at this block: computing it uncompiled while it compiles…" if cold else "Computing…"):
        if inspector.has_head and before is not None:
            comparison = ux.compared(model_key, (IMAGENET, row["backbone"], str(size)), image, layer, method, cam_class)
            after = comparison.after
        elif inspector.has_head:
            after = ux.explained(model_key, image, layer, method, cam_class)
        maps = after.maps if after is not None else inspector.feature_maps(image, layer)
except (SceneLabError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
seconds = time.perf_counter() - t0
big = ux.enlarge(image)


def verdict(best: str) -> str:
    if true_class is None or row is None:
        return ""
    return " ✓ correct" if best == true_class else f" ✗ (true class: {true_class})"


def show_map(heat: np.ndarray, caption: str, *, signed: bool = False) -> None:
    lut = {"lut": DIVERGING, "signed": True} if signed else {}
    st.image(overlay(big, heat, alpha=alpha if not signed else max(alpha, 0.7), **lut), caption=caption, width="stretch")


st.subheader("Before and after fine-tuning" if comparison is not None else "Where the model looks")
if comparison is not None:
    cols = st.columns(4)
    b = comparison.before
    with cols[0]:
        st.markdown("**The image**")
        st.image(big, caption=f"{image_name}, as the model sees it ({size}×{size} px)", width="stretch")
    with cols[1]:
        st.markdown("**Before: ImageNet backbone**", help="Not fine-tuned: its 1000 ImageNet classes.")
        if b is not None:
            names = ux.backbone_inspector(row["backbone"], size).classes or []
            ranked = top_k(b.probs, names, k=TOP)
            show_map(comparison.before_map, f"{METHODS[method]} of its top class, {names[b.class_index]} ({ranked[0][1]:.1%})")
            st.altair_chart(ux.probability_bars(ranked, highlight=names[b.class_index]), key="act_before_chart")
        else:
            show_map(comparison.before_map, "No ImageNet head here: where the block's channels fire, whatever the class")
    with cols[2]:
        st.markdown("**After: your fine-tuned run**", help=f"Run {row['run_id']}: its {len(classes)} classes.")
        ranked = top_k(after.probs, classes, k=min(TOP, len(classes)))
        explained = classes[after.class_index]
        which = "predicted" if cam_class is None else "chosen"
        show_map(after.heatmap, f"{METHODS[method]} of {explained} ({which}, {after.probs[after.class_index]:.1%}){verdict(ranked[0][0])}")
        st.altair_chart(ux.probability_bars(ranked, highlight=explained), key="act_after_chart")
    with cols[3]:
        st.markdown("**What changed**", help="The after map minus the before map, cell by cell.")
        show_map(comparison.difference, "After − before: red where the run looks more, blue where it looks less",
                 signed=True)
    ux.legends(with_difference=True)
else:
    cols = st.columns([1, 1, 1.3])
    with cols[0]:
        st.markdown("**The image**")
        st.image(big, caption=f"{image_name}, as the model sees it ({size}×{size} px)", width="stretch")
    with cols[1]:
        if after is not None:
            explained = classes[after.class_index]
            which = "predicted class" if cam_class is None else "chosen class"
            st.markdown(f"**{METHODS[method]}**")
            show_map(after.heatmap, f"Where the evidence for {explained} ({which}) is")
        else:
            st.markdown("**Where the block fires**")
            show_map(energy(maps), "No classification head: the mean of the block's channels, whatever the class")
    with cols[2]:
        st.markdown("**Prediction**")
        if after is None:
            st.info(f"{s['backbone']} without a classification head gives feature maps only: no prediction and no "
                    "class to explain. Pick a trained run, or the efficientnet_lite0 backbone, which comes with its "
                    "ImageNet top.")  # fmt: skip
        else:
            ranked = top_k(after.probs, classes, k=min(TOP, len(classes)))
            st.markdown(f"Predicted: **{ranked[0][0]}** ({ranked[0][1]:.1%}){verdict(ranked[0][0])}")
            st.altair_chart(ux.probability_bars(ranked, highlight=classes[after.class_index]), key="act_chart")
    ux.legends(with_difference=False)
st.caption(
    context + f" · computed in {seconds * 1000:.0f} ms"
    + (" (uncompiled: this block is being compiled in the background, later images will be faster)." if cold else ".")
)

h, w, c = maps.shape
n = min(16, c)
with st.expander(f"The block's most active channels ({n} of {c})", expanded=after is None):
    grid_col, text_col = st.columns([1, 1])
    grid_col.image(channel_grid(maps, n, min_tile=64), width="stretch",
                   caption=f"The {n} most active of {c} channels of {layer} ({h}×{w}), each scaled to its own range "
                   f"(yellow high, purple low). Channels: {', '.join(map(str, top_channels(maps, n)))}.")  # fmt: skip
    text_col.markdown(
        "Each tile is one channel of the block's output: a detector the network learned. Early blocks respond to "
        "edges and colours, deeper ones to parts and textures of scenes. The heatmaps above weigh these channels "
        "by how much each one counts for the explained class."
    )
