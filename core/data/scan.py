"""Dataset discovery and validation: a folder's classes and image files, before any image is decoded.

Layout: ``<root>/{train,test}/<class>/<image>``. Classes are train's folder names, sorted; test must
have the same. Every broken layout is one sentence (found, expected, what to do); stray, hidden, linked
or special files are skipped and listed, never fatal. The path must be allowed by
``SCENELAB_DATA_ROOTS`` (:mod:`core.data.security`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.fingerprint import content_fingerprint, legacy_fingerprint
from core.data.security import allowed_roots, check_data_root, check_inside
from core.errors import DataRootError, DatasetError, os_error_phrase, printable

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LAYOUT_HINT = "expected <root>/train/<class>/<images> and <root>/test/<class>/<images>"


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
    fingerprint: str = ""  # content: file names, sizes and bytes (core.data.fingerprint)
    legacy_fingerprint: str = ""  # names, sizes and mtimes: what runs stored before content identity used

    def counts(self) -> dict[str, dict[str, int]]:
        """Images found per split and class (before decoding)."""
        out: dict[str, dict[str, int]] = {}
        for split, items in self.files.items():
            per = dict.fromkeys(self.classes, 0)
            for _, label in items:
                per[self.classes[label]] += 1
            out[split] = per
        return out



def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__") or name == "Thumbs.db"


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
            f"The folder {printable(path)} cannot be read ({os_error_phrase(exc, writing=False)}); "
            "give the app read permission on it or choose another dataset folder."
        ) from exc


def _scandir_sorted(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def scan_dataset(root: str | os.PathLike[str], progress: Callable[[dict[str, Any]], None] | None = None) -> DatasetInfo:
    """List a dataset folder's classes and image files; raise :class:`DatasetError` on a bad layout.

    The path must be allowed by ``SCENELAB_DATA_ROOTS`` (see :mod:`core.data.security`); every problem,
    an unreadable folder or a link loop included, is one sentence, never a traceback.
    """
    path = check_data_root(root)
    try:
        return _scan(path, progress)
    except DatasetError:
        raise
    except (OSError, RuntimeError) as exc:  # a folder that vanished, a permission, a loop
        where = getattr(exc, "filename", None) or path
        reason = os_error_phrase(exc, writing=False) if isinstance(exc, OSError) else "a symbolic link loop"
        raise DatasetError(
            f"The dataset folder {printable(path)} cannot be read ({printable(where)}: {reason}); "
            "give the app read permission on it or choose another dataset folder."
        ) from exc


def _check_layout(root: Path) -> list[str]:
    """The class names of a dataset folder whose layout is right; one sentence for the first problem."""
    hint = LAYOUT_HINT
    if not root.exists():
        if root.is_symlink():
            raise DatasetError(
                f"The dataset path {printable(root)} is a broken symbolic link or a link loop; {hint}: "
                "point the dataset path at the real folder."
            )
        raise DatasetError(
            f"The dataset folder {printable(root)} does not exist; {hint}: set the dataset path to such a folder "
            "or run `python -m core download-data --to DIR`."
        )
    if not root.is_dir():
        raise DatasetError(f"The dataset path {printable(root)} is a file, not a folder; {hint}.")
    for split in SPLITS:
        if not (root / split).is_dir():
            found = ", ".join(printable(d) for d in _list_dirs(root)) or "no folders"
            raise DatasetError(
                f"The dataset folder {printable(root)} has no '{split}' folder (found: {found}); {hint}."
            )
    classes = _list_dirs(root / "train")
    if len(classes) < 2:
        raise DatasetError(
            f"{printable(root / 'train')} holds {len(classes)} class folder(s) "
            f"({', '.join(printable(c) for c in classes) or 'none'}); "
            "at least 2 class folders are needed, one per class."
        )
    test_classes = _list_dirs(root / "test")
    missing = sorted(set(classes) - set(test_classes))
    extra = sorted(set(test_classes) - set(classes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from test: {', '.join(printable(c) for c in missing)}")
        if extra:
            parts.append(f"only in test: {', '.join(printable(c) for c in extra)}")
        raise DatasetError(
            f"The train and test folders of {printable(root)} have different classes ({'; '.join(parts)}); "
            "give test the same class folders as train."
        )
    return classes


def _class_entries(class_dir: Path, restricted: bool) -> list[os.DirEntry[str]]:
    if restricted and not check_inside(class_dir):
        raise DataRootError(
            f"The class folder {printable(class_dir)} links to a folder outside "
            "the folders this installation allows (SCENELAB_DATA_ROOTS); copy those images into "
            "the dataset instead of linking to them."
        )
    try:
        return _scandir_sorted(class_dir)
    except OSError as exc:
        raise DatasetError(
            f"The class folder {printable(class_dir)} cannot be read ({os_error_phrase(exc, writing=False)}); "
            "give the app read permission on it or remove it from train and test."
        ) from exc


def _image_stat(entry: os.DirEntry[str], restricted: bool) -> os.stat_result | str:
    """The stat of an image file entry, or why it is skipped."""
    try:
        if entry.is_dir():
            return "folder inside a class folder (not read)"
        if not entry.is_file():
            return "not a regular file (broken link, link loop, device or pipe)"
        st = entry.stat()
    except OSError as exc:
        return f"cannot be read ({os_error_phrase(exc, writing=False)})"
    if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file extension"
    if restricted and entry.is_symlink() and not check_inside(Path(entry.path)):
        return "link to a file outside the allowed data folders (not read)"
    return st


def _scan_split(
    root: Path, split: str, classes: list[str], restricted: bool, skipped: list[Skipped]
) -> tuple[list[tuple[str, int]], list[tuple[str, int, int]]]:
    """(files as (relative path, label), their (path, size, mtime)) of one split; skips go to ``skipped``."""
    split_dir = root / split
    for entry in _scandir_sorted(split_dir):
        if not _is_hidden(entry.name) and not _is_dir(entry):
            skipped.append(Skipped(f"{split}/{entry.name}", "file outside any class folder"))
    items: list[tuple[str, int]] = []
    stats: list[tuple[str, int, int]] = []
    for label, name in enumerate(classes):
        for entry in _class_entries(split_dir / name, restricted):
            if _is_hidden(entry.name):
                continue
            rel = f"{split}/{name}/{entry.name}"
            st = _image_stat(entry, restricted)
            if isinstance(st, str):
                skipped.append(Skipped(rel, st))
                continue
            items.append((rel, label))
            stats.append((rel, st.st_size, st.st_mtime_ns))
    empty = [c for i, c in enumerate(classes) if not any(lab == i for _, lab in items)]
    if empty:
        raise DatasetError(
            f"Class folder(s) {', '.join(printable(c) for c in empty)} in {printable(split_dir)} hold no image files; "
            "add images (JPEG, PNG, BMP, GIF, WEBP, TIFF) or remove the folder from train and test."
        )
    return items, stats


def _scan(root: Path, progress: Callable[[dict[str, Any]], None] | None = None) -> DatasetInfo:
    classes = _check_layout(root)
    restricted = bool(allowed_roots())
    files: dict[str, list[tuple[str, int]]] = {}
    skipped: list[Skipped] = []
    stats: list[tuple[str, int, int]] = []
    for split in SPLITS:
        files[split], split_stats = _scan_split(root, split, classes, restricted, skipped)
        stats += split_stats
    info = DatasetInfo(root=root, classes=classes, files=files, skipped=skipped)
    info.fingerprint = content_fingerprint(root, classes, stats, progress)
    info.legacy_fingerprint = legacy_fingerprint(classes, stats)
    return info


def test_images(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The dataset's test images per class: ``{class: [absolute path, ...]}`` (DatasetError if bad)."""
    info = scan_dataset(root)
    out: dict[str, list[str]] = {c: [] for c in info.classes}
    for rel, label in info.files["test"]:
        out[info.classes[label]].append(str(info.root / rel))
    return out


def image_size_of(info: DatasetInfo, samples: int = 5) -> int | None:
    """The larger side of the dataset's first few training images, read from their headers (None if none can)."""
    from PIL import Image

    sides = []
    for rel, _ in info.files.get("train", [])[:samples]:
        try:
            with Image.open(info.root / rel) as img:
                sides.append(max(img.size))
        except Exception:  # noqa: BLE001 - a header that cannot be read says nothing about the size
            continue
    return sorted(sides)[len(sides) // 2] if sides else None
