"""Run settings as frozen dataclasses, with a stable hash.

A run is fully described by a :class:`RunConfig`; its id in the artifact store is the hash of
that config together with the dataset fingerprint and the weights identity (see ``core.store``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError

OPTIMIZERS = ("sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam")
PHASES = ("head", "full", "head+full")


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentations (Keras ``ImageDataGenerator`` semantics) plus keras-cv extras.

    ``rotation`` is in degrees; shifts, shear and zoom are fractions of the image size.
    """

    rotation: float = 0.0
    width_shift: float = 0.0
    height_shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    hflip: bool = False
    vflip: bool = False
    grid_mask: bool = False
    channel_shuffle: bool = False

    def is_identity(self) -> bool:
        """True when no augmentation is applied at all."""
        return self == AugmentConfig()

    def is_hflip_only(self) -> bool:
        """True when horizontal flipping is the only augmentation (a head can then train on the cached
        features of each image and of its mirror image, without running the backbone per epoch)."""
        return self == AugmentConfig(hflip=True)

    def validate(self) -> None:
        if not 0.0 <= self.rotation <= 180.0:
            raise ConfigError(
                f"Augmentation rotation must be between 0 and 180 degrees; received {self.rotation}."
            )
        for name in ("width_shift", "height_shift", "shear", "zoom"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"Augmentation {name.replace('_', ' ')} must be a fraction in [0, 1); "
                    f"received {value}."
                )


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run's result."""

    backbone: str = "densenet121"
    weights: str = "imagenet"
    remove_blocks: int = 0
    freeze_blocks: int = 0
    image_size: int = 224
    train_per_class: int | None = None
    val_fraction: float = 0.15
    phase: str = "head"
    epochs: int = 20
    full_epochs: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    full_lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 32
    dropout: float = 0.0
    batch_norm: bool = False
    dense_1024: bool = False
    early_stopping_patience: int = 0
    reduce_lr_patience: int = 0
    reduce_lr_factor: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: bool = False  # test-time flip: val/test probabilities averaged over each image and its mirror
    seed: int = 0

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Raise :class:`ConfigError` with one sentence for the first bad setting; return self."""
        if self.phase not in PHASES:
            raise ConfigError(f"Unknown phase {self.phase!r}; expected one of {', '.join(PHASES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"Unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}."
            )
        if not 0 <= self.remove_blocks <= 3:
            raise ConfigError(
                f"remove_blocks must be 0, 1, 2 or 3; received {self.remove_blocks}."
            )
        if self.freeze_blocks < 0:
            raise ConfigError(
                f"freeze_blocks must be 0 (train every block) or more; received {self.freeze_blocks}."
            )
        if not 32 <= self.image_size <= 512:
            raise ConfigError(
                f"Image size must be between 32 and 512 pixels; received {self.image_size}."
            )
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ConfigError(
                f"Images per class must be at least 1; received {self.train_per_class}."
            )
        if not 0.0 < self.val_fraction < 0.9:
            raise ConfigError(
                f"Validation fraction must be in (0, 0.9); received {self.val_fraction}."
            )
        if self.epochs < 1 or (self.full_epochs is not None and self.full_epochs < 1):
            raise ConfigError(f"Epochs must be at least 1; received {self.epochs}.")
        if not 0.0 < self.lr <= 10.0 or (self.full_lr is not None and not 0.0 < self.full_lr <= 10.0):
            raise ConfigError(f"Learning rate must be in (0, 10]; received {self.lr}.")
        if self.weight_decay < 0.0:
            raise ConfigError(f"Weight decay must be 0 or more; received {self.weight_decay}.")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"Momentum must be in [0, 1); received {self.momentum}.")
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(f"Batch size must be between 1 and 1024; received {self.batch_size}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"Dropout must be in [0, 1); received {self.dropout}.")
        if self.early_stopping_patience < 0 or self.reduce_lr_patience < 0:
            raise ConfigError("Patience values must be 0 (off) or more.")
        if not 0.0 < self.reduce_lr_factor < 1.0:
            raise ConfigError(
                f"Reduce-LR factor must be in (0, 1); received {self.reduce_lr_factor}."
            )
        self.augment.validate()
        return self

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown run setting(s) {', '.join(unknown)}; expected only {', '.join(sorted(known))}."
            )
        values = dict(data)
        if isinstance(values.get("augment"), dict):
            aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
            bad = sorted(set(values["augment"]) - aug_known)
            if bad:
                raise ConfigError(f"Unknown augmentation setting(s) {', '.join(bad)}.")
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    # -- derived --------------------------------------------------------------------------------
    @property
    def uses_feature_cache(self) -> bool:
        """The head trains on cached backbone features: without augmentation, or with horizontal flips
        only (then on the cached features of the images and of their mirror images)."""
        return self.phase in ("head", "head+full") and (self.augment.is_identity() or self.augment.is_hflip_only())

    @property
    def resolved_full_epochs(self) -> int:
        return self.full_epochs if self.full_epochs is not None else self.epochs

    @property
    def resolved_full_lr(self) -> float:
        """Fine-tuning the whole network uses a learning rate ten times lower unless set."""
        return self.full_lr if self.full_lr is not None else self.lr / 10.0


def stable_hash(payload: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable payload, independent of key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
