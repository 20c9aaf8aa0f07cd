"""Truncated backbone + classification head, and the surgery that partial fine-tuning needs.

The full classifier is ``image (0..255) -> preprocess -> backbone cut (training=False) -> avg_pool
-> head``. The head is its own small model (``[head_bn] -> [dense_1024] -> top_dropout -> pred``)
so it can be trained alone on cached, pooled backbone features and then used unchanged inside the
full model. BatchNorm, when asked for, normalises the pooled features (after ``avg_pool``): the
pooled features are what the feature cache holds.

Partial fine-tuning (``freeze_blocks=K``) cuts the backbone after its K-th block into a frozen prefix and
a trainable suffix (:func:`split_base`); the suffix trains alone on the prefix's activations
(:func:`build_suffix_classifier`, :func:`prefix_images_model`): cached ones, or with augmentation each epoch's
activations of that epoch's augmented images (``core.training.augbank.EpochBanks``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from core.config import RunConfig
from core.errors import ConfigError
from core.models.backbones import ResolvedWeights, build_base, cut_base, get_backbone

logger = logging.getLogger(__name__)


def build_head(
    in_features: int,
    classes: int,
    *,
    dropout: float = 0.0,
    batch_norm: bool = False,
    dense_1024: bool = False,
) -> Any:
    """``features -> [head_bn] -> [dense_1024, relu] -> top_dropout -> pred (softmax)``."""
    import keras

    inputs = keras.Input((in_features,), name="features")
    x = inputs
    if batch_norm:
        x = keras.layers.BatchNormalization(name="head_bn")(x)
    if dense_1024:
        x = keras.layers.Dense(1024, activation="relu", name="dense_1024")(x)
    x = keras.layers.Dropout(dropout, name="top_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="pred")(x)
    return keras.Model(inputs, outputs, name="head")


@dataclass
class Classifier:
    """The parts of one classifier; ``model`` and ``features`` share the backbone's layers."""

    model: Any  # image -> class probabilities
    features: Any  # image -> pooled backbone features
    base: Any  # the truncated backbone (freeze/unfreeze this)
    head: Any  # pooled features -> class probabilities
    cut_layer: str

    @property
    def backbone_params(self) -> int:
        return int(self.base.count_params())


@dataclass
class HeadOnly:
    """A head trained alone on cached features: its backbone is built only when something needs it
    (``core.models.warm.extractor``). ``model`` is the head, so a warm entry snapshots just its variables."""

    head: Any

    @property
    def model(self) -> Any:
        return self.head


@functools.lru_cache(maxsize=16)
def backbone_shape(backbone: str, remove_blocks: int, image_size: int) -> tuple[int, str, int]:
    """(backbone parameters, cut layer, pooled feature width) of a cut backbone, built once per process with
    random weights (counts do not depend on them)."""
    spec = get_backbone(backbone)
    base = cut_base(build_base(backbone, image_size, ResolvedWeights("none", None, f"{backbone}:none")), backbone,
                    remove_blocks)  # fmt: skip
    return int(base.count_params()), spec.cut_layer(remove_blocks), int(base.output.shape[-1])


def head_for(cfg: RunConfig, classes: int, in_features: int) -> Any:
    """The head of a run of ``cfg`` on ``in_features`` pooled features (its initial weights follow the seed set
    just before: ``core.models.warm`` seeds, then builds)."""
    return build_head(in_features, classes, dropout=cfg.dropout, batch_norm=cfg.batch_norm, dense_1024=cfg.dense_1024)


def build_classifier(
    backbone: str,
    image_size: int,
    classes: int,
    *,
    weights: ResolvedWeights,
    remove_blocks: int = 0,
    dropout: float = 0.0,
    batch_norm: bool = False,
    dense_1024: bool = False,
    head_seed: int | None = None,
) -> Classifier:
    """Build the truncated backbone with its weights, and a fresh head for ``classes`` classes (``head_seed``:
    seeded just before the head is built, so it starts as :func:`head_for` after the same seed)."""
    import keras

    spec = get_backbone(backbone)
    base = cut_base(build_base(backbone, image_size, weights), backbone, remove_blocks)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = spec.preprocess()(inputs)  # type: ignore[operator]
    x = base(x, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if head_seed is not None:
        from core.runtime import seed_all

        seed_all(head_seed)
    head = build_head(
        int(pooled.shape[-1]), classes, dropout=dropout, batch_norm=batch_norm, dense_1024=dense_1024
    )
    outputs = head(pooled)
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier")
    features = keras.Model(inputs, pooled, name=f"{backbone}_features")
    return Classifier(model, features, base, head, spec.cut_layer(remove_blocks))


def classifier_for(cfg: RunConfig, classes: int, weights: ResolvedWeights) -> Classifier:
    """The classifier a run of ``cfg`` trains (or was trained as), with ``weights`` in its backbone."""
    return build_classifier(
        cfg.backbone,
        cfg.image_size,
        classes,
        weights=weights,
        remove_blocks=cfg.remove_blocks,
        dropout=cfg.dropout,
        batch_norm=cfg.batch_norm,
        dense_1024=cfg.dense_1024,
        head_seed=cfg.seed,
    )


def set_base_trainable(clf: Classifier, trainable: bool) -> None:
    """Freeze or unfreeze the backbone; BatchNorm layers stay frozen (keras-io fine-tuning recipe)."""
    import keras

    clf.base.trainable = trainable
    if trainable:
        for layer in clf.base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def deeper_cuts_features(clf: Classifier, backbone: str, remove_blocks: int) -> tuple[list[int], Any]:
    """``image -> [pooled output at every cut this network contains]``: the cuts ``remove_blocks`` and more
    (each an earlier layer of this network), so one pass caches the features of all of them.
    Returns (the cuts, in output order, and the model); shares the classifier's layers."""
    import keras

    spec = get_backbone(backbone)
    cuts = list(range(remove_blocks, len(spec.cut_layers)))
    inputs = clf.features.input
    x = clf.model.get_layer("preprocess")(inputs)
    probe = keras.Model(clf.base.input, [clf.base.get_layer(spec.cut_layers[k]).output for k in cuts])
    outs = probe(x, training=False)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"avg_pool_cut{k}")(o) for k, o in zip(cuts, outs, strict=True)]
    return cuts, keras.Model(inputs, pooled, name=f"{backbone}_cut_features")


def split_base(base: Any, layer_name: str) -> tuple[Any, Any]:
    """(prefix, suffix) sub-models of ``base`` cut after ``layer_name``; both share ``base``'s layers."""
    import keras

    try:
        cut = base.get_layer(layer_name)
    except ValueError as exc:
        raise ConfigError(f"{base.name} has no layer {layer_name!r} to split at.") from exc
    prefix = keras.Model(base.input, cut.output, name=f"{base.name}_prefix")
    suffix = keras.Model(cut.output, base.output, name=f"{base.name}_suffix")
    return prefix, suffix


def freeze_prefix(base: Any, prefix: Any) -> None:
    """Mark every layer of ``prefix`` (shared with ``base``) not trainable."""
    names = {layer.name for layer in prefix.layers}
    for layer in base.layers:
        if layer.name in names:
            layer.trainable = False


def build_suffix_classifier(suffix: Any, head: Any) -> Any:
    """``prefix activations -> suffix (training=False) -> avg_pool -> head``, sharing their weights."""
    import keras

    inputs = keras.Input(tuple(int(d) for d in suffix.input.shape[1:]), name="prefix_activations")
    x = suffix(inputs, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, head(pooled), name="suffix_classifier")


def prefix_images_model(clf: Classifier, prefix: Any) -> Any:
    """``image (0..255) -> preprocess -> frozen prefix`` sharing the classifier's layers."""
    import keras

    inputs = keras.Input(tuple(int(d) for d in clf.model.input.shape[1:]), name="image")
    x = clf.model.get_layer("preprocess")(inputs)
    return keras.Model(inputs, prefix(x, training=False), name="prefix_activations")


def count_trainable(model: Any) -> int:
    import numpy as np

    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def describe(
    backbone: str,
    remove_blocks: int = 0,
    *,
    classes: int = 8,
    dense_1024: bool = False,
    batch_norm: bool = False,
    image_size: int,
) -> dict[str, Any]:
    """Parameter counts of a classifier without loading any weights (instant for the UI)."""
    import keras

    keras.backend.clear_session()
    clf = build_classifier(
        backbone,
        image_size,
        classes,
        weights=ResolvedWeights("none", None, f"{backbone}:none"),
        remove_blocks=remove_blocks,
        batch_norm=batch_norm,
        dense_1024=dense_1024,
    )
    feature_shape = tuple(int(d) for d in clf.base.output.shape[1:])
    head_params = int(clf.head.count_params())
    set_base_trainable(clf, True)
    return {
        "backbone": backbone,
        "remove_blocks": remove_blocks,
        "cut_layer": clf.cut_layer,
        "image_size": image_size,
        "classes": classes,
        "dense_1024": dense_1024,
        "feature_shape": list(feature_shape),
        "backbone_params": clf.backbone_params,
        "head_params": head_params,
        "params_total": int(clf.model.count_params()),
        "params_trainable": count_trainable(clf.model),
        "params_trainable_head_phase": count_trainable(clf.head),
    }
