"""The augmentation preview: the same few training images, unchanged and augmented, as one picture each."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.config import AugmentConfig
from core.data.arrays import DatasetInfo, decode_image
from core.data.augment import preview
from core.errors import SceneLabError


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
