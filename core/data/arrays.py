"""A dataset's images as arrays: decoded once per size (cached), split, fed to Keras through tf.data.

Every image is decoded once per image size to uint8 arrays, which are cached on disk
(``<cache>/<fingerprint>-<size>-v<N>.npz``) so later runs skip decoding entirely. Decoding streams to that
file a chunk at a time, and the images are read back memory-mapped: a dataset larger than memory decodes
and trains in bounded memory. Discovery and
validation of the folder are :mod:`core.data.scan`'s.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.data.decode import ImageDecodeError, decode_image
from core.data.scan import SPLITS, DatasetInfo, Skipped, scan_dataset
from core.errors import DatasetError, SceneLabError, StoreError, first_line, printable
from core.store.mapped import read_or_map

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


DECODE_CHUNK = 256  # images decoded, then written, at a time: memory holds one chunk, never the dataset
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class _Decoding:
    """One split decoded chunk by chunk into ``sink`` (raw uint8 rows): labels, paths and what was skipped."""

    labels: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def _decoded_in_order(pool: ThreadPoolExecutor, info: DatasetInfo, items: list[tuple[str, int]],
                      size: int) -> Iterator[tuple[str, int, np.ndarray | str]]:  # fmt: skip
    """(path, label, image or why not) of each item in order, decoded by ``pool`` at most two chunks ahead: the
    threads never wait for a chunk's slowest image, and memory holds two chunks at most."""
    pending: collections.deque = collections.deque()
    for rel, label in items:
        pending.append((rel, label, pool.submit(_decode_one, (info.root / rel, size))))
        if len(pending) >= 2 * DECODE_CHUNK:
            rel0, label0, future = pending.popleft()
            yield rel0, label0, future.result()
    while pending:
        rel0, label0, future = pending.popleft()
        yield rel0, label0, future.result()


def _decode_split(
    pool: ThreadPoolExecutor, info: DatasetInfo, split: str, size: int, sink: Callable[[np.ndarray], None],
    skipped: list[Skipped], progress: ProgressFn | None, counter: dict[str, Any],
) -> _Decoding:  # fmt: skip
    out = _Decoding()
    rows: list[np.ndarray] = []

    def flush(seen: int) -> None:
        if rows:
            sink(np.stack(rows))
            rows.clear()
        counter["done"] += seen
        if progress is not None:
            progress({"event": "decode", "done": counter["done"], "total": counter["total"],
                      "elapsed": time.monotonic() - counter["t0"]})  # fmt: skip

    seen = 0
    for rel, label, result in _decoded_in_order(pool, info, info.files[split], size):
        seen += 1
        if isinstance(result, str):
            skipped.append(Skipped(rel, result))
        else:
            rows.append(result)
            out.labels.append(label)
            out.paths.append(rel)
        if seen == DECODE_CHUNK:
            flush(seen)
            seen = 0
    flush(seen)
    empty = [c for i, c in enumerate(info.classes) if i not in set(out.labels)]
    if empty:
        raise DatasetError(
            f"No image of class(es) {', '.join(printable(c) for c in empty)} in {printable(info.root / split)} "
            "could be decoded; "
            "replace the unreadable files (see the skipped-file report) with JPEG or PNG images."
        )
    return out


def decode_dataset(
    info: DatasetInfo, image_size: int, cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
) -> DecodedDataset:  # fmt: skip
    """Decode every image of ``info`` at ``image_size``; reuse the on-disk uint8 cache if valid.

    With a cache folder, images stream to disk a chunk at a time and the arrays returned are memory-mapped
    from the cache (:mod:`core.store.mapped`): memory stays bounded however many images there are."""
    if cache_dir is None:
        return _decode_in_memory(info, image_size, progress)
    cache_path = Path(cache_dir) / f"{info.fingerprint}-{image_size}-v{DECODE_FORMAT_VERSION}.npz"
    cached = _load_decoded(cache_path, info, image_size)
    if cached is not None:
        return cached
    try:
        _decode_to_cache(info, image_size, cache_path, progress)
    except _CacheUnwritable:
        return _decode_in_memory(info, image_size, progress)
    decoded = _load_decoded(cache_path, info, image_size)
    if decoded is None:  # pragma: no cover - written and checked just now; only a disk fault gets here
        raise SceneLabError(f"The decoded images written to {cache_path} could not be read back; check the disk.")
    return decoded


def _decode_in_memory(info: DatasetInfo, image_size: int, progress: ProgressFn | None) -> DecodedDataset:
    skipped = list(info.skipped)
    counter = {"done": 0, "total": sum(len(info.files[s]) for s in SPLITS), "t0": time.monotonic()}
    arrays: dict[str, tuple[np.ndarray, _Decoding]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for split in SPLITS:
            parts: list[np.ndarray] = []
            dec = _decode_split(pool, info, split, image_size, parts.append, skipped, progress, counter)
            x = np.concatenate(parts) if parts else np.zeros((0, image_size, image_size, 3), np.uint8)
            arrays[split] = (x, dec)
    if skipped:
        logger.warning("%d file(s) skipped in %s", len(skipped), info.root)
    return _dataset(info, image_size, arrays, skipped)


def _dataset(info: DatasetInfo, image_size: int, arrays: dict[str, tuple[np.ndarray, _Decoding]],
             skipped: list[Skipped]) -> DecodedDataset:  # fmt: skip
    (x_tr, tr), (x_te, te) = arrays["train"], arrays["test"]
    return DecodedDataset(
        classes=info.classes, image_size=image_size, x_train=x_tr, y_train=np.asarray(tr.labels, dtype=np.int32),
        train_paths=tr.paths, x_test=x_te, y_test=np.asarray(te.labels, dtype=np.int32), test_paths=te.paths,
        skipped=skipped, fingerprint=info.fingerprint,
    )  # fmt: skip


def _decode_to_cache(info: DatasetInfo, image_size: int, cache_path: Path, progress: ProgressFn | None) -> None:
    """Decode into raw temporary files beside the cache (a chunk at a time), then write the cache from them."""
    from core.store.atomic import atomic_write_npz_streamed

    skipped = list(info.skipped)
    counter = {"done": 0, "total": sum(len(info.files[s]) for s in SPLITS), "t0": time.monotonic()}
    shape = (image_size, image_size, 3)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            raws: dict[str, IO[bytes]] = {
                split: stack.enter_context(tempfile.TemporaryFile(prefix=".decoding-", dir=cache_path.parent))
                for split in SPLITS
            }
            decoded: dict[str, _Decoding] = {}
            with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
                for split in SPLITS:
                    sink = (lambda rows, fh=raws[split]: fh.write(rows.tobytes()))  # noqa: E731
                    decoded[split] = _decode_split(pool, info, split, image_size, sink, skipped, progress, counter)
            if skipped:
                logger.warning("%d file(s) skipped in %s", len(skipped), info.root)
            arrays: dict[str, Any] = {}
            for split in SPLITS:
                raws[split].seek(0)
                arrays[f"x_{split}"] = ((len(decoded[split].labels), *shape), np.dtype(np.uint8), _chunks(raws[split]))
                arrays[f"y_{split}"] = np.asarray(decoded[split].labels, dtype=np.int32)
                arrays[f"{split}_paths"] = np.asarray(decoded[split].paths, dtype=str)
            arrays["classes"] = np.asarray(info.classes, dtype=str)
            arrays["skipped"] = np.asarray([[s.path, s.reason] for s in skipped], dtype=str).reshape(-1, 2)
            atomic_write_npz_streamed(cache_path, arrays)
    except (OSError, StoreError) as exc:  # a full disk or read-only cache: decode in memory instead
        logger.warning("Could not cache decoded images at %s: %s; decoding in memory.", cache_path, exc)
        raise _CacheUnwritable from exc


def _chunks(fh: IO[bytes], size: int = 16 << 20) -> Iterator[bytes]:
    while block := fh.read(size):
        yield block


class _CacheUnwritable(Exception):
    """The decoded-image cache could not be written (``decode_dataset`` then decodes in memory)."""


def _load_decoded(path: Path, info: DatasetInfo, image_size: int) -> DecodedDataset | None:
    """The decoded-image cache if it is intact and matches ``info``; otherwise warn, delete it, None.

    Loaded without pickle; a truncated, foreign or tampered file is reported and rebuilt, not trusted.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            small = {k: z[k] for k in ("y_train", "train_paths", "y_test", "test_paths", "classes", "skipped")}
            x = {k: read_or_map(path, z, k) for k in ("x_train", "x_test")}  # large ones memory-mapped
        ds = DecodedDataset(
            classes=[str(c) for c in small["classes"]],
            image_size=image_size,
            x_train=x["x_train"],
            y_train=small["y_train"],
            train_paths=[str(p) for p in small["train_paths"]],
            x_test=x["x_test"],
            y_test=small["y_test"],
            test_paths=[str(p) for p in small["test_paths"]],
            skipped=[Skipped(str(a), str(b)) for a, b in small["skipped"]],
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
