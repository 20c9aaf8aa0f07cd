"""Augmentation settings -> one Keras layer (plus keras-cv for the extras Keras lacks); previews.

The study used ``ImageDataGenerator`` (rotation in degrees, shifts/zoom as fractions, fill
"nearest"), which composes rotation, shift, shear, zoom and flips into one affine matrix per image
and resamples once. :class:`RandomAffine` does the same on whole batches inside tf.data: one matrix
per image, one bilinear resampling with edge-clamped ("nearest") fill, compiled with XLA. That is
several times faster than chaining Keras' RandomFlip/Rotation/Translation/Shear/Zoom layers, each of
which resamples the batch again (``bench/pipeline.py``).

Shear is a fraction here (as Keras ``RandomShear``), not degrees as in ``ImageDataGenerator``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core.config import AugmentConfig

logger = logging.getLogger(__name__)

FILL_MODE = "nearest"
_WARP: dict[str, Any] = {}


def _warp_fn() -> Any:
    """``warp(images, m)``: bilinear resampling of float images through per-image affine maps.

    ``m`` is ``[batch, 6]``: output pixel (x, y) reads input ``(m0 x + m1 y + m2, m3 x + m4 y + m5)``,
    clamped to the image (nearest fill). Compiled with XLA, which fuses the gathers and blends into one
    loop (the generic ImageProjectiveTransform kernel is about 4x slower on CPU)."""
    if "fn" not in _WARP:
        import tensorflow as tf

        def warp(images: Any, m: Any) -> Any:
            shape = tf.shape(images)
            b, h, w, c = shape[0], shape[1], shape[2], shape[3]
            hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
            ys = tf.range(hf)[None, :, None]
            xs = tf.range(wf)[None, None, :]
            m = m[:, :, None, None]
            x = tf.clip_by_value(m[:, 0] * xs + m[:, 1] * ys + m[:, 2], 0.0, wf - 1.0)
            y = tf.clip_by_value(m[:, 3] * xs + m[:, 4] * ys + m[:, 5], 0.0, hf - 1.0)
            x0, y0 = tf.floor(x), tf.floor(y)
            wx, wy = (x - x0)[..., None], (y - y0)[..., None]
            x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
            x1i, y1i = tf.minimum(x0i + 1, w - 1), tf.minimum(y0i + 1, h - 1)
            base = (tf.range(b) * h * w)[:, None, None]
            flat = tf.reshape(images, [-1, c])

            def at(yy: Any, xx: Any) -> Any:
                return tf.gather(flat, base + yy * w + xx)

            top = at(y0i, x0i) + (at(y0i, x1i) - at(y0i, x0i)) * wx
            bottom = at(y1i, x0i) + (at(y1i, x1i) - at(y1i, x0i)) * wx
            return top + (bottom - top) * wy

        _WARP["fn"] = tf.function(warp, jit_compile=True, reduce_retracing=True)
    return _WARP["fn"]


class RandomAffine(keras.layers.Layer):
    """Random rotation, shift, shear, zoom and flips applied as one affine resampling per image.

    Ranges follow the Keras layers they replace: rotation uniform in +-``rotation`` degrees, shifts
    uniform in +-fraction of the size, shear coefficients uniform in +-``shear`` on each axis, zoom
    scale uniform in [1 - zoom, 1 + zoom] on each axis independently, each flip with probability 0.5.
    """

    def __init__(
        self,
        rotation: float = 0.0,
        width_shift: float = 0.0,
        height_shift: float = 0.0,
        shear: float = 0.0,
        zoom: float = 0.0,
        hflip: bool = False,
        vflip: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation, self.width_shift, self.height_shift = rotation, width_shift, height_shift
        self.shear, self.zoom, self.hflip, self.vflip = shear, zoom, hflip, vflip
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n: Any, limit: float, centre: float = 0.0) -> Any:
        if not limit:
            return tf.fill([n], tf.constant(centre, tf.float32))
        return keras.random.uniform([n], centre - limit, centre + limit, seed=self.seed_generator)

    def _flip(self, n: Any, on: bool) -> Any:
        if not on:
            return tf.ones([n], tf.float32)
        coin = keras.random.uniform([n], 0.0, 1.0, seed=self.seed_generator)
        return tf.where(coin < 0.5, -1.0, 1.0)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        images = tf.convert_to_tensor(images, tf.float32)
        shape = tf.shape(images)
        n, hf, wf = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        theta = self._uniform(n, self.rotation * math.pi / 180.0)
        cos, sin = tf.cos(theta), tf.sin(theta)
        shx, shy = self._uniform(n, self.shear), self._uniform(n, self.shear)
        zx, zy = self._uniform(n, self.zoom, 1.0), self._uniform(n, self.zoom, 1.0)
        fx, fy = self._flip(n, self.hflip), self._flip(n, self.vflip)
        tx = self._uniform(n, self.width_shift) * wf
        ty = self._uniform(n, self.height_shift) * hf
        # output -> input map about the centre: rotation @ shear @ zoom @ flip, then the shift
        a00, a01 = (cos - sin * shy) * zx * fx, (cos * shx - sin) * zy * fy
        a10, a11 = (sin + cos * shy) * zx * fx, (sin * shx + cos) * zy * fy
        cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
        b0 = cx + tx - a00 * cx - a01 * cy
        b1 = cy + ty - a10 * cx - a11 * cy
        return _warp_fn()(images, tf.stack([a00, a01, b0, a10, a11, b1], axis=1))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "rotation": self.rotation,
                "width_shift": self.width_shift,
                "height_shift": self.height_shift,
                "shear": self.shear,
                "zoom": self.zoom,
                "hflip": self.hflip,
                "vflip": self.vflip,
                "seed": self.seed,
            }
        )
        return config


def random_affine(cfg: AugmentConfig, seed: int = 0, name: str = "aug_affine") -> Any:
    """The :class:`RandomAffine` layer for ``cfg``'s geometric transforms and flips."""
    return RandomAffine(
        rotation=cfg.rotation,
        width_shift=cfg.width_shift,
        height_shift=cfg.height_shift,
        shear=cfg.shear,
        zoom=cfg.zoom,
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        seed=seed,
        name=name,
    )


def build_augmenter(cfg: AugmentConfig, seed: int = 0) -> object | None:
    """A ``keras.Sequential`` applying ``cfg`` to float 0..255 batches, or ``None`` if identity."""
    if cfg.is_identity():
        return None
    import keras

    layers: list[object] = []
    geometric = (cfg.rotation, cfg.width_shift, cfg.height_shift, cfg.shear, cfg.zoom, cfg.hflip, cfg.vflip)
    if any(geometric):
        layers.append(random_affine(cfg, seed))
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
