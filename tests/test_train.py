"""Cached training on a tiny generated dataset with a tiny (truncated, random-weight) DenseNet121."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import AugmentConfig, RunConfig
from core.errors import ConfigError, WeightsError
from core.models import backbones
from core.store import folders as store_mod
from core.store.folders import Store
from core.training import features, identity
from core.training import runs as runs_mod
from core.training import trainer as trainer_mod
from core.training.runs import load_classifier
from core.training.train import TrainingCancelled, find_run, train

TINY = RunConfig(
    backbone="densenet121",
    weights="none",
    remove_blocks=3,
    image_size=32,
    epochs=2,
    batch_size=8,
    val_fraction=0.25,
)


def test_head_run_trains_reports_and_is_cached(tiny_dataset, store, monkeypatch):
    events = []
    first = train(TINY, tiny_dataset, store, progress=events.append)
    assert not first.cached
    m = first.record.metrics
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "epochs_run", "seconds", "params_total"):
        assert m[key] is not None, key
    assert m["epochs_run"] == 2 and len(first.record.history) == 2
    assert m["n_test"] == 9 and np.array(m["confusion"]).sum() == 9
    assert set(m["per_class_accuracy"]) == {"coast", "forest", "street"}
    assert m["feature_cache_hit"] is False
    assert {e["event"] for e in events} >= {"status", "features", "epoch", "batch"}
    files = {p.name for p in first.record.path.iterdir()}
    assert {"config.json", "history.csv", "metrics.json", "predictions.npz", "model.keras"} <= files  # random base: whole model kept

    def boom(*a, **k):
        raise AssertionError("a cached run must not train")

    monkeypatch.setattr(trainer_mod, "train_uncached", boom)  # train() imports it only to train
    second = train(TINY, tiny_dataset, store)
    assert second.cached and second.run_id == first.run_id
    assert second.record.metrics == m
    assert find_run(TINY, tiny_dataset, store).run_id == first.run_id


def test_feature_cache_is_reused_by_another_head(tiny_dataset, store):
    train(TINY, tiny_dataset, store)
    other = train(TINY.replace(dropout=0.5, lr=3e-3), tiny_dataset, store)
    assert not other.cached and other.record.metrics["feature_cache_hit"] is True
    assert len(list(store.features_dir.glob("*.npz"))) == 1


def test_run_id_depends_on_config_and_dataset_content(tiny_dataset, fresh_dataset, store):
    """Issue 15 #9: a byte-identical copy (other path, other mtimes) is the same dataset; other bytes are not."""
    a = train(TINY, tiny_dataset, store)
    b = train(TINY, fresh_dataset, store)  # same images written again elsewhere: other mtimes, same content
    assert b.cached and b.run_id == a.run_id
    assert b.summary()["dataset"] == str(fresh_dataset.resolve())  # the path it was asked for, not the original's
    victim = next((fresh_dataset / "train" / "coast").iterdir())
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")  # one byte of one image changed
    c = train(TINY, fresh_dataset, store)
    assert not c.cached and c.run_id != a.run_id
    assert identity.run_id_for(TINY, "x", backbones.resolve_weights("densenet121", "none")) != identity.run_id_for(
        TINY.replace(seed=1), "x", backbones.resolve_weights("densenet121", "none")
    )


def test_saved_head_reloads_to_same_predictions(tiny_dataset, store):
    result = train(TINY, tiny_dataset, store)
    model = load_classifier(result.record)
    from core.data.arrays import decode_dataset, scan_dataset

    ds = decode_dataset(scan_dataset(tiny_dataset), 32, store.datasets_dir)
    probs = np.asarray(model.predict(ds.x_test.astype("float32"), verbose=0))
    np.testing.assert_allclose(probs, result.record.predictions()["probs"], atol=1e-4)


def test_augmented_head_and_full_phases(tiny_dataset, store):
    aug = TINY.replace(augment=AugmentConfig(rotation=20, zoom=0.2, hflip=True), epochs=1)
    r = train(aug, tiny_dataset, store)
    assert r.record.metrics["feature_cache_hit"] is False and r.record.metrics["epochs_run"] == 1
    both = train(TINY.replace(phase="head+full", epochs=1, full_epochs=1, dense_1024=True, batch_norm=True), tiny_dataset, store)
    hist = both.record.history
    assert [row["phase"] for row in hist] == [0.0, 1.0]
    assert hist[1]["lr"] == pytest.approx(TINY.lr / 10)
    assert (both.record.path / "model.keras").exists()
    assert both.record.metrics["params_trainable"] > both.record.metrics["params_total"] * 0.5
    reloaded = load_classifier(both.record)
    assert reloaded.get_layer("head").get_layer("dense_1024") is not None


def test_early_stopping_stops_and_restores(tiny_dataset, store):
    cfg = TINY.replace(epochs=30, lr=10.0, optimizer="sgd", early_stopping_patience=1)
    r = train(cfg, tiny_dataset, store)
    assert r.record.metrics["epochs_run"] < 30  # a huge LR stalls validation loss: stopped early


def test_reduce_lr_on_plateau_lowers_the_rate(tiny_dataset, store):
    # no early stopping, so the epoch after a reduction is recorded with its lower rate
    cfg = TINY.replace(epochs=8, lr=10.0, optimizer="sgd", reduce_lr_patience=1, reduce_lr_factor=0.1)
    lrs = [row["lr"] for row in train(cfg, tiny_dataset, store).record.history]
    assert lrs[0] == pytest.approx(10.0) and len(lrs) == 8
    assert min(lrs) < 10.0 * 0.11
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))  # never raised


def test_small_data_uses_n_per_class(tiny_dataset, store):
    r = train(TINY.replace(train_per_class=2), tiny_dataset, store)
    assert r.record.metrics["n_train"] == 6 and r.record.metrics["n_val"] == 6


def test_cancel_saves_nothing(tiny_dataset, store):
    with pytest.raises(TrainingCancelled):
        train(TINY.replace(seed=7), tiny_dataset, store, should_stop=lambda: True)
    assert store.list_runs() == []
    assert not list(store.runs_dir.glob(".tmp-*"))


def test_interrupted_write_leaves_no_complete_run(tiny_dataset, store, monkeypatch):
    cfg = TINY.replace(seed=11)

    def die(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs_mod, "write_history_csv", die)
    with pytest.raises(Exception, match="disk is full|No space"):
        train(cfg, tiny_dataset, store)
    assert store.list_runs() == [] and not list(store.runs_dir.glob(".tmp-*"))
    monkeypatch.undo()
    assert not train(cfg, tiny_dataset, store).cached  # trains again, then caches
    assert train(cfg, tiny_dataset, store).cached


def test_damaged_run_is_quarantined_and_retrained(tiny_dataset, store):
    r = train(TINY.replace(seed=3), tiny_dataset, store)
    (r.record.path / "metrics.json").write_text("{ not json")
    again = train(TINY.replace(seed=3), tiny_dataset, store)
    assert not again.cached
    assert list(store.runs_dir.glob(".corrupt-*"))


def test_bad_settings_and_weights(tiny_dataset, store, tmp_path):
    with pytest.raises(ConfigError, match="--remove-blocks"):
        train(TINY.replace(remove_blocks=4), tiny_dataset, store)
    with pytest.raises(ConfigError, match="optimizer"):
        train(TINY.replace(optimizer="lion"), tiny_dataset, store)
    with pytest.raises(WeightsError, match="does not exist"):
        train(TINY.replace(weights=str(tmp_path / "nope.h5")), tiny_dataset, store)
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="does not fit"):
        train(TINY.replace(weights=str(bad)), tiny_dataset, store)


def test_config_roundtrip_and_unknown_keys():
    cfg = TINY.replace(augment=AugmentConfig(hflip=True, zoom=0.2))
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="Unknown run setting"):
        RunConfig.from_dict({"nope": 1})


def test_lite0_head_trains_on_tiny_data(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    r = train(RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=2, batch_size=8), tiny_dataset, Store(tmp_path / "a"))
    assert r.record.metrics["backbone_params"] == 3_413_024
    assert r.record.config["weights_identity"].startswith("efficientnet_lite0:imagenet")


def test_augmented_runs_are_reproducible(tiny_dataset, tmp_path):
    from core.store.folders import Store

    cfg = TINY.replace(augment=AugmentConfig(rotation=20, zoom=0.2, hflip=True), epochs=2, seed=3)
    a = train(cfg, tiny_dataset, Store(tmp_path / "a")).record
    b = train(cfg, tiny_dataset, Store(tmp_path / "b")).record
    np.testing.assert_allclose(a.predictions()["probs"], b.predictions()["probs"], atol=1e-5)


def test_flip_only_head_trains_on_cached_mirror_features(tiny_dataset, tmp_path):
    store = Store(tmp_path / "a")
    cfg = TINY.replace(augment=AugmentConfig(hflip=True), epochs=3)
    assert cfg.uses_feature_cache and not TINY.replace(augment=AugmentConfig(hflip=True, zoom=0.1)).uses_feature_cache
    first = train(cfg, tiny_dataset, store).record
    assert first.metrics["feature_cache_hit"] is False
    assert len(list(store.features_dir.glob("*-hflip.npz"))) == 1
    # the mirror features are those of the flipped images, and a repeat is exact (draws depend on the seed)
    again = train(cfg, tiny_dataset, Store(tmp_path / "b")).record
    np.testing.assert_allclose(first.predictions()["probs"], again.predictions()["probs"], atol=1e-5)
    plain = train(TINY.replace(epochs=3), tiny_dataset, store).record
    assert plain.metrics["feature_cache_hit"] is True  # the un-mirrored features were shared
    assert not np.allclose(first.predictions()["probs"], plain.predictions()["probs"], atol=1e-4)


def test_mirrored_features_draw_each_image_once_per_epoch():
    f = np.arange(1, 11, dtype="float32")[:, None]
    epochs = [features.mirrored_epoch(f, -f, seed=1, epoch=e)[:, 0] for e in range(2)]
    for x in epochs:
        assert sorted(np.abs(x)) == list(range(1, 11))  # every image once, as itself or mirrored, in label order
        assert (x < 0).any() and (x > 0).any()
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(features.mirrored_epoch(f, -f, seed=1, epoch=0)[:, 0], epochs[0])  # drawn from (seed, epoch)


def test_head_training_recipe_on_features(tiny_dataset, store):
    """The head's own loop keeps the best validation loss's epoch under early stopping (the tests above check
    that it stops and that reduce-LR lowers the rate), and a run repeats exactly."""
    cfg = TINY.replace(epochs=12, early_stopping_patience=2, reduce_lr_patience=1, reduce_lr_factor=0.5, lr=0.05)
    first = train(cfg, tiny_dataset, store)
    hist = first.record.history
    losses = [r["val_loss"] for r in hist]
    assert first.record.metrics["kept_epoch"] == int(np.argmin(losses)) + 1
    again = train(cfg, tiny_dataset, Store(store.root.parent / "again"))
    assert [r["val_loss"] for r in again.record.history] == losses
    assert np.array_equal(again.record.predictions()["probs"], first.record.predictions()["probs"])


@pytest.mark.parametrize("phase", ["head", "full"])
def test_tta_averages_image_and_mirror(tiny_dataset, tmp_path, phase):
    store = Store(tmp_path / "a")
    base = TINY.replace(phase=phase, epochs=1)
    plain = train(base, tiny_dataset, store)
    tta = train(base.replace(tta=True), tiny_dataset, store)
    assert tta.run_id != plain.run_id
    # the same seed trains the same weights; only evaluation differs: the mean with the mirror's probabilities
    model = load_classifier(tta.record)
    from core.data.arrays import decode_dataset, scan_dataset

    x = decode_dataset(scan_dataset(tiny_dataset), 32, store.datasets_dir).x_test.astype("float32")
    expected = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(tta.record.predictions()["probs"], expected, atol=1e-4)
    np.testing.assert_allclose(plain.record.predictions()["probs"], model.predict(x, verbose=0), atol=1e-4)


def test_late_settings_at_default_keep_earlier_run_ids():
    weights = backbones.resolve_weights("densenet121", "none")
    cfg = TINY
    payload = {k: v for k, v in cfg.to_dict().items() if k not in ("tta", "freeze_blocks", "aug_copies")}
    from core.config import stable_hash

    expected = stable_hash({"config": payload, "dataset": "x", "weights": weights.identity, "v": store_mod.CACHE_FORMAT_VERSION})
    assert identity.run_id_for(cfg, "x", weights) == expected
    assert identity.run_id_for(cfg.replace(tta=True), "x", weights) != expected


def test_augmented_heads_share_their_epochs_of_augmented_features(tiny_dataset, store):
    """A head with augmentation trains on each epoch's augmented images' features, computed once: a second run
    with the same augmentation and another head (the regularisation variants) computes none again."""
    from core.training import augbank
    augbank._banks.clear()
    aug = TINY.replace(augment=AugmentConfig(zoom=0.2, hflip=True), epochs=3)
    first = train(aug, tiny_dataset, store)
    banks = dict(augbank._banks)
    assert len(banks) == 3  # one per epoch
    second = train(aug.replace(dropout=0.5, batch_norm=True), tiny_dataset, store)
    assert dict(augbank._banks).keys() == banks.keys() and all(augbank._banks[k] is banks[k] for k in banks)
    assert first.run_id != second.run_id
    # each epoch is another augmentation of the same images
    epochs = list(banks.values())
    assert not np.allclose(epochs[0], epochs[1])


# -- partial fine-tuning with augmentation: per-epoch banks of prefix activations ---------------------------------
PARTIAL_AUG = TINY.replace(remove_blocks=2, phase="full", freeze_blocks=1, augment=AugmentConfig(zoom=0.2, hflip=True),
                           epochs=3, seed=3)  # fmt: skip


def _prefix_banks(augbank):
    return {k: v for k, v in augbank._banks.items() if v.ndim == 4}  # prefix activations; heads' banks are 2-D


def test_augmented_partial_fine_tuning_trains_the_suffix_on_epoch_banks_and_repeats(tiny_dataset, tmp_path, monkeypatch):
    """``--freeze-blocks`` with augmentation: each epoch's augmented images go through the frozen prefix once and
    the suffix trains on those activations (never the whole network per step); epoch e is seeded by (seed, e),
    so a run repeats exactly whether its banks are recomputed or shared."""
    from core.data.arrays import decode_dataset, scan_dataset
    from core.training import augbank, phases

    monkeypatch.setattr(phases, "full_on_images", lambda *a: pytest.fail("the whole network trained on images"))
    augbank._banks.clear()
    first = train(PARTIAL_AUG, tiny_dataset, Store(tmp_path / "a")).record
    banks = _prefix_banks(augbank)
    assert len(banks) == 3  # one per epoch
    epochs = list(banks.values())
    assert not np.allclose(epochs[0], epochs[1])  # each epoch another augmentation
    augbank._banks.clear()
    again = train(PARTIAL_AUG, tiny_dataset, Store(tmp_path / "b")).record  # banks recomputed
    assert again.history == first.history
    np.testing.assert_allclose(first.predictions()["probs"], again.predictions()["probs"], atol=1e-5)
    for key, bank in _prefix_banks(augbank).items():
        np.testing.assert_array_equal(bank, banks[key])
    shared = train(PARTIAL_AUG, tiny_dataset, Store(tmp_path / "c")).record  # banks shared
    np.testing.assert_allclose(first.predictions()["probs"], shared.predictions()["probs"], atol=1e-5)
    plain = train(PARTIAL_AUG.replace(augment=AugmentConfig()), tiny_dataset, Store(tmp_path / "a")).record
    assert not np.allclose(first.predictions()["probs"], plain.predictions()["probs"], atol=1e-4)
    # the stored model is the network that was trained: its own predictions on test images are the run's
    ds = decode_dataset(scan_dataset(tiny_dataset), 32, Store(tmp_path / "a").datasets_dir)
    probs = load_classifier(first).predict(ds.x_test.astype("float32"), verbose=0)
    np.testing.assert_allclose(probs, first.predictions()["probs"], atol=1e-4)


def test_augmented_prefix_banks_stay_within_their_memory_bound(tiny_dataset, tmp_path, monkeypatch):
    """With room for one epoch's bank only, a longer run keeps at most one in memory (plus the epoch training and
    the one ahead) and trains exactly as with room for all."""
    from core.training import augbank
    cfg = PARTIAL_AUG.replace(epochs=4)
    augbank._banks.clear()
    roomy = train(cfg, tiny_dataset, Store(tmp_path / "a")).record
    one = next(iter(_prefix_banks(augbank).values())).nbytes
    augbank._banks.clear()
    monkeypatch.setattr(augbank, "MAX_BANK_BYTES", one)
    seen: list[int] = []
    remember = augbank._remember

    def counting(key, value):
        remember(key, value)
        seen.append(sum(v.nbytes for v in augbank._banks.values()))

    monkeypatch.setattr(augbank, "_remember", counting)
    tight = train(cfg, tiny_dataset, Store(tmp_path / "b")).record
    assert len(seen) == 4 and max(seen) <= one
    np.testing.assert_allclose(roomy.predictions()["probs"], tight.predictions()["probs"], atol=1e-5)


def test_cancelled_augmented_partial_fine_tuning_leaves_no_bank_thread(tiny_dataset, store):
    import threading

    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(TrainingCancelled):
        train(PARTIAL_AUG.replace(seed=11), tiny_dataset, store, should_stop=stop)
    assert not [t for t in threading.enumerate() if t.name.startswith("prefix-banks")]
    assert find_run(PARTIAL_AUG.replace(seed=11), tiny_dataset, store) is None


# -- the named shortcut: K augmented copies cycled over the epochs ---------------------------------------------
def test_augmented_copies_pass_once_per_copy_and_match_the_fresh_run_on_their_epochs(tiny_dataset, tmp_path, monkeypatch):
    """``aug_copies`` K: epoch e trains on copy e mod K, so a run computes K banks, not one per epoch; copy k is the
    fresh run's epoch k, so the fresh run then computes only its later epochs, and both start alike."""
    from core.training import augbank

    passes: list[int] = []
    augmented_pass = augbank._augmented_pass

    def counting(fn, images, augment, seed, epoch, batch, on_batch=None):
        passes.append(epoch)
        return augmented_pass(fn, images, augment, seed, epoch, batch, on_batch)

    monkeypatch.setattr(augbank, "_augmented_pass", counting)
    augbank._banks.clear()
    cfg = PARTIAL_AUG.replace(epochs=5)
    cycled = train(cfg.replace(aug_copies=2), tiny_dataset, Store(tmp_path / "a"))
    assert sorted(passes) == [0, 1] and len(_prefix_banks(augbank)) == 2
    assert cycled.record.config["run"]["aug_copies"] == 2 and len(cycled.record.history) == 5
    passes.clear()
    fresh = train(cfg, tiny_dataset, Store(tmp_path / "a"))
    assert sorted(passes) == [2, 3, 4]  # epochs 0 and 1 are the copies already computed
    assert fresh.run_id != cycled.run_id
    assert fresh.record.history[:2] == cycled.record.history[:2]  # the same data, order and weights
    assert fresh.record.history[2:] != cycled.record.history[2:]  # then epoch 2 sees copy 0 again, not copy 2

    # heads: the backbone's features of each copy, once
    passes.clear()
    head = TINY.replace(augment=AugmentConfig(zoom=0.2), epochs=4, seed=5, aug_copies=1)
    train(head, tiny_dataset, Store(tmp_path / "a"))
    assert passes == [0]


def test_augmented_copies_enter_the_run_id_only_where_they_apply(tiny_dataset):
    weights = backbones.resolve_weights("densenet121", "none")
    assert identity.prepare(TINY.replace(aug_copies=3), tiny_dataset).cfg.aug_copies == 0  # stored as it trains
    aug = AugmentConfig(zoom=0.2)

    def same(a: RunConfig, b: RunConfig) -> bool:
        return identity.run_id_for(a, "x", weights) == identity.run_id_for(b, "x", weights)

    assert same(TINY.replace(aug_copies=3), TINY)  # no augmentation: nothing to copy
    whole = TINY.replace(phase="full", augment=aug)  # the whole network on images draws every epoch afresh
    assert same(whole.replace(aug_copies=3), whole)
    for cfg in (TINY.replace(augment=aug), TINY.replace(augment=AugmentConfig(hflip=True)),
                whole.replace(remove_blocks=2, freeze_blocks=1), whole.replace(phase="head+full")):  # fmt: skip
        assert not same(cfg.replace(aug_copies=3), cfg), cfg
        assert not same(cfg.replace(aug_copies=3), cfg.replace(aug_copies=4)), cfg
        assert identity.prepare(cfg.replace(aug_copies=3), tiny_dataset).cfg.aug_copies == 3


def test_array_dataset_gathers_its_rows_in_the_order_of_slicing_them(tmp_path):
    """Partial fine-tuning reads the cached prefix activations by row position (a mapped file is never copied whole
    into TensorFlow): the batches, over two epochs of reshuffling, are exactly those of slicing the rows first."""
    import tensorflow as tf

    x = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype="float32", shape=(50, 2, 3))
    x[:] = np.random.default_rng(0).random((50, 2, 3), dtype="float32")
    y = np.arange(50) % 4
    rows = np.random.default_rng(1).permutation(50)[:37]

    def epochs(ds):
        return [[(np.asarray(a), np.asarray(b)) for a, b in ds] for _ in range(2)]

    tf.random.set_seed(3)
    gathered = epochs(features.array_dataset(x, y[rows], 8, shuffle=True, seed=7, rows=rows))
    tf.random.set_seed(3)
    sliced = epochs(tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).shuffle(37, seed=7, reshuffle_each_iteration=True).batch(8))
    assert [len(e) for e in gathered] == [5, 5]
    for got, want in zip(gathered, sliced, strict=True):
        for (gx, gy), (wx, wy) in zip(got, want, strict=True):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
    assert not np.array_equal(gathered[0][0][1], gathered[1][0][1])  # reshuffled each epoch
    plain = [np.asarray(b) for _, b in features.array_dataset(x, y, 16)]  # no rows, no shuffle: in order
    np.testing.assert_array_equal(np.concatenate(plain), y)
