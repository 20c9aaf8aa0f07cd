"""The embedded default dataset: MIT_split of the MIT 8-scene images at 64x64, shipped in the repository.

``artifacts/bundled/mit_split_64.zip`` (5.5 MB, stored uncompressed: train 1881 / test 807 images, 8
classes) is unpacked once, through the safe import of :mod:`core.data.archive`, into
``<artifacts>/bundled/mit_split_64/``, so a fresh install trains offline on first start. The import
writes its record (with the zip's sha256) inside the temporary folder last, before the rename, so the
record's presence proves the folder is complete: later calls read one small file instead of
re-scanning 2688 images (measured by ``bench/bundled.py``). Two processes calling at once serialise on
an ``flock``: one unpacks, the other waits and finds the folder done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from core.data.archive import IMPORT_RECORD, import_zip
from core.data.security import check_data_root
from core.errors import DatasetError, os_error_phrase
from core.paths import REPO

logger = logging.getLogger(__name__)

BUNDLED_ZIP = REPO / "artifacts" / "bundled" / "mit_split_64.zip"
BUNDLED_SHA256 = "2303a03e65a8d54afea160a7e9368ec31b36dfa02ea841cdcd0de730144f697b"
BUNDLED_NAME = "mit_split_64"
DATA_ENV = "SCENELAB_DATA"
LOCK_TIMEOUT_S = 300.0
BUNDLED_NOTE = (
    "This is the bundled 64x64 copy of the MIT 8-scene dataset (Oliva & Torralba 2001) in its MIT_split "
    "(train 1881 / test 807 images), so figures measured on it are not those of the 256x256 originals: "
    "with internet, get the 256 px originals with `python -m core download-data --to data/mit8`."
)


def bundled_folder(artifacts_root: str | os.PathLike[str]) -> Path:
    """Where :func:`ensure_bundled` puts the unpacked dataset."""
    return Path(artifacts_root).expanduser() / "bundled" / BUNDLED_NAME


def _complete(folder: Path) -> bool:
    """True when the import record, written last before the rename, names the bundled zip."""
    try:
        record = json.loads((folder / IMPORT_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("bundled_sha256") == BUNDLED_SHA256


def is_bundled(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a complete folder unpacked by :func:`ensure_bundled` (never raises)."""
    return _complete(Path(path).expanduser())


def check_zip(zip_path: Path = BUNDLED_ZIP) -> None:
    """One sentence if the bundled zip is missing or is not the file shipped (sha256 mismatch)."""
    restore = f"restore it with `git checkout -- {BUNDLED_ZIP.relative_to(REPO)}` or reinstall SceneLab"
    try:
        digest = hashlib.sha256()
        with open(zip_path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise DatasetError(
            f"The bundled dataset {zip_path} cannot be read ({os_error_phrase(exc, writing=False)}); {restore}."
        ) from None
    if digest.hexdigest() != BUNDLED_SHA256:
        raise DatasetError(
            f"The bundled dataset {zip_path} has been altered (sha256 {digest.hexdigest()[:12]}..., "
            f"expected {BUNDLED_SHA256[:12]}...); {restore}."
        )


@contextlib.contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released by the kernel if the holder dies)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise DatasetError(
            f"Cannot write the bundled dataset into {path.parent} ({os_error_phrase(exc)}); "
            "choose a writable artifacts folder (--artifacts or SCENELAB_ARTIFACTS)."
        ) from exc
    with fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatasetError(
                        f"Another process has been unpacking the bundled dataset in {path.parent} for over "
                        f"{timeout:.0f} s; wait for it or stop it, then retry."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_bundled(artifacts_root: str | os.PathLike[str], *, zip_path: Path = BUNDLED_ZIP) -> Path:
    """The unpacked bundled dataset, unpacked now if it is not there yet (once; atomic; safe between processes)."""
    folder = bundled_folder(artifacts_root)
    check_data_root(folder, what="bundled dataset folder")  # its images are read like any dataset's
    if _complete(folder):
        return folder
    with _locked(folder.parent / f".{BUNDLED_NAME}.lock"):
        if _complete(folder):  # another process finished it while we waited
            return folder
        check_zip(zip_path)
        if folder.is_dir() and any(folder.iterdir()):  # not ours (no record): keep it, unpack beside
            aside = folder.with_name(f"{BUNDLED_NAME}.old-{int(time.time())}")
            logger.warning("%s is not a complete bundled dataset; moved to %s.", folder, aside)
            try:
                folder.rename(aside)
            except OSError as exc:
                raise DatasetError(
                    f"{folder} holds files that are not the bundled dataset and cannot be moved "
                    f"({os_error_phrase(exc)}); delete that folder and retry."
                ) from exc
        t0 = time.perf_counter()
        result = import_zip(zip_path, folder, record={"bundled_sha256": BUNDLED_SHA256})
        logger.info("Unpacked the bundled dataset into %s in %.1f s.", folder, time.perf_counter() - t0)
    logger.debug("Bundled dataset counts: %s", result.counts)
    return folder


def default_dataset(artifacts_root: str | os.PathLike[str]) -> Path:
    """The dataset used when none is given: ``SCENELAB_DATA`` when set, else the bundled copy (unpacked once)."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return ensure_bundled(artifacts_root)
