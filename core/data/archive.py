"""Import a dataset zip safely: refuse hostile archives, unpack atomically, validate like any folder.

Accepted: ``train/<class>/<image>`` + ``test/<class>/<image>`` folders, or class folders only (then
split, seeded and stratified), optionally under one top folder. Everything goes into a hidden
``.import-<name>-*`` folder beside the destination, is checked by :func:`core.data.arrays.scan_dataset` and
renamed into place last: a killed process leaves no destination, and the next import into the same
parent removes its leftovers (importers hold a shared ``flock`` on ``.scenelab-import.lock``; the
cleaner takes it exclusively, so a live import is never hit). Files are not fsynced one by one (5.6 s
for 2688 files here, against 0.7 s for the whole import). Refused in one sentence, leaving nothing:
not a zip, encrypted, ``..``/absolute/drive/backslash paths, symbolic links, bombs (caps on the bytes
really produced while streaming, never the header's sizes), no images, an unknown layout; hidden
files and non-images are skipped and listed. Checkpoints (``core.store.atomic.checkpoint``): ``import:write``
(after the first file) and ``import:commit`` (before the rename), where the tests kill the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core.data.arrays import stratified_split
from core.data.scan import IMAGE_EXTENSIONS, SPLITS, Skipped, scan_dataset
from core.data.security import allowed_roots, check_data_root
from core.errors import ConfigError, DataRootError, DatasetError, first_line, os_error_phrase
from core.paths import REPO
from core.store.atomic import checkpoint

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
ZipSource = str | os.PathLike[str] | BinaryIO  # a path, or an upload's file object (never written to disk)
IMPORT_RECORD = ".scenelab-import.json"  # written last into the temporary folder, before the rename
LOCK_NAME = ".scenelab-import.lock"
TMP_PREFIX = ".import-"
CHUNK = 1 << 20
RATIO_FLOOR = 1 << 20  # an entry that produces under 1 MiB cannot be a bomb, whatever its ratio
MiB = 1 << 20
LAYOUT_HINT = "expected train/<class>/<images> and test/<class>/<images> folders, or one folder per class"


@dataclass(frozen=True)
class Limits:
    """Caps that stop a decompression bomb, counted on the bytes actually unpacked."""

    max_total_bytes: int = 2 << 30
    max_file_bytes: int = 200 << 20
    max_files: int = 100_000
    max_ratio: float = 200.0


@dataclass
class ImportResult:
    """What :func:`import_zip` made: the folder, images per split and class, and what it skipped."""

    dest: Path
    counts: dict[str, dict[str, int]]
    was_split: bool
    test_share: float  # test images / all images, as unpacked
    skipped: list[Skipped] = field(default_factory=list)


def default_upload_root() -> Path:
    """Where uploaded zips are unpacked: ``<first SCENELAB_DATA_ROOTS folder>/uploads``, else ``<repo>/data/uploads``."""
    roots = allowed_roots()
    return roots[0] / "uploads" if roots else REPO / "data" / "uploads"


# -- the staging folder -----------------------------------------------------------------------------
def _check_dest(dest: str | os.PathLike[str], what: str) -> Path:
    """``dest`` resolved, allowed, new or empty, and not itself an allowed root (its temp folder sits beside it)."""
    path = check_data_root(dest, what=what)
    if path in allowed_roots():
        raise DataRootError(f"The {what} {path} is an allowed data folder itself; choose a new folder inside it.")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise DatasetError(f"The {what} {path} is a file or a link, not a folder; choose a new folder.")
    if path.is_dir() and any(path.iterdir()):
        raise DatasetError(f"The {what} {path} already exists and is not empty; choose a new folder.")
    return path


def _clean_stale(parent: Path) -> int:
    """Remove every ``.import-*`` folder in ``parent``; call only while holding the exclusive lock."""
    removed = 0
    for entry in parent.glob(f"{TMP_PREFIX}*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("Removed %d unfinished import folder(s) left in %s by an interrupted import.", removed, parent)
    return removed


def _unwritable(folder: Path, exc: OSError) -> DatasetError:
    return DatasetError(f"Cannot write in {folder} ({os_error_phrase(exc)}); choose a writable folder.")


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike[str], *, what: str = "destination folder") -> Iterator[Path]:
    """A fresh temporary folder beside ``dest``, for the block to fill, renamed to ``dest`` when it ends
    normally. After an exception (or a kill) nothing is at ``dest``; the temporary folder is removed at
    once, or by the next staging in the same parent folder."""
    target = _check_dest(dest, what)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock = open(parent / LOCK_NAME, "a+")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise _unwritable(parent, exc) from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _clean_stale(parent)  # nobody else is importing here: whatever is left is stale
            fcntl.flock(lock, fcntl.LOCK_SH)
        except BlockingIOError:
            fcntl.flock(lock, fcntl.LOCK_SH)  # others are importing: leave their folders alone
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name[:80]}-", dir=parent))
        except OSError as exc:
            raise _unwritable(parent, exc) from exc
        try:
            yield tmp
            checkpoint("import:commit")
            try:
                os.rename(tmp, target)  # replaces an empty folder; refuses a non-empty one
            except OSError as exc:
                raise DatasetError(
                    f"Could not create {target} ({os_error_phrase(exc)}); it may have been filled meanwhile: "
                    "choose a new folder."
                ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- reading the zip --------------------------------------------------------------------------------
def source_name(zip_path: ZipSource) -> str:
    """What a message calls a zip: its file name, or an upload's ``.name`` (Streamlit's UploadedFile has one)."""
    name = zip_path if isinstance(zip_path, (str, os.PathLike)) else getattr(zip_path, "name", None)
    return Path(name).name if isinstance(name, (str, os.PathLike)) and str(name) else "the uploaded zip"


def open_zip(zip_path: ZipSource, source: str | None = None, advice: str = "") -> zipfile.ZipFile:
    """``zip_path`` (a path or a binary file object) opened, or one sentence saying it is missing or not a zip."""
    name = source or source_name(zip_path)
    advice = advice or f"{LAYOUT_HINT}: upload a .zip made by a zip tool (not a .rar, .7z or .tar) and try again"
    try:
        return zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise DatasetError(f"The zip file {zip_path} does not exist; choose an existing .zip file.") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{name} is not a readable zip file ({first_line(exc)}); {advice}.") from None


class Budget:
    """The bytes an archive has produced so far, against :class:`Limits`; refuses before writing past them."""

    def __init__(self, limits: Limits, source: str) -> None:
        self.limits, self.source, self.total = limits, source, 0

    def charge(self, info: zipfile.ZipInfo, produced: int, chunk: int) -> None:
        lim, self.total = self.limits, self.total + chunk
        if produced > lim.max_file_bytes:
            why = f"its entry {info.filename!r} unpacks to more than {lim.max_file_bytes // MiB} MiB"
        elif produced > RATIO_FLOOR and produced > lim.max_ratio * max(info.compress_size, 1):
            why = f"its entry {info.filename!r} unpacks to over {lim.max_ratio:g} times its compressed size"
        elif self.total > lim.max_total_bytes:
            why = f"it unpacks to more than {lim.max_total_bytes // MiB} MiB in all"
        else:
            return
        raise DatasetError(f"{self.source} was refused as a likely decompression bomb: {why}; "
                           "expected ordinary image files, so zip the images themselves and try again.")


def extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, budget: Budget) -> int:
    """Stream one entry to the new file ``out``, counting the bytes really produced; return them."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    produced = 0
    with os.fdopen(fd, "wb") as dst:
        try:
            with zf.open(info) as src:
                while chunk := src.read(CHUNK):
                    produced += len(chunk)
                    budget.charge(info, produced, len(chunk))
                    dst.write(chunk)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            where = f"{info.filename!r}: {first_line(exc)}"
            raise DatasetError(f"{budget.source} is damaged ({where}); download or zip it again and retry.") from None
        except (NotImplementedError, RuntimeError) as exc:  # an unknown compression method, or encryption
            raise DatasetError(
                f"{budget.source} cannot be unpacked ({first_line(exc)}); zip it again without a password, "
                "with ordinary (deflate) compression."
            ) from None
    return produced


def _entry_parts(info: zipfile.ZipInfo, source: str) -> list[str]:
    """The path components of an entry, or a refusal if the entry could escape or is a link or encrypted."""
    raw = info.filename.replace("\\", "/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    link = stat.S_ISLNK(info.external_attr >> 16)
    if link or ".." in parts or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        kind = "a symbolic link" if link else "a path that points outside the folder (absolute, or with '..')"
        raise DatasetError(
            f"{source} was refused: its entry {info.filename!r} is {kind}; "
            "expected plain files in folders, so zip the image folders themselves and try again."
        )
    if info.flag_bits & 0x1:
        raise DatasetError(
            f"{source} is password-protected ({info.filename!r} is encrypted); zip the images again without a password."
        )
    return parts


Entry = tuple[zipfile.ZipInfo, list[str]]


def _candidates(zf: zipfile.ZipFile, source: str, limits: Limits) -> tuple[list[Entry], list[Skipped], list[str]]:
    """Image entries with their path parts, skipped entries, and the top-level names (for messages)."""
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise DatasetError(f"{source} holds {len(infos)} entries, over the limit of {limits.max_files}; split it up.")
    images: list[Entry] = []
    skipped: list[Skipped] = []
    tops: dict[str, None] = {}  # insertion-ordered set
    for info in infos:
        parts = _entry_parts(info, source)
        if not parts:
            continue
        hidden = any(p.startswith((".", "__")) or p == "Thumbs.db" for p in parts)
        if not hidden:
            tops.setdefault(parts[0])
        if info.is_dir():
            continue
        if hidden:
            skipped.append(Skipped("/".join(parts), "hidden or system file"))
        elif Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped("/".join(parts), "not an image file extension"))
        else:
            images.append((info, parts))
    return images, skipped, list(tops)


def _found(tops: list[str]) -> str:
    return (", ".join(repr(t) for t in tops[:8]) + (f" and {len(tops) - 8} more" if len(tops) > 8 else "")) or "nothing"


Placed = tuple[zipfile.ZipInfo, str | None, str, str]  # entry, split (None: to be split), class, file name


def _layout(images: list[Entry], skipped: list[Skipped]) -> list[Placed]:
    """Where each image goes; images outside the recognised layout are added to ``skipped``."""
    paths = [parts for _, parts in images]
    firsts = {p[0] for p in paths}
    strip = len(firsts) == 1 and all(len(p) > 1 for p in paths) and any(len(p) > 2 for p in paths)
    strip = strip and next(iter(firsts)).lower() not in SPLITS
    rel = [parts[1:] if strip else parts for parts in paths]
    split_form = any(len(p) > 1 and p[0].lower() in SPLITS for p in rel)
    placed: list[Placed] = []
    for (info, parts), p in zip(images, rel, strict=True):
        depth = 3 if split_form else 2
        if split_form and p[0].lower() not in SPLITS:
            skipped.append(Skipped("/".join(parts), "outside the train and test folders"))
        elif len(p) < depth:
            skipped.append(Skipped("/".join(parts), "file outside any class folder"))
        elif len(p) > depth:
            skipped.append(Skipped("/".join(parts), "inside a sub-folder of a class folder (not read)"))
        elif split_form:
            placed.append((info, p[0].lower(), p[1], p[2]))
        else:
            placed.append((info, None, p[0], p[1]))
    return placed


def _check_classes(placed: list[Placed], source: str, tops: list[str], any_image: bool) -> None:
    """Refuse, before anything is written, a zip with no usable image or class folders too small to split.
    (A train/test zip is checked after unpacking, by :func:`core.data.arrays.scan_dataset`, like any folder.)"""
    if not placed:
        what = "no images in a recognised layout" if any_image else "no image files"
        raise DatasetError(
            f"{source} holds {what} (top-level names: {_found(tops)}); {LAYOUT_HINT}, of JPEG, PNG, BMP, GIF, "
            "WEBP or TIFF images."
        )
    per: dict[str, int] = {}
    for _, split, cls, _ in placed:
        per[cls] = per.get(cls, 0) + (split is None)
    if placed[0][1] is None and (len(per) < 2 or min(per.values()) < 2):
        found = ", ".join(f"{c!r} ({n})" for c, n in sorted(per.items()))
        raise DatasetError(
            f"{source} holds class folders {found}; at least 2 classes with at least 2 images each are "
            "needed to split them into train and test: add images or classes and zip again."
        )


def _assign_splits(placed: list[Placed], test_fraction: float, seed: int) -> list[Placed]:
    """Class folders only: a seeded stratified split, ``test_fraction`` of each class to test."""
    ordered = sorted(placed, key=lambda x: (x[2], x[3], x[0].filename))
    label = {cls: i for i, cls in enumerate(sorted({cls for _, _, cls, _ in ordered}))}
    y = np.asarray([label[cls] for _, _, cls, _ in ordered])
    _, held = stratified_split(y, test_fraction, seed)
    test = set(held.tolist())
    return [(info, "test" if i in test else "train", cls, name) for i, (info, _, cls, name) in enumerate(ordered)]


# -- the import -----------------------------------------------------------------------------------
def import_zip(
    zip_path: ZipSource,
    dest: str | os.PathLike[str],
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    progress: ProgressFn | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen, never mutated
    record: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Unpack a dataset zip into the new folder ``dest`` (absent or empty), all or nothing.

    ``progress`` gets ``{"event": "import", "done", "total", "bytes"}`` per image; raising from it
    cancels (nothing is left). ``record`` adds fields to ``.scenelab-import.json``, written inside the
    folder last, before the rename (so its presence means the import completed)."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}; use e.g. 0.3.")
    source = source_name(zip_path)
    with open_zip(zip_path) as zf, staged_folder(dest, what="destination folder") as tmp:
        images, skipped, tops = _candidates(zf, source, limits)
        placed = _layout(images, skipped)
        _check_classes(placed, source, tops, bool(images))
        was_split = placed[0][1] is None
        if was_split:
            placed = _assign_splits(placed, test_fraction, seed)
        _unpack(zf, placed, tmp, Budget(limits, source), skipped, progress)
        counts = validate_staged(tmp, source, skipped)
        n_test, n_all = sum(counts["test"].values()), sum(sum(c.values()) for c in counts.values())
        result = ImportResult(Path(dest), counts, was_split, round(n_test / max(n_all, 1), 4), skipped)
        _write_record(tmp, source, result, seed, record)
    result.dest = check_data_root(dest, what="destination folder")
    logger.info("Imported %s into %s (%d images, %d skipped).", source, result.dest, n_all, len(skipped))
    return result


def _unpack(zf: zipfile.ZipFile, placed: list[Placed], tmp: Path, budget: Budget, skipped: list[Skipped],
            progress: ProgressFn | None) -> None:
    """Stream each placed image to ``tmp/<split>/<class>/<name>`` (a repeated name is skipped)."""
    for done, (info, split, cls, name) in enumerate(placed, 1):
        folder = tmp / str(split) / cls
        try:
            folder.mkdir(parents=True, exist_ok=True)
            extract_entry(zf, info, folder / name, budget)
            if done == 1:
                checkpoint("import:write")
        except FileExistsError:
            skipped.append(Skipped(info.filename, "duplicate entry (same file name twice in the zip)"))
        except OSError as exc:
            msg = f"Could not unpack {info.filename!r} into {tmp.parent} ({os_error_phrase(exc)})"
            raise DatasetError(f"{msg}; free some space or choose another folder.") from exc
        if progress is not None:
            progress({"event": "import", "done": done, "total": len(placed), "bytes": budget.total})


def validate_staged(tmp: Path, source: str, skipped: list[Skipped]) -> dict[str, dict[str, int]]:
    """The unpacked folder through the same rules as any dataset folder (messages name the zip, not the temp folder)."""
    try:
        info = scan_dataset(tmp)
    except DatasetError as exc:
        raise type(exc)(str(exc).replace(str(tmp), source)) from None
    skipped.extend(info.skipped)
    return info.counts()


def _write_record(tmp: Path, source: str, result: ImportResult, seed: int, extra: Mapping[str, Any] | None) -> None:
    payload = {"source": source, "counts": result.counts, "was_split": result.was_split, "seed": seed,
               "test_share": result.test_share, "skipped": len(result.skipped), **(extra or {})}
    try:
        (tmp / IMPORT_RECORD).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise DatasetError(f"Could not finish the import in {tmp.parent} ({os_error_phrase(exc)}); free space.") from exc
