"""6 Activations: where a network looks, and what fine-tuning changed about it.

Pick a trained run (or the ImageNet backbone alone, at the size its weights were trained at) and an image
(a test-set image, an upload or the camera). A fine-tuned run is explained beside the head-only run of the
same settings (its backbone frozen), both for the same class, at the same block with the same method
(Grad-CAM, Grad-CAM++, Score-CAM or occlusion), with the difference of the two maps: what fine-tuning
changed. Then the most active channels of the block. The work is in :mod:`core.explain.heatmaps` and
:mod:`core.explain.activations`.
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
    "Where a network finds the evidence for a class, and what fine-tuning changed about it: the same image and "
    "the same class explained by a head trained on the frozen ImageNet backbone and by the fine-tuned run of the "
    "same settings, side by side."
)

s = settings()
try:
    rows = ux.run_rows(s["artifacts"])
except SceneLabError as exc:
    st.error(str(exc))
    rows = []
runs = {row["run_id"]: row for row in rows}
backbone_name = ux.backbone_label(s["backbone"])
imagenet_px = ux.imagenet_size(s["backbone"])
imagenet_label = f"ImageNet {backbone_name} only, not fine-tuned ({imagenet_px} px)"

col_model, col_image = st.columns([3, 2])
with col_model:
    source_model = st.selectbox(
        "Model", [*ux.opening_order(rows), IMAGENET],
        format_func=lambda k: imagenet_label if k == IMAGENET else ux.run_label(runs[k]), key="act_model",
        help="A trained run from the artifacts folder (a fine-tuned run with its head-only twin first, then by "
        "validation accuracy), or the sidebar's backbone with its ImageNet weights.",
    )  # fmt: skip
    if not runs:
        st.caption("No trained runs yet: train one on pages 0-5 to compare it with the ImageNet backbone here.")

row = None if source_model == IMAGENET else runs[source_model]
if row is None:
    model_key: tuple[str, ...] = (IMAGENET, s["backbone"], str(imagenet_px))
    classes_root = s["data_root"]
    context = (f"ImageNet **{backbone_name}** (not fine-tuned) · **{imagenet_px} px**, the size its ImageNet weights "
               f"were trained at (the sidebar's {s['image_size']} px is for training)")  # fmt: skip
else:
    model_key = ("run", row["run_id"], s["artifacts"])
    classes_root = str(row["root"] or "")
    context = (f"run `{row['run_id']}` ({ux.PHASE_WORDS.get(row['phase'], row['phase'])}) · dataset "
               f"**{row['dataset']}** · **{ux.backbone_label(row['backbone'])}** ({row['weights']} weights) · "
               f"**{row['image_size']} px**")  # fmt: skip

try:
    with st.spinner("Loading the model (first time only)…"):
        inspector = (
            ux.run_inspector(row["run_id"], s["artifacts"])
            if row
            else ux.backbone_inspector(s["backbone"], imagenet_px)
        )
except SceneLabError as exc:
    st.error(str(exc))
    st.stop()
size = inspector.image_size
classes = inspector.classes or []

# what fine-tuning changed: the head-only run of the same settings (backbone frozen) beside the fine-tuned run
twin = runs.get(row["twin"]) if row is not None and row.get("twin") else None
before_key: tuple[str, ...] | None = None
with col_model:
    if row is not None and row["phase"] != "head" and twin is not None:
        if st.toggle("Compare with the head-only run of these settings (backbone frozen)", value=True,
                     key="act_compare", help=f"Run {twin['run_id']}: the same settings without fine-tuning; both "
                     "explain the same class, so the difference is what fine-tuning changed."):  # fmt: skip
            before_key = ("run", twin["run_id"], s["artifacts"])
    elif row is not None and row["phase"] != "head":
        st.caption("No head-only run of these settings is stored: train **Head only** with them on page 0 to see "
                   "what fine-tuning changed.")  # fmt: skip
    elif row is not None and row["weights"] != "imagenet":
        st.caption(
            f"This run started from {row['weights']} weights, not ImageNet ones, and its backbone stayed frozen."
        )
    elif row is not None:
        st.caption("Head only, backbone frozen: the backbone is ImageNet's, unchanged. "
                   + (f"Its fine-tuned twin is run `{twin['run_id']}`: pick it to see what fine-tuning changed."
                      if twin is not None else "Fine-tune these settings on page 0 to see what fine-tuning changes."))  # fmt: skip

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
        if inspector.has_head and before_key is not None:
            comparison = ux.compared(model_key, before_key, image, layer, method, cam_class)
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
    st.image(
        overlay(big, heat, alpha=alpha if not signed else max(alpha, 0.7), **lut), caption=caption, width="stretch"
    )


st.subheader("Before and after fine-tuning" if comparison is not None else "Where the model looks")
if comparison is not None:
    cols = st.columns(4)
    b = comparison.before
    with cols[0]:
        st.markdown("**The image**")
        st.image(big, caption=f"{image_name}, as the model sees it ({size}×{size} px)", width="stretch")
    with cols[1]:
        st.markdown("**Before: head only, backbone frozen**", help=f"Run {twin['run_id']}: the same settings, only "
                    "its head trained on the ImageNet backbone.")  # fmt: skip
        if b is not None:
            ranked = top_k(b.probs, classes, k=min(TOP, len(classes)))
            show_map(comparison.before_map, f"{METHODS[method]} of {classes[b.class_index]} "
                     f"({b.probs[b.class_index]:.1%}){verdict(ranked[0][0])}")  # fmt: skip
            st.altair_chart(ux.probability_bars(ranked, highlight=classes[b.class_index]), key="act_before_chart")
    with cols[2]:
        st.markdown(
            f"**After: {ux.PHASE_WORDS[row['phase']]}**", help=f"Run {row['run_id']}: its {len(classes)} classes."
        )
        ranked = top_k(after.probs, classes, k=min(TOP, len(classes)))
        explained = classes[after.class_index]
        which = "predicted" if cam_class is None else "chosen"
        show_map(
            after.heatmap,
            f"{METHODS[method]} of {explained} ({which}, {after.probs[after.class_index]:.1%}){verdict(ranked[0][0])}",
        )
        st.altair_chart(ux.probability_bars(ranked, highlight=explained), key="act_after_chart")
    with cols[3]:
        st.markdown("**What fine-tuning changed**", help="The after map minus the before map, cell by cell, for the "
                    "same class.")  # fmt: skip
        show_map(comparison.difference, f"After − before, both for {explained}: red where the fine-tuned run looks "
                 "more, blue where it looks less", signed=True)  # fmt: skip
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
            st.info(f"{backbone_name} without a classification head gives feature maps only: no prediction and no "
                    f"class to explain. Pick a trained run, or {ux.backbones_with_top()}, which comes with its ImageNet "
                    "top.")  # fmt: skip
        else:
            ranked = top_k(after.probs, classes, k=min(TOP, len(classes)))
            st.markdown(f"Predicted: **{ranked[0][0]}** ({ranked[0][1]:.1%}){verdict(ranked[0][0])}")
            st.altair_chart(ux.probability_bars(ranked, highlight=classes[after.class_index]), key="act_chart")
    ux.legends(with_difference=False)
st.caption(
    context
    + f" · computed in {seconds * 1000:.0f} ms"
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
