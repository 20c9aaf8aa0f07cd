"""DenseNet121, the study's backbone: Keras' own, ImageNet weights downloaded once by Keras."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import WeightsError
from core.models.backbones.registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, keras_models_dir, register

logger = logging.getLogger(__name__)

DENSENET121_NOTOP_FILE = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
DENSENET121_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/" + DENSENET121_NOTOP_FILE
)
DENSENET121_NOTOP_MD5 = "30ee3e1110167f948a6b9946edeeb738"
_MIN_WEIGHTS_BYTES = 1_000_000  # a smaller file is a failed download, not the weights
# dense-block concatenations, transition pools and the final relu, input to output
_BLOCK = re.compile(r"^(conv\d+_block\d+_concat|pool\d+_pool|relu)$")


def _build(image_size: int) -> Any:
    import keras

    return keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(image_size, image_size, 3))


def _preprocess() -> Any:
    import keras

    return keras.layers.Normalization(
        mean=[m * 255.0 for m in IMAGENET_MEAN],
        variance=[(s * 255.0) ** 2 for s in IMAGENET_STD],
        name="preprocess",
    )


def _load(model: Any, path: Path) -> None:
    model.load_weights(str(path))


def _cached_file() -> Path:
    return keras_models_dir() / DENSENET121_NOTOP_FILE


def _cached() -> bool:
    path = _cached_file()
    return path.is_file() and path.stat().st_size > _MIN_WEIGHTS_BYTES


def _imagenet() -> Path:
    if _cached():
        return _cached_file()
    import keras

    try:  # Keras prints its progress on stdout; keep stdout for results (--json)
        with contextlib.redirect_stdout(sys.stderr):
            return Path(
                keras.utils.get_file(
                    DENSENET121_NOTOP_FILE, DENSENET121_NOTOP_URL, cache_subdir="models", file_hash=DENSENET121_NOTOP_MD5
                )
            )
    except Exception as exc:  # any download failure becomes one sentence
        logger.debug("DenseNet121 weights download failed: %s", exc)
        raise WeightsError(
            f"DenseNet121 ImageNet weights are not cached ({_cached_file()} is missing) and could not be "
            "downloaded (no internet?); connect once so Keras can fetch them, copy that file there, "
            "choose the efficientnet_lite0 backbone (its weights ship with pip), or use weights 'none'."
        ) from None


_UNIT = re.compile(r"^conv(\d+)_block(\d+)_concat$")
_POOL = re.compile(r"^pool(\d+)_pool$")


def block_name(layer: str) -> str:
    """Plain words for an offered layer: ``conv4_block5_concat`` -> "Block 4, unit 5"."""
    if m := _UNIT.match(layer):
        return f"Block {m.group(1)}, unit {m.group(2)}"
    if m := _POOL.match(layer):
        return f"End of block {m.group(1)} (downsampled)"
    return "Last conv layer" if layer == "relu" else layer


def block_outputs(names: Sequence[str]) -> list[str]:
    """``conv{2..5}_block{i}_concat``, ``pool{2,3,4}_pool`` and the final ``relu``, in order."""
    return [n for n in names if _BLOCK.match(n)]


SPEC = register(
    BackboneSpec(
        name="densenet121",
        label="DenseNet121",
        build=_build,
        preprocess=_preprocess,
        cut_layers=("relu", "pool4_pool", "pool3_pool", "pool2_pool"),
        block_word="dense block",
        block_outputs=block_outputs,
        imagenet_weights=_imagenet,
        imagenet_cached=_cached,
        load_weights=_load,
        weights_source="Keras download, cached in ~/.keras/models",
        offline=False,
        # the study looked at conv4_block5 (and the last conv layer): 8x8 at 128 px, 14x14 at 224 px
        explain_layer="conv4_block5_concat",
        block_name=block_name,
    )
)
