"""A dataset's images as arrays: decoded once per size (cached), split, fed to Keras through tf.data.

Every image is decoded once per image size to uint8 arrays, which are cached on disk
(``<cache>/<fingerprint>-<size>-v<N>.npz``) so later runs skip decoding entirely. Discovery and
validation of the folder are :mod:`core.data.scan`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.decode import ImageDecodeError, decode_image
from core.data.scan import SPLITS, DatasetInfo, Skipped, scan_dataset
from core.errors import DatasetError, SceneLabError, first_line, printable

logger = logging.getLogger(__name__)

DECODE_FORMAT_VERSION = 1

__all__ = ["DatasetInfo", "DecodedDataset", "ImageDecodeError", "Skipped", "Splits", "decode_dataset",
           "decode_image", "make_splits", "make_tf_dataset", "scan_dataset"]


@dataclass
class DecodedDataset:
    """Every usable image of a dataset at one size, as uint8 arrays."""

    classes: list[str]
    image_size: int
    x_train: np.ndarray
    y_train: np.ndarray
    train_paths: list[str]
    x_test: np.ndarray
    y_test: np.ndarray
    test_paths: list[str]
    skipped: list[Skipped]
    fingerprint: str


def _decode_one(args: tuple[Path, int]) -> np.ndarray | str:
    path, size = args
    try:
        return decode_image(path, size)
    except ImageDecodeError as exc:
        return str(exc)


def decode_dataset(
    info: DatasetInfo, image_size: int, cache_dir: str | os.PathLike[str] | None = None
) -> DecodedDataset:
    """Decode every image of ``info`` at ``image_size``; reuse the on-disk uint8 cache if valid."""
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{info.fingerprint}-{image_size}-v{DECODE_FORMAT_VERSION}.npz"
        cached = _load_decoded(cache_path, info, image_size)
        if cached is not None:
            return cached

    skipped = list(info.skipped)
    arrays: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for split in SPLITS:
            items = info.files[split]
            results = pool.map(_decode_one, [(info.root / rel, image_size) for rel, _ in items])
            xs, ys, paths = [], [], []
            for (rel, label), result in zip(items, results, strict=True):
                if isinstance(result, str):
                    skipped.append(Skipped(rel, result))
                    continue
                xs.append(result)
                ys.append(label)
                paths.append(rel)
            empty = [c for i, c in enumerate(info.classes) if i not in set(ys)]
            if empty:
                raise DatasetError(
                    f"No image of class(es) {', '.join(printable(c) for c in empty)} in {printable(info.root / split)} "
                    "could be decoded; "
                    "replace the unreadable files (see the skipped-file report) with JPEG or PNG images."
                )
            x = np.stack(xs) if xs else np.zeros((0, image_size, image_size, 3), np.uint8)
            arrays[split] = (x, np.asarray(ys, dtype=np.int32), paths)
    if skipped:
        logger.warning("%d file(s) skipped in %s", len(skipped), info.root)
    ds = DecodedDataset(
        classes=info.classes,
        image_size=image_size,
        x_train=arrays["train"][0],
        y_train=arrays["train"][1],
        train_paths=arrays["train"][2],
        x_test=arrays["test"][0],
        y_test=arrays["test"][1],
        test_paths=arrays["test"][2],
        skipped=skipped,
        fingerprint=info.fingerprint,
    )
    if cache_path is not None:
        _save_decoded(cache_path, ds)
    return ds


def _save_decoded(path: Path, ds: DecodedDataset) -> None:
    from core.store.atomic import atomic_write_npz

    try:
        atomic_write_npz(
            path,
            x_train=ds.x_train,
            y_train=ds.y_train,
            train_paths=np.asarray(ds.train_paths, dtype=str),
            x_test=ds.x_test,
            y_test=ds.y_test,
            test_paths=np.asarray(ds.test_paths, dtype=str),
            classes=np.asarray(ds.classes, dtype=str),
            skipped=np.asarray([[s.path, s.reason] for s in ds.skipped], dtype=str).reshape(-1, 2),
        )
    except (OSError, SceneLabError) as exc:  # a full disk or read-only cache only costs speed
        logger.warning("Could not cache decoded images at %s: %s", path, exc)


def _load_decoded(path: Path, info: DatasetInfo, image_size: int) -> DecodedDataset | None:
    """The decoded-image cache if it is intact and matches ``info``; otherwise warn, delete it, None.

    Loaded without pickle; a truncated, foreign or tampered file is reported and rebuilt, not trusted.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ds = DecodedDataset(
                classes=[str(c) for c in z["classes"]],
                image_size=image_size,
                x_train=z["x_train"],
                y_train=z["y_train"],
                train_paths=[str(p) for p in z["train_paths"]],
                x_test=z["x_test"],
                y_test=z["y_test"],
                test_paths=[str(p) for p in z["test_paths"]],
                skipped=[Skipped(str(a), str(b)) for a, b in z["skipped"]],
                fingerprint=info.fingerprint,
            )
        k = len(info.classes)
        shape = (image_size, image_size, 3)
        ok = (
            ds.classes == info.classes
            and ds.x_train.dtype == np.uint8
            and ds.x_test.dtype == np.uint8
            and ds.x_train.shape[1:] == shape
            and ds.x_test.shape[1:] == shape
            and ds.y_train.ndim == 1
            and ds.y_test.ndim == 1
            and np.issubdtype(ds.y_train.dtype, np.integer)
            and np.issubdtype(ds.y_test.dtype, np.integer)
            and len(ds.x_train) == len(ds.y_train) == len(ds.train_paths)
            and len(ds.x_test) == len(ds.y_test) == len(ds.test_paths)
            and all(len(y) == 0 or (int(y.min()) >= 0 and int(y.max()) < k) for y in (ds.y_train, ds.y_test))
        )
        if ok:
            return ds
        reason = "contents do not match the dataset"
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
        reason = first_line(exc)
    logger.warning("Decoded-image cache %s is corrupt (%s); rebuilding it.", path, reason)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


# -- splits -----------------------------------------------------------------------------------------
def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out, at least one image kept."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        n_held = min(max(n_held, 1 if len(idx) > 1 else 0), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def per_class_subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of at most ``per_class`` images of each class, drawn at random with ``seed``."""
    rng = np.random.default_rng(seed + 1)
    chosen = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        chosen.append(idx[:per_class])
    return np.sort(np.concatenate(chosen))


@dataclass
class Splits:
    """Index arrays into ``DecodedDataset.x_train`` for training and validation."""

    train: np.ndarray
    val: np.ndarray


def make_splits(
    y_train: np.ndarray, val_fraction: float, seed: int, train_per_class: int | None = None
) -> Splits:
    """Carve a stratified validation split from train, then optionally the small per-class set.

    Validation is drawn first, so the full and small-data runs share one validation set.
    """
    keep, val = stratified_split(y_train, val_fraction, seed)
    if train_per_class is not None:
        keep = keep[per_class_subset(y_train[keep], train_per_class, seed)]
    return Splits(train=keep, val=val)


# -- tf.data ----------------------------------------------------------------------------------------
def make_tf_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augment: object | None = None,
):
    """uint8 arrays -> batched float32 ``tf.data.Dataset`` (cache, shuffle, batch, augment, prefetch)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        # one batch at a time: parallel calls would race on the augmenter's random state and make
        # augmented runs irreproducible (measured: no slower, bench/pipeline.py)
        ds = ds.map(lambda a, b: (augment(a, training=True), b))  # type: ignore[operator]
    return ds.prefetch(tf.data.AUTOTUNE)
