"""Pictures from arrays, without matplotlib: colour maps, heatmap overlays, channel grids.

The colour maps (a jet-like map for heatmaps, a viridis-like one for feature maps, a blue-white-red one
for signed differences) are small numpy look-up tables; :func:`colorbar` draws one as a legend strip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from core.training.metrics import top_k  # noqa: F401 - moved to core.training.metrics; kept here until pages/activations.py imports it there


def _lut(anchors: Sequence[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    xs = np.array([a[0] for a in anchors])
    cols = np.array([a[1] for a in anchors], dtype=np.float64)
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, xs, cols[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


# jet-like: dark blue, blue, cyan, yellow, red, dark red
JET = _lut(
    [
        (0.0, (0, 0, 128)),
        (0.11, (0, 0, 255)),
        (0.36, (0, 255, 255)),
        (0.62, (255, 255, 0)),
        (0.87, (255, 0, 0)),
        (1.0, (128, 0, 0)),
    ]
)
# viridis-like: purple, blue, teal, green, yellow
VIRIDIS = _lut(
    [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)), (1.0, (253, 231, 37))]
)


# blue-white-red (diverging): negative blue, zero white, positive red
DIVERGING = _lut([(0.0, (33, 102, 172)), (0.25, (146, 197, 222)), (0.5, (247, 247, 247)), (0.75, (244, 165, 130)),
                  (1.0, (178, 24, 43))])  # fmt: skip


def colorbar(lut: np.ndarray = JET, width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal strip of ``lut`` from its low end (left) to its high end (right): a legend."""
    return np.repeat(colorize(np.linspace(0.0, 1.0, width), lut)[None], height, axis=0)


def colorize(values: np.ndarray, lut: np.ndarray = JET) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 through a 256-entry look-up table."""
    idx = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)) * 255.0, 0, 255).round().astype(np.intp)
    return lut[idx]


def overlay(
    image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, *, lut: np.ndarray = JET, signed: bool = False
) -> np.ndarray:
    """The heatmap (values in [0, 1], or in [-1, 1] when ``signed``) upsampled to the image, coloured
    through ``lut`` and blended over it."""
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an RGB image of shape (H, W, 3). Received: shape={image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha}")
    h, w = image.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"Expected a 2-D heatmap. Received: shape={heat.shape}")
    up = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    if signed:
        up = (up + 1.0) / 2.0
    colour = colorize(np.clip(up, 0.0, 1.0), lut).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def top_channels(maps: np.ndarray, n: int = 16) -> list[int]:
    """Indices of the ``n`` channels with the highest mean activation, most active first."""
    m = np.asarray(maps)
    if m.ndim != 3:
        raise ValueError(f"Expected feature maps of shape (h, w, channels). Received: shape={m.shape}")
    mean = m.reshape(-1, m.shape[-1]).mean(axis=0)
    return [int(i) for i in np.argsort(-mean, kind="stable")[: max(1, min(int(n), m.shape[-1]))]]


def channel_grid(maps: np.ndarray, n: int = 16, *, min_tile: int = 48, pad: int = 2) -> np.ndarray:
    """The ``n`` most active channels, each normalised to its own range, coloured and tiled.

    Small maps are enlarged by an integer factor (nearest neighbour, so a 4x4 map shows as 16
    clear cells) to at least ``min_tile`` pixels. Returns an RGB uint8 image.
    """
    m = np.asarray(maps, dtype=np.float32)
    channels = top_channels(m, n)
    h, w = m.shape[:2]
    scale = max(1, math.ceil(min_tile / max(h, w, 1)))
    th, tw = h * scale, w * scale
    cols = math.ceil(math.sqrt(len(channels)))
    rows = math.ceil(len(channels) / cols)
    grid = np.full((rows * th + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), 255, np.uint8)
    for k, c in enumerate(channels):
        tile = m[:, :, c]
        lo, hi = float(tile.min()), float(tile.max())
        norm = (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)
        big = np.repeat(np.repeat(norm, scale, axis=0), scale, axis=1)
        r, q = divmod(k, cols)
        y, x = pad + r * (th + pad), pad + q * (tw + pad)
        grid[y : y + th, x : x + tw] = colorize(big, VIRIDIS)
    return grid
