"""Registry of ImageNet backbones: the only place that knows a backbone by name.

Each backbone module (``densenet``, ``efficientnet_lite0``) declares one :class:`BackboneSpec`: how
to build it, its preprocessing, where its blocks end (``remove_blocks=K`` cuts it K blocks before its
end; for DenseNet121 after a transition pooling layer, as the reference study did: 7.04M, 4.85M,
1.44M, 0.38M parameters), which layers are offered for activation maps, how its ImageNet weights are
found, and whether it has an ImageNet top to predict with. Everything else asks the registry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, WeightsError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone, where to cut it, what to inspect, where its weights come from."""

    name: str
    label: str
    build: Callable[[int], Any]  # image_size -> keras.Model (no top, preprocessed input)
    preprocess: Callable[[], Any]  # -> keras layer mapping 0..255 RGB to the model's input
    cut_layers: tuple[str, ...]  # cut_layers[K] is the output layer when K blocks are removed
    block_word: str  # what its blocks are called ("dense block", "stage")
    block_outputs: Callable[[Sequence[str]], list[str]]  # layer names -> those offered for activation maps
    imagenet_weights: Callable[[], Path]  # path to ImageNet weights (may download), or WeightsError
    imagenet_cached: Callable[[], bool]  # usable ImageNet weights on disk now, without a download
    load_weights: Callable[[Any, Path], None]  # (built no-top model, weights file)
    weights_source: str
    offline: bool  # its ImageNet weights ship with pip (no download ever)
    imagenet_top: Callable[[int], tuple[Any, list[Any]]] | None = None  # size -> (base, [kernel, bias]) of its 1000-way top

    @property
    def blocks(self) -> int:
        """Blocks the backbone is made of (a cut keeps at least one)."""
        return len(self.cut_layers)

    def cut_layer(self, remove_blocks: int) -> str:
        if not 0 <= remove_blocks < len(self.cut_layers):
            raise ConfigError(
                f"{self.label} can have 0 to {len(self.cut_layers) - 1} blocks removed (--remove-blocks); "
                f"received {remove_blocks}."
            )
        return self.cut_layers[remove_blocks]

    def prefix_layer(self, remove_blocks: int, freeze_blocks: int) -> str | None:
        """The layer ending the frozen prefix when the first ``freeze_blocks`` blocks stay frozen.

        ``freeze_blocks=0`` freezes nothing (``None``); at least one block must remain trainable after
        ``remove_blocks`` blocks were removed from the end (the cut after block k ends block k)."""
        if freeze_blocks == 0:
            return None
        if not 0 < freeze_blocks < self.blocks - remove_blocks:
            raise ConfigError(
                f"Frozen first blocks (--freeze-blocks) must be 0 to {self.blocks - remove_blocks - 1} for "
                f"{self.label} with {remove_blocks} block(s) removed (one block at least must train); "
                f"received {freeze_blocks}."
            )
        return self.cut_layers[self.blocks - freeze_blocks]


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}; expected one of {', '.join(sorted(BACKBONES))}.")
    return BACKBONES[name]


def spec_of_model(model: Any) -> BackboneSpec | None:
    """The spec of a built backbone model (cut or not), by its name; None for a foreign model."""
    for spec in BACKBONES.values():
        if model.name == spec.name or model.name.startswith(f"{spec.name}_cut"):
            return spec
    return None


def default_backbone() -> str:
    """The first registered backbone whose ImageNet weights are at hand: DenseNet121 (the study's) once
    they are cached, else the offline EfficientNet-Lite0."""
    for spec in BACKBONES.values():
        if spec.offline or spec.imagenet_cached():
            return spec.name
    return next(iter(BACKBONES))


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


from core.backbones import densenet as _densenet  # noqa: E402,F401  (registers DenseNet121 first: the study's)
from core.backbones import efficientnet_lite0 as _lite0  # noqa: E402,F401
