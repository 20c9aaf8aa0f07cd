"""Augmentation settings -> Keras preprocessing layers (keras-cv for the extras Keras lacks).

The study used ``ImageDataGenerator`` (rotation in degrees, shifts/zoom as fractions, fill
"nearest"); the Keras 3 layers below reproduce those transforms on batches inside tf.data.
Shear is a fraction here (Keras ``RandomShear``), not degrees as in ``ImageDataGenerator``.
"""

from __future__ import annotations

import logging

import numpy as np

from core.config import AugmentConfig

logger = logging.getLogger(__name__)

FILL_MODE = "nearest"


def build_augmenter(cfg: AugmentConfig, seed: int = 0) -> object | None:
    """A ``keras.Sequential`` applying ``cfg`` to float 0..255 batches, or ``None`` if identity."""
    if cfg.is_identity():
        return None
    import keras

    layers: list[object] = []
    if cfg.hflip or cfg.vflip:
        mode = "horizontal_and_vertical" if cfg.hflip and cfg.vflip else ("horizontal" if cfg.hflip else "vertical")
        layers.append(keras.layers.RandomFlip(mode, seed=seed, name="aug_flip"))
    if cfg.rotation:
        layers.append(
            keras.layers.RandomRotation(cfg.rotation / 360.0, fill_mode=FILL_MODE, seed=seed + 1, name="aug_rotation")
        )
    if cfg.width_shift or cfg.height_shift:
        layers.append(
            keras.layers.RandomTranslation(
                cfg.height_shift, cfg.width_shift, fill_mode=FILL_MODE, seed=seed + 2, name="aug_shift"
            )
        )
    if cfg.shear:
        layers.append(
            keras.layers.RandomShear(cfg.shear, cfg.shear, fill_mode=FILL_MODE, seed=seed + 3, name="aug_shear")
        )
    if cfg.zoom:
        layers.append(
            keras.layers.RandomZoom(cfg.zoom, cfg.zoom, fill_mode=FILL_MODE, seed=seed + 4, name="aug_zoom")
        )
    if cfg.grid_mask or cfg.channel_shuffle:
        import keras_cv

        if cfg.grid_mask:
            layers.append(keras_cv.layers.GridMask(seed=seed + 5, name="aug_grid_mask"))
        if cfg.channel_shuffle:
            layers.append(keras_cv.layers.ChannelShuffle(groups=3, seed=seed + 6, name="aug_channel_shuffle"))
    return keras.Sequential(layers, name="augment")


def preview(images: np.ndarray, cfg: AugmentConfig, seed: int = 0) -> np.ndarray:
    """The same uint8 images augmented with ``cfg`` (deterministic for a given ``seed``)."""
    augmenter = build_augmenter(cfg, seed)
    if augmenter is None:
        return images.copy()
    out = augmenter(images.astype("float32"), training=True)  # type: ignore[operator]
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)
