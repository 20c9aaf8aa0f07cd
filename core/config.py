"""Run settings as frozen dataclasses, with a stable hash.

A run is fully described by a :class:`RunConfig`; its id in the artifact store is the hash of that
config together with the dataset fingerprint and the weights identity (``core.training.train.run_id_for``).
Every field is declared once here with its :class:`~core.fields.Setting` (label, help, range, CLI
flag, searchable), from which validation, the CLI options and the pages' widgets are derived.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.fields import setting, settings_of, validate_fields
from core.models.backbones import DEFAULT_BACKBONE, STUDY_BACKBONE

OPTIMIZERS = ("sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam")
PHASES = ("head", "full", "head+full")
SEED_MAX = 2**32 - 1  # NumPy's and TensorFlow's seeds are 32-bit


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentations (Keras ``ImageDataGenerator`` semantics) plus keras-cv extras.

    ``rotation`` is in degrees; shifts, shear and zoom are fractions of the image size.
    """

    rotation: float = setting(0.0, "Rotation", "Random rotation up to this many degrees either way.", "float",
                              low=0.0, high=180.0, unit="degrees", step=5.0)
    width_shift: float = setting(0.0, "Width shift", "Random horizontal shift, as a fraction of the width.",
                                 "float", low=0.0, high=1.0, high_open=True, step=0.05)
    height_shift: float = setting(0.0, "Height shift", "Random vertical shift, as a fraction of the height.",
                                  "float", low=0.0, high=1.0, high_open=True, step=0.05)
    shear: float = setting(0.0, "Shear", "Random shear, as a fraction (Keras RandomShear; the study used degrees).",
                           "float", low=0.0, high=1.0, high_open=True, step=0.05)
    zoom: float = setting(0.0, "Zoom", "Random zoom in or out by up to this fraction.", "float",
                          low=0.0, high=1.0, high_open=True, step=0.05)
    hflip: bool = setting(False, "Horizontal flip", "Mirror left-right at random.", "bool")
    vflip: bool = setting(False, "Vertical flip", "Mirror upside down at random (rarely sensible for scenes).", "bool")
    grid_mask: bool = setting(False, "GridMask", "keras-cv GridMask: blank out a random grid of squares.", "bool")
    channel_shuffle: bool = setting(False, "Channel shuffle", "keras-cv ChannelShuffle: permute the colour channels.",
                                    "bool")

    def is_identity(self) -> bool:
        """True when no augmentation is applied at all."""
        return self == AugmentConfig()

    def is_hflip_only(self) -> bool:
        """True when horizontal flipping is the only augmentation (a head can then train on the cached
        features of each image and of its mirror image, without running the backbone per epoch)."""
        return self == AugmentConfig(hflip=True)

    def validate(self) -> AugmentConfig:
        validate_fields(self, prefix="aug-")
        return self


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run's result."""

    # backbone, weights, image size, test-time flip, seed and the data they read are the study's fixed
    # conditions, not hyperparameters: the search never draws them (searchable=False)
    backbone: str = setting(STUDY_BACKBONE, "Backbone", "The ImageNet network the run starts from: densenet121 "
                            "(the study's) or efficientnet_lite0 (its weights ship with pip).", "str", shared=True,
                            searchable=False)
    weights: str = setting("imagenet", "Weights", "imagenet, none (random initial weights), or the path of a "
                           "weights file.", "str", shared=True, searchable=False)
    remove_blocks: int = setting(0, "Blocks removed", "Blocks cut off the end of the backbone (0 keeps it whole).",
                                 "int", low=0, high=3)
    freeze_blocks: int = setting(0, "Frozen first blocks", "When the backbone trains, keep its first K blocks frozen, "
                                 "compute their output once (cached) and train only the rest; 0 trains every block.",
                                 "int", low=0, ui_max=3)
    image_size: int = setting(224, "Image size", "Images are resized to this square size.", "int",
                              low=32, high=512, unit="px", shared=True, searchable=False, link="size")
    train_per_class: int | None = setting(None, "Training images per class", "Draw this many training images "
                                          "per class (the study's small set is 50); all when empty.", "int",
                                          low=1, optional=True, none_label="all", searchable=False)
    val_fraction: float = setting(0.15, "Validation fraction", "Share of each class held out of train for "
                                  "validation (early stopping, reduce-LR and the search look only at it).", "float",
                                  low=0.0, high=0.9, low_open=True, high_open=True, searchable=False)
    phase: str = setting("head", "What to train", "head: the new head on the frozen backbone; full: every layer; "
                         "head+full: the head, then the whole network (the study's task 0).", "choice", choices=PHASES)
    epochs: int = setting(20, "Epochs", "Epochs of training (of the head phase for head+full).", "int", low=1,
                          ui_max=500)
    full_epochs: int | None = setting(None, "Whole-network epochs", "Epochs of the whole-network phase of "
                                      "head+full; the same as the epochs when empty.", "int", low=1, optional=True,
                                      none_label="same as the epochs", ui_max=200)
    optimizer: str = setting("adam", "Optimizer", "The optimizer of every phase.", "choice", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "Learning rate", "The learning rate (of the head phase for head+full).", "float",
                        low=0.0, high=10.0, low_open=True, log=True, step=1e-4, ui_min=1e-6, ui_max=1.0)
    full_lr: float | None = setting(None, "Whole-network learning rate", "Learning rate of the whole-network "
                                    "phase of head+full; a tenth of the learning rate when empty.", "float",
                                    low=0.0, high=10.0, low_open=True, log=True, optional=True,
                                    none_label="a tenth of the learning rate", step=1e-5, ui_min=1e-7, ui_max=1.0)
    weight_decay: float = setting(0.0, "Weight decay", "Decoupled weight decay of the optimizer; 0 = off.", "float",
                                  low=0.0, log=True)
    momentum: float = setting(0.9, "Momentum", "Momentum of sgd and rmsprop (other optimizers ignore it).", "float",
                              low=0.0, high=1.0, high_open=True, step=0.05)
    batch_size: int = setting(32, "Batch size", "Images per training step.", "int", low=1, high=1024, step=8)
    dropout: float = setting(0.0, "Dropout", "Share of the head's inputs zeroed at random while training.", "float",
                             low=0.0, high=1.0, high_open=True, step=0.05, ui_max=0.9)
    batch_norm: bool = setting(False, "Batch norm", "BatchNormalization on the pooled features, before the head.",
                               "bool")
    dense_1024: bool = setting(False, "Dense(1024) layer", "A Dense(1024, relu) layer in the head, as the study "
                               "tried with its cut networks.", "bool")
    early_stopping_patience: int = setting(0, "Early-stopping patience", "Epochs without a better validation loss "
                                           "before stopping (the best epoch is kept); 0 = off.", "int", low=0,
                                           flag="--early-stopping", ui_max=100)
    reduce_lr_patience: int = setting(0, "Reduce-LR patience", "Epochs without a better validation loss before "
                                      "the learning rate is lowered; 0 = off.", "int", low=0, ui_max=100)
    reduce_lr_factor: float = setting(0.5, "Reduce-LR factor", "What the learning rate is multiplied by when it "
                                      "is lowered.", "float", low=0.0, high=1.0, low_open=True, high_open=True,
                                      step=0.05, ui_min=0.05, ui_max=0.95)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    aug_copies: int = setting(0, "Augmented copies", "A named shortcut, not the study's way: the epochs cycle "
                              "through this many augmented copies of the training images (epoch e trains on copy "
                              "e mod K) instead of a fresh copy each epoch (0, as the study's ImageDataGenerator). "
                              "Each copy costs one pass through the frozen part of the network, so fewer copies "
                              "train faster, on less variety.", "int", low=0, ui_max=50, late=True,
                              searchable=False)
    tta: bool = setting(False, "Test-time flip", "Validation and test predictions average each image with its "
                        "mirror image.", "bool", late=True, shared=True, searchable=False)
    seed: int = setting(0, "Seed", "Seeds the validation split, the small set, initial weights and shuffling.",
                        "int", low=0, high=SEED_MAX, shared=True, searchable=False)

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Raise :class:`ConfigError` with one sentence for the first bad setting; return self."""
        validate_fields(self)
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"Augmentation settings must be an object of named settings; received {self.augment!r}.")
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
    def resolved_aug_copies(self) -> int:
        """The augmented copies the epochs cycle through (0: a fresh copy each epoch), where they apply: with an
        augmentation, on a part of the network that stays frozen (the head's backbone, a frozen prefix); the
        whole network trained on images draws every epoch afresh."""
        if self.augment.is_identity() or (self.phase == "full" and not self.freeze_blocks):
            return 0
        return self.aug_copies

    @property
    def resolved_full_epochs(self) -> int:
        return self.full_epochs if self.full_epochs is not None else self.epochs

    @property
    def resolved_full_lr(self) -> float:
        """Fine-tuning the whole network uses a learning rate ten times lower unless set."""
        return self.full_lr if self.full_lr is not None else self.lr / 10.0


RUN_SETTINGS = settings_of(RunConfig)
AUGMENT_SETTINGS = settings_of(AugmentConfig)
#: The settings every page shares (the sidebar; a link's shared part), in declaration order.
SHARED_SETTINGS = tuple(name for name, info in RUN_SETTINGS.items() if info.shared)

#: The image size every entry point starts from: 128 px is Lite0's fastest size that keeps its accuracy on the
#: 64 px bundled images (shown larger). RunConfig's own default (224) enters stored run ids, so it stays.
DEFAULT_IMAGE_SIZE = 128
#: Where every entry point's defaults differ from RunConfig's field defaults (which enter run ids and so never
#: change): the offline backbone at 128 px. The CLI's options, the app's sidebar and links read this, so a run
#: started anywhere without those settings is the same run.
ENTRY_DEFAULTS: dict[str, Any] = {"backbone": DEFAULT_BACKBONE, "image_size": DEFAULT_IMAGE_SIZE}


def entry_defaults() -> dict[str, Any]:
    """Every run setting's default as the entry points start from it (``augment`` as a dict)."""
    return {**RunConfig().to_dict(), **ENTRY_DEFAULTS}


def entry_config(**changes: Any) -> RunConfig:
    """The run an entry point starts from, with ``changes`` (not validated)."""
    return RunConfig(**{**ENTRY_DEFAULTS, **changes})


def hashed_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as it enters a run's id: settings added later (``late``) only when they differ from
    their defaults, so ids of runs stored before they existed stay valid; ``freeze_blocks`` never
    (``core.training.train.run_id_for`` adds it where it applies); ``aug_copies`` only where it applies."""
    config = cfg.to_dict()
    config.pop("freeze_blocks", None)
    config["aug_copies"] = cfg.resolved_aug_copies  # only where copies apply (a late setting: absent when 0)
    defaults = RunConfig().to_dict()
    for name, info in RUN_SETTINGS.items():
        if info.late and config.get(name) == defaults[name]:
            config.pop(name)
    return config


def stable_hash(payload: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable payload, independent of key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
