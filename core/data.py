"""Dataset discovery and validation, decoding, splits and tf.data pipelines.

Layout: ``<root>/{train,test}/<class>/<image>``. Classes are train's folder names, sorted; test
must have the same. Every image is decoded once per image size to uint8 arrays, which are cached
on disk (``<cache>/<fingerprint>-<size>.npz``) so later runs skip decoding entirely.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DataRootError, DatasetError, SceneLabError, os_error_phrase
from core.security import allowed_roots, check_data_root, check_inside

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 40_000_000  # over 40 megapixels is refused (decompression bombs included)
DECODE_FORMAT_VERSION = 1

# Pillow raises DecompressionBombError past 2x this and only warns below; refuse both.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageDecodeError(DatasetError):
    """One image cannot be decoded; the message says why."""


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str


@dataclass
class DatasetInfo:
    """What a dataset folder holds, before any image is decoded."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split -> [(path relative to root, label)]
    skipped: list[Skipped] = field(default_factory=list)
    fingerprint: str = ""

    def counts(self) -> dict[str, dict[str, int]]:
        """Images found per split and class (before decoding)."""
        out: dict[str, dict[str, int]] = {}
        for split, items in self.files.items():
            per = dict.fromkeys(self.classes, 0)
            for _, label in items:
                per[self.classes[label]] += 1
            out[split] = per
        return out


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


# -- discovery --------------------------------------------------------------------------------------
def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__") or name == "Thumbs.db"


def _show(text: object) -> str:
    """``text`` for a one-line message: control characters (a newline in a folder name) escaped."""
    s = str(text)
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in s)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, False for links that loop or cannot be followed."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _list_dirs(path: Path) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if not _is_hidden(e.name) and _is_dir(e))
    except OSError as exc:
        raise DatasetError(
            f"The folder {_show(path)} cannot be read ({os_error_phrase(exc, writing=False)}); "
            "give the app read permission on it or choose another dataset folder."
        ) from exc


def _scandir_sorted(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def scan_dataset(root: str | os.PathLike[str]) -> DatasetInfo:
    """List a dataset folder's classes and image files; raise :class:`DatasetError` on a bad layout.

    The path must be allowed by ``SCENELAB_DATA_ROOTS`` (see :mod:`core.security`); every problem,
    an unreadable folder or a link loop included, is one sentence, never a traceback.
    """
    path = check_data_root(root)
    try:
        return _scan(path)
    except DatasetError:
        raise
    except (OSError, RuntimeError) as exc:  # a folder that vanished, a permission, a loop
        where = getattr(exc, "filename", None) or path
        reason = os_error_phrase(exc, writing=False) if isinstance(exc, OSError) else "a symbolic link loop"
        raise DatasetError(
            f"The dataset folder {_show(path)} cannot be read ({_show(where)}: {reason}); "
            "give the app read permission on it or choose another dataset folder."
        ) from exc


def _scan(root: Path) -> DatasetInfo:
    hint = "expected <root>/train/<class>/<images> and <root>/test/<class>/<images>"
    if not root.exists():
        if root.is_symlink():
            raise DatasetError(
                f"The dataset path {_show(root)} is a broken symbolic link or a link loop; {hint}: "
                "point the dataset path at the real folder."
            )
        raise DatasetError(
            f"The dataset folder {_show(root)} does not exist; {hint}: set the dataset path to such a folder "
            "or run `python -m core download-data --to DIR`."
        )
    if not root.is_dir():
        raise DatasetError(f"The dataset path {_show(root)} is a file, not a folder; {hint}.")
    for split in SPLITS:
        if not (root / split).is_dir():
            found = ", ".join(_show(d) for d in _list_dirs(root)) or "no folders"
            raise DatasetError(
                f"The dataset folder {_show(root)} has no '{split}' folder (found: {found}); {hint}."
            )
    classes = _list_dirs(root / "train")
    if len(classes) < 2:
        raise DatasetError(
            f"{_show(root / 'train')} holds {len(classes)} class folder(s) "
            f"({', '.join(_show(c) for c in classes) or 'none'}); "
            "at least 2 class folders are needed, one per class."
        )
    test_classes = _list_dirs(root / "test")
    missing = sorted(set(classes) - set(test_classes))
    extra = sorted(set(test_classes) - set(classes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from test: {', '.join(_show(c) for c in missing)}")
        if extra:
            parts.append(f"only in test: {', '.join(_show(c) for c in extra)}")
        raise DatasetError(
            f"The train and test folders of {_show(root)} have different classes ({'; '.join(parts)}); "
            "give test the same class folders as train."
        )

    restricted = bool(allowed_roots())
    files: dict[str, list[tuple[str, int]]] = {}
    skipped: list[Skipped] = []
    stats: list[tuple[str, int, int]] = []
    for split in SPLITS:
        split_dir = root / split
        for entry in _scandir_sorted(split_dir):
            if not _is_hidden(entry.name) and not _is_dir(entry):
                skipped.append(Skipped(f"{split}/{entry.name}", "file outside any class folder"))
        items: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            if restricted and not check_inside(class_dir):
                raise DataRootError(
                    f"The class folder {_show(class_dir)} links to a folder outside "
                    "the folders this installation allows (SCENELAB_DATA_ROOTS); copy those images into "
                    "the dataset instead of linking to them."
                )
            try:
                entries = _scandir_sorted(class_dir)
            except OSError as exc:
                raise DatasetError(
                    f"The class folder {_show(class_dir)} cannot be read ({os_error_phrase(exc, writing=False)}); "
                    "give the app read permission on it or remove it from train and test."
                ) from exc
            for entry in entries:
                rel = f"{split}/{name}/{entry.name}"
                if _is_hidden(entry.name):
                    continue
                try:
                    if entry.is_dir():
                        skipped.append(Skipped(rel, "folder inside a class folder (not read)"))
                        continue
                    if not entry.is_file():
                        skipped.append(Skipped(rel, "not a regular file (broken link, link loop, device or pipe)"))
                        continue
                    st = entry.stat()
                except OSError as exc:
                    skipped.append(Skipped(rel, f"cannot be read ({os_error_phrase(exc, writing=False)})"))
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append(Skipped(rel, "not an image file extension"))
                    continue
                if restricted and entry.is_symlink() and not check_inside(Path(entry.path)):
                    skipped.append(Skipped(rel, "link to a file outside the allowed data folders (not read)"))
                    continue
                items.append((rel, label))
                stats.append((rel, st.st_size, st.st_mtime_ns))
        files[split] = items
        empty = [c for i, c in enumerate(classes) if not any(lab == i for _, lab in items)]
        if empty:
            raise DatasetError(
                f"Class folder(s) {', '.join(_show(c) for c in empty)} in {_show(split_dir)} hold no image files; "
                "add images (JPEG, PNG, BMP, GIF, WEBP, TIFF) or remove the folder from train and test."
            )
    info = DatasetInfo(root=root, classes=classes, files=files, skipped=skipped)
    info.fingerprint = _fingerprint(classes, stats)
    return info


def _fingerprint(classes: list[str], stats: Iterable[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    # surrogateescape: a file name that is not valid UTF-8 hashes as its raw bytes
    h.update("\n".join(classes).encode("utf-8", "surrogateescape"))
    for rel, size, mtime in sorted(stats):
        h.update(f"\n{rel}\t{size}\t{mtime}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


# -- decoding ---------------------------------------------------------------------------------------
# Only these Pillow plugins may decode anything: an upload cannot reach EPS (Ghostscript), PSD, ICNS,
# FITS or any other of Pillow's less travelled decoders (camera MPO files open through JPEG).
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
FORMATS_HINT = "JPEG, PNG, BMP, GIF, WEBP or TIFF expected"
_ROWS_PER_CHUNK = 256  # high-bit-depth images are converted a band of rows at a time (bounded memory)

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return text or type(exc).__name__


def decode_image(source: ImageSource, size: int | None = None) -> np.ndarray:
    """Decode any supported image to an RGB uint8 array, resized to ``size`` x ``size`` if given.

    ``source`` is a path, or the bytes (or a binary file object) of an upload: uploads are decoded
    in memory and never written to disk. Handles JPEG, PNG, BMP, GIF (first frame), WEBP, TIFF in
    RGB, greyscale, RGBA, palette, CMYK and 16-bit, and applies EXIF orientation. Anything else
    (another format, a corrupt or truncated file, over 40 megapixels) raises
    :class:`ImageDecodeError` with a one-line reason; no other exception escapes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, (bytes, bytearray, memoryview)):
                fp: Any = io.BytesIO(bytes(source))
            else:
                fp = source
            with Image.open(fp, formats=DECODE_FORMATS) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the "
                        f"{MAX_PIXELS // 1_000_000}-megapixel limit"
                    )
                if w < 1 or h < 1:
                    raise ImageDecodeError("image has no pixels")
                img.seek(0)
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to turn
                out = _to_rgb(img)
                if size is not None:
                    out = out.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(out, dtype=np.uint8)
                if arr.ndim != 3 or arr.shape[2] != 3:
                    raise ImageDecodeError(f"decoded to an unexpected shape {arr.shape}")
                return arr.copy()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"image is too large: over the {MAX_PIXELS // 1_000_000}-megapixel limit (decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image format ({FORMATS_HINT})") from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a folder, not an image file") from None
    except MemoryError:
        raise ImageDecodeError("too large to decode in the memory available") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system refused (permission, I/O error), not the decoder
            raise ImageDecodeError(f"cannot be read ({os_error_phrase(exc, writing=False)})") from None
        raise ImageDecodeError(f"corrupt or truncated image ({_first_line(exc)})") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error, zlib.error) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug on a hostile file is still a skipped file
        logger.debug("Unexpected %s while decoding", type(exc).__name__, exc_info=True)
        raise ImageDecodeError(f"corrupt or unsupported image ({type(exc).__name__}: {_first_line(exc)})") from None


def _to_uint8_rows(arr: np.ndarray, offset: float, divisor: float, scale: float) -> np.ndarray:
    """``clip((arr - offset) / divisor * scale, 0, 255)`` as uint8, computed in float64 a band of
    rows at a time, so a 40-megapixel 16-bit image needs tens of megabytes, not gigabytes."""
    out = np.empty(arr.shape, dtype=np.uint8)
    for start in range(0, arr.shape[0], _ROWS_PER_CHUNK):
        band = arr[start : start + _ROWS_PER_CHUNK].astype(np.float64)
        if offset:
            band -= offset
        if divisor != 1.0:
            band /= divisor
        band *= scale
        np.nan_to_num(band, copy=False)
        np.clip(band, 0, 255, out=band)
        out[start : start + _ROWS_PER_CHUNK] = band.astype(np.uint8)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 / (65535.0 if top > 255 else max(top, 1.0))
        img = Image.fromarray(_to_uint8_rows(arr, 0.0, 1.0, scale), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img)
        finite = np.isfinite(arr)
        lo = float(arr[finite].min()) if finite.any() else 0.0
        hi = float(arr[finite].max()) if finite.any() else 0.0
        del finite
        if hi > lo:
            img = Image.fromarray(_to_uint8_rows(arr, lo, hi - lo, 255.0), mode="L")
        else:
            img = Image.new("L", img.size, 0)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


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
                    f"No image of class(es) {', '.join(_show(c) for c in empty)} in {_show(info.root / split)} "
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
    from core.store import atomic_write_npz

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
        reason = _first_line(exc)
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
