"""Fetch the original Oliva-Torralba 8-scene images (256x256) and lay out a seeded, stratified split.

The archive (spatial_envelope_256x256_static_8outdoorcategories.zip, 2688 JPEGs named
``<class>_<name>.jpg``) is streamed into a hidden ``.download.part`` file inside the temporary folder
of :func:`core.data.archive.staged_folder`, checked (its size against Content-Length, a sha256 when one is
known, that it opens as a zip, its image count) and split 70/30 per class into
``<dest>/{train,test}/<class>/`` with the class names of the MIT_split layout, then renamed into
place. A failed, truncated or interrupted download leaves no zip and no dataset folder: only the
hidden temporary folder, which the next import or download beside it removes. Without internet the
bundled 64 px copy (:mod:`core.data.bundled`) stays in use.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core.data.archive import Budget, Limits, ProgressFn, extract_entry, open_zip, staged_folder, validate_staged
from core.data.scan import Skipped
from core.data.security import allowed_roots
from core.errors import DatasetError, first_line, os_error_phrase
from core.paths import REPO

logger = logging.getLogger(__name__)

OLIVA_TORRALBA_URL = (
    "https://people.csail.mit.edu/torralba/code/spatialenvelope/spatial_envelope_256x256_static_8outdoorcategories.zip"
)
EXPECTED_IMAGES = 2688
# archive prefix -> class folder name used by MIT_split
CLASS_NAMES = {
    "coast": "coast",
    "forest": "forest",
    "highway": "highway",
    "insidecity": "inside_city",
    "mountain": "mountain",
    "opencountry": "Opencountry",
    "street": "street",
    "tallbuilding": "tallbuilding",
}
TEST_FRACTION = 807 / 2688  # the MIT_split proportion
MAX_DOWNLOAD_BYTES = 1 << 30  # the real archive is about 70 MB
PART_NAME = ".download.part"
AGAIN = "the download is damaged or another file: delete it and download it again"
CHUNK = 1 << 16
PROGRESS_EVERY_S = 0.2
OFFLINE = (
    "downloading the 256 px originals needs the internet: connect and retry, or pass a zip downloaded by hand "
    "with --zip; meanwhile the bundled 64 px copy stays in use"
)


# -- the transfer ---------------------------------------------------------------------------------
def _event(done: int, total: int | None, elapsed: float) -> dict[str, float | int | None | str]:
    speed = done / elapsed if elapsed > 0 else 0.0
    left = (total - done) / speed if total is not None and speed > 0 else None
    return {"event": "download", "bytes": done, "total": total, "speed_bps": round(speed, 1), "eta_s": left}


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    try:
        value = int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _stream(
    resp: BinaryIO, fh: BinaryIO, out: Path, url: str, total: int | None, progress: ProgressFn | None, max_bytes: int
) -> tuple[int, str]:
    """Copy the response body to ``fh``; return the bytes copied and their sha256."""
    digest, done, t0 = hashlib.sha256(), 0, time.monotonic()
    last, read = t0, getattr(resp, "read1", resp.read)  # read1: what has arrived, so progress flows on slow links
    while block := read(CHUNK):
        done += len(block)
        if done > max_bytes:
            raise DatasetError(
                f"{url} sends more than {max_bytes >> 20} MiB; expected the 8-scene zip: check the address."
            )
        digest.update(block)
        try:
            fh.write(block)
        except OSError as exc:
            raise DatasetError(
                f"Could not save the download in {out.parent} ({os_error_phrase(exc)}); free some space."
            ) from exc
        now = time.monotonic()
        if progress is not None and now - last >= PROGRESS_EVERY_S:
            progress(_event(done, total, now - t0))
            last = now
    if progress is not None:
        progress(_event(done, total, time.monotonic() - t0))
    return done, digest.hexdigest()


def fetch(
    url: str,
    out: Path,
    *,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
    sha256: str | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> int:
    """Stream ``url`` into the file ``out`` (a temporary name the caller removes on failure); return its size.

    Refused, in one sentence: a non-HTTP address, a network failure or an HTTP error, a body shorter
    than its Content-Length (a truncated transfer), over ``max_bytes``, or a sha256 mismatch.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DatasetError(f"The download address {url!r} is not an http(s) address; give an http:// or https:// URL.")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(out, "wb") as fh:  # noqa: S310 - scheme checked
            total = _content_length(resp)
            if total is not None and total > max_bytes:
                raise DatasetError(
                    f"{url} is {total >> 20} MiB, over the {max_bytes >> 20} MiB limit; check the address."
                )
            done, digest = _stream(resp, fh, out, url, total, progress, max_bytes)
    except urllib.error.HTTPError as exc:
        raise DatasetError(
            f"Could not download {url}: the server answered {exc.code} {exc.reason}; {OFFLINE}."
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        text = first_line(reason) if isinstance(reason, BaseException) else str(reason)
        raise DatasetError(f"Could not download {url} ({text}); {OFFLINE}.") from None
    if total is not None and done != total:
        raise DatasetError(f"The download of {url} stopped at {done} of {total} bytes (connection cut); {OFFLINE}.")
    if sha256 is not None and digest != sha256.lower():
        raise DatasetError(
            f"The download of {url} has sha256 {digest[:12]}..., expected {sha256[:12]}... (altered or a "
            "different file); retry later, or download it by hand and pass it with --zip."
        )
    return done


def download(
    url: str, dest: Path, *, progress: ProgressFn | None = None, timeout: float = 60.0, sha256: str | None = None
) -> Path:
    """Download ``url`` to the file ``dest``: streamed to a hidden ``.part`` beside it, checked, renamed (all or nothing)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise DatasetError(f"Cannot write in {dest.parent} ({os_error_phrase(exc)}); choose a writable folder.") from exc
    part = Path(name)
    try:
        fetch(url, part, progress=progress, timeout=timeout, sha256=sha256)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


# -- the split ------------------------------------------------------------------------------------
def _scene_members(zf: zipfile.ZipFile, source: str, expected: int | None) -> dict[str, list[zipfile.ZipInfo]]:
    """The archive's scene JPEGs per class prefix; one sentence if the classes or the count are wrong."""
    members: dict[str, list[zipfile.ZipInfo]] = {c: [] for c in CLASS_NAMES}
    for info in zf.infolist():
        name = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
        if info.is_dir() or not name.lower().endswith(".jpg") or name.startswith("."):
            continue
        prefix = name.split("_", 1)[0].lower()
        if prefix in members:
            members[prefix].append(info)
    total = sum(len(v) for v in members.values())
    empty = [c for c, v in members.items() if not v]
    if empty or (expected is not None and total != expected):
        raise DatasetError(
            f"{source} holds {total} scene images (classes without images: {', '.join(empty) or 'none'}), "
            f"expected {expected or 'some'} in 8 classes; the download is incomplete or another archive: "
            "delete it and download it again."
        )
    return members


def _split_into(
    zf: zipfile.ZipFile, members: dict[str, list[zipfile.ZipInfo]], tmp: Path, seed: int, source: str
) -> dict[str, dict[str, int]]:
    """Write each class's images to ``tmp/{train,test}/<class>/``: ``TEST_FRACTION`` of them to test."""
    rng = np.random.default_rng(seed)
    budget = Budget(Limits(), source)
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for prefix, infos in sorted(members.items()):
        infos = sorted(infos, key=lambda i: i.filename)
        order = rng.permutation(len(infos))
        n_test = int(round(len(infos) * TEST_FRACTION))
        cls = CLASS_NAMES[prefix]
        for rank, idx in enumerate(order):
            split = "test" if rank < n_test else "train"
            info = infos[idx]
            out = tmp / split / cls / info.filename.replace("\\", "/").rsplit("/", 1)[-1]
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                extract_entry(zf, info, out, budget)
            except FileExistsError:
                continue  # the same file name twice in the archive: the first is kept
            except OSError as exc:
                raise DatasetError(
                    f"Could not write {out.name} into {tmp.parent} ({os_error_phrase(exc)}); free some space."
                ) from exc
            counts[split][cls] = counts[split].get(cls, 0) + 1
    return counts


def _split_zip(zip_path: Path, tmp: Path, seed: int, expected: int | None, source: str) -> dict[str, dict[str, int]]:
    with open_zip(zip_path, source, AGAIN) as zf:
        members = _scene_members(zf, source, expected)
        counts = _split_into(zf, members, tmp, seed, source)
    skipped: list[Skipped] = []
    validate_staged(tmp, source, skipped)
    return counts


def split_archive(
    zip_path: Path, dest: Path, seed: int = 0, expected: int | None = EXPECTED_IMAGES
) -> dict[str, dict[str, int]]:
    """Unpack the 8-scene zip into a stratified train/test layout at ``dest``; return counts per split/class."""
    zip_path = Path(zip_path)
    with open_zip(zip_path, advice=AGAIN) as zf:  # refuse a wrong archive before touching the destination
        _scene_members(zf, zip_path.name, expected)
    with staged_folder(dest, what="dataset folder") as tmp:
        counts = _split_zip(zip_path, tmp, seed, expected, zip_path.name)
    return counts


def _download_split(
    dest: str | os.PathLike[str],
    url: str,
    progress: ProgressFn | None,
    expected: int | None,
    sha256: str | None,
    timeout: float,
    seed: int,
) -> dict[str, dict[str, int]]:
    source = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] or url
    with staged_folder(dest, what="dataset folder") as tmp:  # dest is checked before any byte is fetched
        part = tmp / PART_NAME
        logger.info("Downloading %s", url)
        fetch(url, part, progress=progress, timeout=timeout, sha256=sha256)
        counts = _split_zip(part, tmp, seed, expected, source)
        part.unlink()
    return counts


def download_original(
    dest: str | os.PathLike[str],
    *,
    url: str = OLIVA_TORRALBA_URL,
    progress: ProgressFn | None = None,
    expected_images: int | None = EXPECTED_IMAGES,
    sha256: str | None = None,
    timeout: float = 60.0,
    seed: int = 0,
) -> Path:
    """Download the 256 px 8-scene archive, check it, and split it into the new folder ``dest``.

    ``progress`` receives ``{"event": "download", "bytes", "total", "speed_bps", "eta_s"}`` about five
    times a second and once at the end; raising from it cancels (nothing is left).
    """
    _download_split(dest, url, progress, expected_images, sha256, timeout, seed)
    return Path(dest).expanduser().resolve()


def download_data(
    dest: str | os.PathLike[str], zip_path: str | os.PathLike[str] | None = None, seed: int = 0
) -> dict[str, dict[str, int]]:
    """Download (unless ``zip_path`` is given) and split the 8-scene dataset into ``dest``; counts per split/class."""
    if zip_path is not None:
        return split_archive(Path(zip_path), Path(dest).expanduser(), seed=seed)
    return _download_split(dest, OLIVA_TORRALBA_URL, None, EXPECTED_IMAGES, None, 60.0, seed)


def default_original_dest() -> Path:
    """Where the app puts the 256 px originals: ``<first SCENELAB_DATA_ROOTS folder>/mit8``, else ``<repo>/data/mit8``."""
    roots = allowed_roots()
    return (roots[0] if roots else REPO / "data") / "mit8"
