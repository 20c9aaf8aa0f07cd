"""The backbone registry: :class:`BackboneSpec` and the table every backbone module registers in."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

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
    imagenet_top: Callable[[int], tuple[Any, list[Any]]] | None = (
        None  # size -> (base, [kernel, bias]) of its 1000-way top
    )
    explain_layer: str | None = None  # the block explanations open on: a middle one (8x8 at 128 px, not 4x4)
    block_name: Callable[[str], str] | None = None  # layer name -> plain words ("Block 4, unit 5")
    #: the size its ImageNet weights were trained at: where its own ImageNet predictions belong (Lite0's coffee
    #: photo, skimage.data.coffee(): "espresso" 85% at 224 px, "stethoscope" 91% at 64 px)
    imagenet_size: int = 224

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
