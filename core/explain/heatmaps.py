"""Where a classifier looks: Grad-CAM, Grad-CAM++, Score-CAM and occlusion, and before/after fine-tuning.

Every method gives a heatmap in [0, 1] for one image and one class (the predicted one by default):

* **Grad-CAM** (Selvaraju et al., 2017): the class score's gradient at a block, averaged over space,
  weighs the block's channels; the map is the ReLU of the weighted sum. One forward and one partial
  backward pass (:class:`core.explain.activations.Inspector`, compiled per block).
* **Grad-CAM++** (Chattopadhay et al., 2018): the same pass, but each channel's weight sums only the
  positive gradients, each weighted by ``g² / (2g² + ΣA·g³)`` (the closed form for an exponential
  score), so several separate instances of a class all count, not only the largest.
* **Score-CAM** (Wang et al., 2020): no gradients; each channel, upsampled and scaled to [0, 1], masks
  the (preprocessed) image, and the class probability of the masked image is that channel's weight. One
  forward pass per channel: only the ``max_channels`` channels whose maps vary most are used (as in
  "Faster Score-CAM"), which bounds its cost on a CPU (BENCHMARKS.md §4).
* **Occlusion** (Zeiler & Fergus, 2014): a square a quarter of the image wide, filled with the
  preprocessed zero (the mean colour), slides over a grid; a cell's heat is the mean drop of the class
  probability over the squares that cover it. Independent of the block; one pass per position.

:func:`compare` explains one image twice, by the ImageNet backbone (not fine-tuned) and by a fine-tuned
run, at the same block with the same method, and their difference.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import DEFAULT_IMAGE_SIZE
from core.data.decode import ImageDecodeError, decode_image
from core.errors import ConfigError
from core.explain import render
from core.explain.activations import Inspector, imagenet_inspector
from core.explain.methods import EXPLAIN_METHODS
from core.models.backbones import get_backbone
from core.store.atomic import atomic_write_bytes
from core.store.folders import RunRecord
from core.training.ensemble import explained_record
from core.training.metrics import top_k
from core.training.runs import load_classifier

__all__ = [
    "METHODS",
    "Comparison",
    "Explanation",
    "class_index_of",
    "compare",
    "difference",
    "explain",
    "explain_image",
    "inspector_for",
]

METHODS = EXPLAIN_METHODS
MAX_CHANNELS = 64  # Score-CAM: channels used (one forward pass each)
OCCLUSION_CELLS = 12  # occlusion: the map is OCCLUSION_CELLS x OCCLUSION_CELLS cells
OCCLUSION_WINDOW = 3  # cells per side of the occluding square (a quarter of the image)


@dataclass(frozen=True)
class Explanation:
    """One method's answer for one image, block and class."""

    method: str
    layer: str
    heatmap: np.ndarray  # (h, w) in [0, 1]
    probs: np.ndarray  # (classes,) of the unaltered image
    class_index: int  # the class explained
    maps: np.ndarray  # (h, w, channels) the block's output
    seconds: float


@dataclass(frozen=True)
class Comparison:
    """The same image, block and method, before (ImageNet) and after fine-tuning, and after - before."""

    before: Explanation | None  # None when the ImageNet model has no head (feature energy in ``before_map``)
    after: Explanation
    before_map: np.ndarray  # (h, w) in [0, 1]: ``before.heatmap``, or where the block's channels fire
    difference: np.ndarray  # (h, w) in [-1, 1]: after - before


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    return method


def normalised(heat: np.ndarray) -> np.ndarray:
    """``heat`` with negatives cut and its maximum scaled to 1 (all zeros stays zeros)."""
    h = np.maximum(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0)
    top = float(h.max()) if h.size else 0.0
    return h / top if top > 0 else h


def grad_cam(maps: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(Σ_k mean(g_k) · A_k), scaled to [0, 1]."""
    weights = grads.mean(axis=(0, 1))
    return normalised((maps * weights).sum(axis=-1))


def grad_cam_pp(maps: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++: channel weights Σ α·ReLU(g) with α = g² / (2g² + ΣA·g³), then as Grad-CAM."""
    g2 = grads.astype(np.float64) ** 2
    g3 = g2 * grads
    total = maps.astype(np.float64).sum(axis=(0, 1))  # ΣA per channel
    denom = 2.0 * g2 + total * g3
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=np.abs(denom) > 1e-12)
    weights = (alpha * np.maximum(grads, 0.0)).sum(axis=(0, 1))
    return normalised((maps * weights).sum(axis=-1))


def _upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(h, w, k) -> (k, size, size, 1), bilinear, each channel scaled to [0, 1]."""
    import tensorflow as tf

    up = np.asarray(tf.image.resize(maps[None].astype(np.float32), (size, size), method="bilinear"))[0]
    up = np.moveaxis(up, -1, 0)
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    return np.divide(up - lo, span, out=np.zeros_like(up), where=span > 1e-12)[..., None]


def score_cam(
    inspector: Inspector, image: np.ndarray, maps: np.ndarray, class_index: int, max_channels: int = MAX_CHANNELS
) -> np.ndarray:
    """Score-CAM over the ``max_channels`` channels whose maps vary most."""
    variance = maps.reshape(-1, maps.shape[-1]).var(axis=0)
    channels = np.argsort(-variance, kind="stable")[: max(1, int(max_channels))]
    channels = channels[variance[channels] > 0]
    if len(channels) == 0:
        return np.zeros(maps.shape[:2], np.float32)
    masks = _upsample(maps[:, :, channels], inspector.image_size)
    probs = inspector.scores(inspector.prepared(image) * masks)
    weights = probs[:, class_index]
    return normalised((maps[:, :, channels] * weights).sum(axis=-1))


def occlusion(
    inspector: Inspector,
    image: np.ndarray,
    class_index: int,
    base_prob: float,
    cells: int = OCCLUSION_CELLS,
    window: int = OCCLUSION_WINDOW,
) -> np.ndarray:
    """Mean drop of the class probability when a square of ``window`` cells covers each cell."""
    x = inspector.prepared(image)[0]
    edges = np.linspace(0, inspector.image_size, cells + 1).round().astype(int)
    positions = [(i, j) for i in range(cells - window + 1) for j in range(cells - window + 1)]
    batch = np.repeat(x[None], len(positions), axis=0)
    for n, (i, j) in enumerate(positions):
        batch[n, edges[i] : edges[i + window], edges[j] : edges[j + window]] = 0.0
    probs = inspector.scores(batch)[:, class_index]
    total, count = np.zeros((cells, cells)), np.zeros((cells, cells))
    for n, (i, j) in enumerate(positions):
        total[i : i + window, j : j + window] += base_prob - probs[n]
        count[i : i + window, j : j + window] += 1
    return normalised(total / np.maximum(count, 1))


def explain(
    inspector: Inspector,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    class_index: int | None = None,
    max_channels: int = MAX_CHANNELS,
) -> Explanation:
    """``method``'s heatmap of ``class_index`` (default the predicted class) at ``layer`` (default the
    model's middle block, :attr:`Inspector.default_layer`) for one image of the model's size."""
    check_method(method)
    layer = inspector.default_layer if layer is None else inspector.check_layer(layer)
    t0 = time.perf_counter()
    base = inspector.inspect(image, layer, class_index)
    assert base.grads is not None
    cls = base.class_index
    if method == "gradcam":
        heat = grad_cam(base.maps, base.grads)
    elif method == "gradcam++":
        heat = grad_cam_pp(base.maps, base.grads)
    elif method == "scorecam":
        heat = score_cam(inspector, image, base.maps, cls, max_channels)
    else:
        heat = occlusion(inspector, image, cls, float(base.probs[cls]))
    return Explanation(method, layer, heat.astype(np.float32), base.probs, cls, base.maps, time.perf_counter() - t0)


def energy(maps: np.ndarray) -> np.ndarray:
    """Where a block's channels fire, whatever the class: the mean of their positive parts, in [0, 1]
    (for a backbone without a classification head, which has no class to explain)."""
    return normalised(np.maximum(maps, 0.0).mean(axis=-1))


def _resized(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if heat.shape == shape:
        return heat
    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(shape[::-1], Image.Resampling.BILINEAR))


def difference(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """after - before (both in [0, 1]; ``before`` resized to ``after``'s shape): in [-1, 1], positive where
    the fine-tuned model looks more than the ImageNet one."""
    return np.clip(after - _resized(before, after.shape), -1.0, 1.0).astype(np.float32)


def compare(
    before: Inspector,
    after: Inspector,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    class_index: int | None = None,
) -> Comparison:
    """``after`` (a fine-tuned run) explains ``class_index`` (default its predicted class) and ``before`` the
    same class when it has the same classes (the head-only run of the same settings: what fine-tuning
    changed), else its own top class (the ImageNet backbone, same size), with the same method at the same
    block; without a head, ``before`` shows where that block fires."""
    layer = after.default_layer if layer is None else after.check_layer(layer)
    if layer not in before.layers:
        raise ConfigError(f"The ImageNet backbone has no block {layer!r} to compare; pick another block.")
    if before.image_size != after.image_size:
        raise ConfigError(
            f"The two models take {before.image_size} and {after.image_size} px images; compare them at one size."
        )
    late = explain(after, image, method=method, layer=layer, class_index=class_index)
    if before.has_head:
        same = before.classes is not None and list(before.classes) == list(after.classes or [])
        early: Explanation | None = explain(before, image, method=method, layer=layer,
                                            class_index=late.class_index if same else None)  # fmt: skip
        before_map = early.heatmap
    else:
        early = None
        before_map = energy(before.feature_maps(image, layer))
    return Comparison(early, late, before_map, difference(before_map, late.heatmap))


def class_index_of(classes: Sequence[str], name: str | None) -> int | None:
    """The index of class ``name`` (None: the predicted class); one sentence when it is not a class."""
    if name is None or name == "":
        return None
    names = list(classes)
    if name in names:
        return names.index(name)
    lowered = [c.lower() for c in names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    shown = ", ".join(names[:8]) + (f" … ({len(names)} in all)" if len(names) > 8 else "")
    raise ConfigError(f"Unknown class {name!r} for this model; expected one of {shown}.")


# -- one image from the command line ---------------------------------------------------------------------
def inspector_for(
    run: RunRecord | None = None,
    *,
    backbone: str | None = None,
    weights: str = "imagenet",
    image_size: int | None = None,
) -> Inspector:
    """The Inspector of a stored run, or of a backbone with its ImageNet top (not fine-tuned)."""
    if run is not None:
        run = explained_record(run)  # an ensemble: its first run's network
        return Inspector(load_classifier(run), classes=run.config["dataset"]["classes"], background_compile=False)
    if backbone is None:
        raise ConfigError("Give a run (--run) or a backbone (--backbone) to explain with.")
    spec = get_backbone(backbone)
    if weights != "imagenet" or spec.imagenet_top is None:
        raise ConfigError(
            f"{spec.label} with {weights} weights has no classification head, so there is no class to explain; "
            "give a trained run (--run) or a backbone with its ImageNet top (efficientnet_lite0, weights imagenet)."
        )
    return imagenet_inspector(backbone, image_size or DEFAULT_IMAGE_SIZE, background_compile=False)


def explain_image(
    image_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    run: RunRecord | None = None,
    backbone: str | None = None,
    weights: str = "imagenet",
    image_size: int | None = None,
    block: str | None = None,
    method: str = "gradcam",
    class_name: str | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """Explain one image file and write its overlay as a PNG: what ``python -m core explain`` prints."""
    check_method(method)
    inspector = inspector_for(run, backbone=backbone, weights=weights, image_size=image_size)
    try:
        image = decode_image(image_path, inspector.image_size)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"The image {image_path} could not be used ({exc}); give a JPEG, PNG, BMP, GIF, "
                               "WEBP or TIFF file.") from None  # fmt: skip
    if block is not None and block not in inspector.layers:
        raise ConfigError(
            f"Unknown block {block!r}; expected one of {', '.join(inspector.layers)} (default {inspector.default_layer})."
        )
    classes = inspector.classes or []
    e = explain(inspector, image, method=method, layer=block, class_index=class_index_of(classes, class_name))
    shown = max(256, inspector.image_size)
    big = np.asarray(Image.fromarray(image).resize((shown, shown), Image.Resampling.BILINEAR))
    path = Path(out)
    buf = io.BytesIO()
    Image.fromarray(render.overlay(big, e.heatmap)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    h, w = e.heatmap.shape
    return {
        "top": [{"class": c, "probability": round(p, 4)} for c, p in top_k(e.probs, classes, top)],
        "class": classes[e.class_index], "class_index": e.class_index, "block": e.layer,
        "block_name": inspector.block_name(e.layer), "block_size": list(inspector.layer_shape(e.layer)[:2]),
        "map_size": [h, w], "method": method, "method_name": METHODS[method],
        "model": f"run {run.run_id}" if run is not None else f"{backbone} (ImageNet, not fine-tuned)",
        "image": str(image_path), "image_size": inspector.image_size, "out": str(path.resolve()),
        "seconds": round(e.seconds, 3),
    }  # fmt: skip
