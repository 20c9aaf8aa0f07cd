"""Registry of ImageNet backbones: the only place that knows a backbone by name.

Each backbone module (``densenet``, ``efficientnet_lite0``) declares one :class:`BackboneSpec`: how
to build it, its preprocessing, where its blocks end (``remove_blocks=K`` cuts it K blocks before its
end; for DenseNet121 after a transition pooling layer, as the reference study did: 7.04M, 4.85M,
1.44M, 0.38M parameters), which layers are offered for activation maps, how its ImageNet weights are
found, and whether it has an ImageNet top to predict with. Everything else asks the registry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import WeightsError, first_line
from core.models.backbones import densenet as _densenet  # noqa: F401  (registers DenseNet121 first: the study's)
from core.models.backbones import efficientnet_lite0 as _lite0  # noqa: F401
from core.models.backbones.registry import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    get_backbone,
    keras_models_dir,
    register,
    spec_of_model,
)

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_BACKBONE",
    "STUDY_BACKBONE",
    "BackboneSpec",
    "ResolvedWeights",
    "build_base",
    "cut_base",
    "default_backbone",
    "file_digest",
    "get_backbone",
    "keras_models_dir",
    "register",
    "resolve_weights",
    "spec_of_model",
    "weights_status",
]

#: ``RunConfig``'s default backbone, the study's. It enters the id of every run stored with the default, so it
#: never changes; no entry point starts from it (``DEFAULT_BACKBONE``).
STUDY_BACKBONE = _densenet.SPEC.name
#: What every entry point (the app, ``python -m core train``/``tune``/``reproduce``/``describe``/``project``,
#: links) starts from: its ImageNet weights ship with pip, so a fresh offline install trains at once, where
#: DenseNet121's need a download.
DEFAULT_BACKBONE = _lite0.SPEC.name


def default_backbone() -> str:
    """The backbone a session or command starts from when none is given (:data:`DEFAULT_BACKBONE`)."""
    return DEFAULT_BACKBONE


# -- weights ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedWeights:
    """Weights to load (``path`` None means random init) and an identity that enters cache keys."""

    request: str
    path: Path | None
    identity: str


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256 (the identity of a weights file)."""
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
    return ResolvedWeights(str(path), path, f"{backbone}:file:{file_digest(path)}")


def weights_status(backbone: str) -> str:
    """A short phrase for the UI: are ImageNet weights available right now?"""
    spec = get_backbone(backbone)
    if not spec.offline:
        return "ImageNet weights cached" if spec.imagenet_cached() else "ImageNet weights need a download"
    try:
        spec.imagenet_weights()
    except WeightsError as exc:
        return f"ImageNet weights unavailable: {exc}"
    return "ImageNet weights available offline"


def build_base(backbone: str, image_size: int, weights: ResolvedWeights) -> Any:
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
                f"{first_line(exc, 160)}); give weights saved from the same backbone."
            ) from None
    return base


def cut_base(base: Any, backbone: str, remove_blocks: int) -> Any:
    """The backbone truncated ``remove_blocks`` blocks before its end (functional sub-model)."""
    import keras

    name = get_backbone(backbone).cut_layer(remove_blocks)
    if remove_blocks == 0:
        return base
    return keras.Model(base.input, base.get_layer(name).output, name=f"{base.name}_cut{remove_blocks}")

