"""Dataset discovery and validation, decoding, splits and tf.data pipelines.

Layout: ``<root>/{train,test}/<class>/<image>``. Classes are train's folder names, sorted; test
must have the same. Every image is decoded once per image size to uint8 arrays, which are cached
on disk (``<cache>/<fingerprint>-<size>.npz``) so later runs skip decoding entirely.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DatasetError

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


def _list_dirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not _is_hidden(e.name))
    except PermissionError as exc:
        raise DatasetError(
            f"The folder {path} cannot be read ({exc.strerror}); give the app read permission on it."
        ) from exc


def scan_dataset(root: str | os.PathLike[str]) -> DatasetInfo:
    """List a dataset folder's classes and image files; raise :class:`DatasetError` on a bad layout."""
    root = Path(root).expanduser().resolve()
    hint = "expected <root>/train/<class>/<images> and <root>/test/<class>/<images>"
    if not root.exists():
        raise DatasetError(
            f"The dataset folder {root} does not exist; {hint}: set the dataset path to such a folder "
            "or run `python -m core download-data --to DIR`."
        )
    if not root.is_dir():
        raise DatasetError(f"The dataset path {root} is a file, not a folder; {hint}.")
    for split in SPLITS:
        if not (root / split).is_dir():
            found = ", ".join(_list_dirs(root)) or "no folders"
            raise DatasetError(
                f"The dataset folder {root} has no '{split}' folder (found: {found}); {hint}."
            )
    classes = _list_dirs(root / "train")
    if len(classes) < 2:
        raise DatasetError(
            f"{root / 'train'} holds {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "at least 2 class folders are needed, one per class."
        )
    test_classes = _list_dirs(root / "test")
    missing = sorted(set(classes) - set(test_classes))
    extra = sorted(set(test_classes) - set(classes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from test: {', '.join(missing)}")
        if extra:
            parts.append(f"only in test: {', '.join(extra)}")
        raise DatasetError(
            f"The train and test folders of {root} have different classes ({'; '.join(parts)}); "
            "give test the same class folders as train."
        )

    files: dict[str, list[tuple[str, int]]] = {}
    skipped: list[Skipped] = []
    stats: list[tuple[str, int, int]] = []
    for split in SPLITS:
        split_dir = root / split
        for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
            if not _is_hidden(entry.name) and not entry.is_dir():
                skipped.append(Skipped(f"{split}/{entry.name}", "file outside any class folder"))
        items: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            try:
                entries = sorted(os.scandir(class_dir), key=lambda e: e.name)
            except PermissionError:
                skipped.append(Skipped(f"{split}/{name}", "class folder cannot be read"))
                continue
            for entry in entries:
                rel = f"{split}/{name}/{entry.name}"
                if _is_hidden(entry.name):
                    continue
                try:
                    if entry.is_dir():
                        skipped.append(Skipped(rel, "folder inside a class folder (not read)"))
                        continue
                    if not entry.is_file():
                        skipped.append(Skipped(rel, "not a regular file (broken link or loop)"))
                        continue
                    st = entry.stat()
                except OSError as exc:
                    skipped.append(Skipped(rel, f"cannot be read ({exc.strerror or exc})"))
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append(Skipped(rel, "not an image file extension"))
                    continue
                items.append((rel, label))
                stats.append((rel, st.st_size, st.st_mtime_ns))
        files[split] = items
        empty = [c for i, c in enumerate(classes) if not any(lab == i for _, lab in items)]
        if empty:
            raise DatasetError(
                f"Class folder(s) {', '.join(empty)} in {split_dir} hold no image files; "
                "add images (JPEG, PNG, BMP, GIF, WEBP) or remove the folder from train and test."
            )
    info = DatasetInfo(root=root, classes=classes, files=files, skipped=skipped)
    info.fingerprint = _fingerprint(classes, stats)
    return info


def _fingerprint(classes: list[str], stats: Iterable[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    h.update("\n".join(classes).encode())
    for rel, size, mtime in sorted(stats):
        h.update(f"\n{rel}\t{size}\t{mtime}".encode())
    return h.hexdigest()[:16]


# -- decoding ---------------------------------------------------------------------------------------
def decode_image(source: str | os.PathLike[str] | bytes, size: int | None = None) -> np.ndarray:
    """Decode any supported image to an RGB uint8 array, resized to ``size`` x ``size`` if given.

    Handles JPEG, PNG, BMP, GIF (first frame), WEBP, TIFF in RGB, greyscale, RGBA, palette, CMYK and
    16-bit, and applies EXIF orientation. Raises :class:`ImageDecodeError` with the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(fp) as img:
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
                img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
                if size is not None:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(img, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image is too large (decompression bomb guard: {exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, TypeError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageDecodeError(f"corrupt or truncated image ({reason})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if top > 255 else max(top, 1.0))
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.nan_to_num(arr).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
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
                    f"No image of class(es) {', '.join(empty)} in {info.root / split} could be decoded; "
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
    except OSError as exc:  # a full disk or read-only cache only costs speed
        logger.warning("Could not cache decoded images at %s: %s", path, exc)


def _load_decoded(path: Path, info: DatasetInfo, image_size: int) -> DecodedDataset | None:
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
        ok = (
            ds.classes == info.classes
            and ds.x_train.shape[1:] == (image_size, image_size, 3)
            and len(ds.x_train) == len(ds.y_train) == len(ds.train_paths)
            and len(ds.x_test) == len(ds.y_test) == len(ds.test_paths)
        )
        if ok:
            return ds
        reason = "contents do not match the dataset"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc) or type(exc).__name__
    logger.warning("Decoded-image cache %s is corrupt (%s); rebuilding it.", path, reason)
    path.unlink(missing_ok=True)
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
        ds = ds.map(
            lambda a, b: (augment(a, training=True), b),  # type: ignore[operator]
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)
