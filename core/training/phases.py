"""The four ways a run trains, and how its final model predicts validation and test.

``train_phases`` runs a config's phases on a ready (fresh or warm) classifier:

* head on cached features: the backbone frozen and run once (``core.training.features``), the head alone
  trained on its pooled features (with random mirror features for flip augmentation);
* head on images: augmentation other than flips needs the frozen backbone every epoch;
* suffix on prefix activations: partial fine-tuning, the first K blocks run once (cached; with augmentation,
  once an epoch on that epoch's augmented images) and only the rest trained;
* whole network on images: full fine-tuning (BatchNorm kept in inference mode).

Each path leaves behind how the trained model predicts (``Phases.predict``): on cached features or
activations while they still describe the model, else on images (test-time flip: with mirror images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import RunConfig
from core.data.arrays import DecodedDataset, Splits, make_tf_dataset
from core.data.augment import build_augmenter
from core.errors import TrainingCancelled
from core.models.backbones import get_backbone
from core.models.model import (
    HeadOnly,
    build_suffix_classifier,
    deeper_cuts_features,
    freeze_prefix,
    prefix_images_model,
    set_base_trainable,
    split_base,
)
from core.models.warm import WarmEntry
from core.store.folders import Store
from core.training.augbank import EpochBanks, augmented_epochs, banks_dataset, copy_of
from core.training.features import (
    FeatureFn,
    FrozenFn,
    array_dataset,
    compute_cut_features,
    compute_prefix_activations,
    features_key,
    mirrored_epoch,
    prefix_key,
)
from core.training.fit import HEAD_STEPS_PER_EXECUTION, ProgressFn, StopFn, compiled_stage, fit
from core.training.headfit import fit_head

Predict = Callable[[], tuple[np.ndarray, np.ndarray]]  # () -> (validation probabilities, test probabilities)


@dataclass
class Phases:
    """One run's training state, handed down its phases."""

    cfg: RunConfig
    entry: WarmEntry
    ds: DecodedDataset
    splits: Splits
    store: Store
    features_key: str
    prefix_layer: str | None
    progress: ProgressFn | None
    should_stop: StopFn | None
    weights: Any = None  # the run's ResolvedWeights (names the feature caches of the other cuts)
    extract: Callable[[], Any] | None = None  # a head trained alone: the classifier whose backbone computes features
    history: list[dict[str, float]] = field(default_factory=list)
    feature_seconds: float = 0.0
    feature_hit: bool | None = None
    predict: Predict | None = None

    @property
    def clf(self) -> Any:
        return self.entry.clf

    def backbone(self) -> Any:
        """The classifier whose backbone computes features: the run's own, or for a head trained alone (a
        :class:`core.models.model.HeadOnly`), a warm extractor built only now that a feature is missing."""
        if isinstance(self.entry.clf, HeadOnly):
            assert self.extract is not None
            return self.extract()
        return self.entry.clf

    @property
    def steps(self) -> int:
        return int(np.ceil(len(self.splits.train) / self.cfg.batch_size))

    def status(self, message: str) -> None:
        if self.progress is not None:
            self.progress({"event": "status", "message": message})

    def cached_pass(self, hit: bool, seconds: float) -> None:
        self.feature_seconds += seconds
        self.feature_hit = hit if self.feature_hit is None else (self.feature_hit and hit)

    def run_fit(self, model: Any, x: Any, y: Any, val: Any, *, epochs: int, phase: str, stream: bool = False) -> None:
        """``stream``: ``x`` is one stream of every epoch's batches (``self.steps`` of them an epoch)."""
        cancelled = fit(
            model, x, y, val, self.cfg, epochs=epochs, phase=phase, steps=self.steps, history=self.history,
            progress=self.progress, should_stop=self.should_stop, steps_per_epoch=self.steps if stream else None,
        )  # fmt: skip
        if cancelled:
            raise TrainingCancelled("Training was cancelled; nothing was saved.")

    def fn(self, name: str, make: Callable[[], Any], owner: Any) -> FeatureFn:
        """A graph-mode pass of a model of ``owner`` (a classifier), traced once and kept with it."""
        cache = owner.__dict__.setdefault("_feature_fns", {})
        if name not in cache:
            cache[name] = FeatureFn(make())
        return cache[name]

    # -- images ---------------------------------------------------------------------------------------
    def xy(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.splits.train if which == "train" else self.splits.val
        return self.ds.x_train[idx], self.ds.y_train[idx]

    def on_images(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(self.clf.model.predict(make_tf_dataset(x, y, 64), verbose=0))

    def with_image_tta(self, p_val: np.ndarray, p_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test-time flip through the whole (trained) network: each prediction averaged with its mirror's."""
        if not self.cfg.tta:
            return p_val, p_test
        x_val, y_val = self.xy("val")
        p_val = (p_val + self.on_images(x_val[:, :, ::-1], y_val)) / 2
        p_test = (p_test + self.on_images(self.ds.x_test[:, :, ::-1], self.ds.y_test)) / 2
        return p_val, p_test


def train_phases(run: Phases) -> None:
    """Train ``run.cfg``'s phases in order; ``run.predict`` then gives the final model's predictions."""
    cfg = run.cfg
    augmenter = build_augmenter(cfg.augment, cfg.seed)
    if cfg.phase in ("head", "head+full"):
        if not isinstance(run.clf, HeadOnly):
            set_base_trainable(run.clf, False)
        if cfg.uses_feature_cache:
            head_on_features(run)
        else:
            head_on_augmented_features(run)
    if cfg.phase in ("full", "head+full"):
        set_base_trainable(run.clf, True)
        run.status("fine-tuning the network")
        if run.prefix_layer is not None:
            if "split" not in run.entry.extras:
                run.entry.extras["split"] = split_base(run.clf.base, run.prefix_layer)
            freeze_prefix(run.clf.base, run.entry.extras["split"][0])
        if run.prefix_layer is not None:
            suffix_on_prefix(run)
        else:
            full_on_images(run, augmenter)


def head_on_features(run: Phases) -> None:
    """The head alone on cached pooled features (and mirror features for flips or test-time flip)."""
    cfg, ds, sp = run.cfg, run.ds, run.splits
    run.status("computing backbone features")
    f_train, f_test, m_train, m_test = cut_features(run, mirror=bool(cfg.augment.hflip or cfg.tta))
    y_tr, y_val = ds.y_train[sp.train], ds.y_train[sp.val]
    if cfg.augment.hflip:
        f, m = f_train[sp.train], m_train[sp.train]
        inputs = lambda e: mirrored_epoch(f, m, cfg.seed, copy_of(e, cfg.resolved_aug_copies))  # noqa: E731
    else:
        inputs = lambda e: f_train[sp.train]  # noqa: E731
    _train_head(run, inputs, y_tr, (f_train[sp.val], y_val))
    run.predict = _head_predict(run, f_train, f_test, m_train, m_test)


def _train_head(run: Phases, inputs: Any, y: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> None:
    """The head alone on features (``core.training.headfit``), with a fresh optimizer from its warm, compiled stage."""
    cfg = run.cfg
    head = compiled_stage(run.entry, "head", lambda: run.clf.head, cfg, cfg.lr, HEAD_STEPS_PER_EXECUTION)
    cancelled = fit_head(head, inputs, y, val, cfg, epochs=cfg.epochs, history=run.history, progress=run.progress,
                         should_stop=run.should_stop)  # fmt: skip
    if cancelled:
        raise TrainingCancelled("Training was cancelled; nothing was saved.")


def _head_predict(run: Phases, f_train: Any, f_test: Any, m_train: Any, m_test: Any) -> Predict:
    """The head's predictions on cached features (test-time flip: averaged with the mirror features')."""
    head, sp, tta = run.clf.head, run.splits, run.cfg.tta

    def call(x: Any) -> np.ndarray:  # one eager call on every row: a head is small, and a predict() traces
        return np.asarray(head(np.asarray(x, dtype="float32"), training=False))

    def predict() -> tuple[np.ndarray, np.ndarray]:
        p_val, p_test = call(f_train[sp.val]), call(f_test)
        if tta:
            p_val = (p_val + call(m_train[sp.val])) / 2
            p_test = (p_test + call(m_test)) / 2
        return p_val, p_test

    return predict


def cut_features(run: Phases, *, mirror: bool) -> tuple[Any, Any, Any, Any]:
    """Features of the run's cut (and of its mirror images when ``mirror``), cached; a pass computes the
    deeper cuts' features too (``core.models.model.deeper_cuts_features``)."""
    cfg = run.cfg
    spec = get_backbone(cfg.backbone)
    cuts = list(range(cfg.remove_blocks, spec.blocks))
    keys = {k: features_key(cfg.replace(remove_blocks=k), run.ds.fingerprint, run.weights) for k in cuts}

    def fn() -> FeatureFn:  # only when a cache is missing: a cached run builds no backbone
        owner = run.backbone()
        return run.fn("cuts_fn", lambda: deeper_cuts_features(owner, cfg.backbone, cfg.remove_blocks)[1], owner)

    f_train, f_test, hit, seconds = compute_cut_features(fn, cuts, keys, run.ds, run.store, run.progress)
    run.cached_pass(hit, seconds)
    m_train = m_test = None
    if mirror:
        m_train, m_test, hit, seconds = compute_cut_features(fn, cuts, keys, run.ds, run.store, run.progress, mirror=True)
        run.cached_pass(hit, seconds)
    return f_train, f_test, m_train, m_test


def _images_predict(run: Phases) -> Predict:
    def predict() -> tuple[np.ndarray, np.ndarray]:
        x_val, y_val = run.xy("val")
        return run.with_image_tta(run.on_images(x_val, y_val), run.on_images(run.ds.x_test, run.ds.y_test))

    return predict


def _image_datasets(run: Phases, augmenter: Any) -> tuple[Any, Any]:
    x_tr, y_tr = run.xy("train")
    x_val, y_val = run.xy("val")
    train_ds = make_tf_dataset(x_tr, y_tr, run.cfg.batch_size, shuffle=True, seed=run.cfg.seed, augment=augmenter)
    return train_ds, make_tf_dataset(x_val, y_val, run.cfg.batch_size)


def head_on_augmented_features(run: Phases) -> None:
    """The head on the features of freshly augmented images, every epoch (``core.training.augbank``: one traced pass
    per epoch through the frozen backbone, shared by runs with the same augmentation); validated and
    evaluated on the cached features of the images themselves."""
    cfg, ds, sp = run.cfg, run.ds, run.splits
    f_train, f_test, m_train, m_test = cut_features(run, mirror=cfg.tta)
    run.status("augmenting the training images")
    owner = run.backbone()
    fn = run.fn("features_fn", lambda: owner.features, owner)
    banks = augmented_epochs(fn, ds.x_train[sp.train], cfg.augment, cfg.seed, cfg.epochs, run.features_key, run.progress,
                             copies=cfg.resolved_aug_copies)  # fmt: skip
    y_tr, y_val = ds.y_train[sp.train], ds.y_train[sp.val]
    _train_head(run, lambda e: banks[min(e, len(banks) - 1)], y_tr, (f_train[sp.val], y_val))
    run.predict = _head_predict(run, f_train, f_test, m_train, m_test)


def _full_phase(cfg: RunConfig) -> tuple[float, int]:
    """(learning rate, epochs) of the whole-network phase."""
    if cfg.phase == "full":
        return cfg.lr, cfg.epochs
    return cfg.resolved_full_lr, cfg.resolved_full_epochs


def suffix_on_prefix(run: Phases) -> None:
    """Partial fine-tuning: the blocks after the frozen prefix, trained on its activations (BatchNorm in inference
    mode): the cached activations of the images; with augmentation, each epoch's bank of the activations of that
    epoch's augmented images (``core.training.augbank.EpochBanks``: the prefix runs once an epoch as a frozen graph, not in
    every training step; 2.0x the CPU time of the run without augmentation where training through the whole
    network took 2.5x, bench/aug_finetune.py). Validated and evaluated on the cached activations."""
    cfg, clf, ds, sp = run.cfg, run.clf, run.ds, run.splits
    prefix, suffix = run.entry.extras["split"]
    fn = run.fn("prefix_fn", lambda: prefix_images_model(clf, prefix), clf)
    key = prefix_key(run.features_key, run.prefix_layer or "")
    a_train, a_test, hit, seconds = compute_prefix_activations(fn, ds, key, run.store, run.progress)
    run.cached_pass(hit, seconds)
    lr, epochs = _full_phase(cfg)
    model = compiled_stage(run.entry, "partial", lambda: build_suffix_classifier(suffix, clf.head), cfg, lr)
    y_tr, y_val = ds.y_train[sp.train], ds.y_train[sp.val]
    val_ds = array_dataset(a_train, y_val, cfg.batch_size, rows=sp.val)
    if cfg.augment.is_identity():
        train_ds = array_dataset(a_train, y_tr, cfg.batch_size, shuffle=True, seed=cfg.seed, rows=sp.train)
        run.run_fit(model, train_ds, None, val_ds, epochs=epochs, phase="full")
    else:
        run.status("augmenting the training images")
        frozen = _frozen_prefix(clf, prefix, key)
        copies = cfg.resolved_aug_copies
        with EpochBanks(frozen, ds.x_train[sp.train], cfg.augment, cfg.seed, key, epochs, copies=copies) as banks:
            banks.first(run.progress)
            train_ds = banks_dataset(banks, y_tr, cfg.batch_size, cfg.seed)
            run.run_fit(model, train_ds, None, val_ds, epochs=epochs, phase="full", stream=True)

    def predict() -> tuple[np.ndarray, np.ndarray]:
        p_val = np.asarray(model.predict(array_dataset(a_train, y_val, 64, rows=sp.val), verbose=0))
        p_test = np.asarray(model.predict(array_dataset(a_test, ds.y_test, 64), verbose=0))
        return run.with_image_tta(p_val, p_test)

    run.predict = predict


def _frozen_prefix(clf: Any, prefix: Any, key: str) -> FrozenFn:
    """The prefix's pass with its weights as constants (``core.training.features.FrozenFn``), kept with the classifier for
    the prefix activations ``key`` names (which decides the prefix's weights: they never train)."""
    cache = clf.__dict__.setdefault("_frozen_prefix", {})
    if key not in cache:
        cache.clear()
        cache[key] = FrozenFn(prefix_images_model(clf, prefix))
    return cache[key]


def full_on_images(run: Phases, augmenter: Any) -> None:
    """Every layer but BatchNorm trained on (augmented) images (a frozen prefix goes through ``suffix_on_prefix``)."""
    lr, epochs = _full_phase(run.cfg)
    model = compiled_stage(run.entry, "full", lambda: run.clf.model, run.cfg, lr)
    train_ds, val_ds = _image_datasets(run, augmenter)
    run.run_fit(model, train_ds, None, val_ds, epochs=epochs, phase="full")
    run.predict = _images_predict(run)
