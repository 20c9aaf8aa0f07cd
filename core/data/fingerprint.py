"""A dataset's identity: its content (file names, sizes and bytes), not where it lies or when it was copied.

A byte-identical copy of a dataset (``cp -r``, a zip unpacked elsewhere) is the same dataset: its runs and
studies are reused. Each file's digest is cached by (size, mtime) in a small per-user cache
(``$XDG_CACHE_HOME/scenelab/file-digests/``, one JSON file per dataset folder), so a re-scan reads no
image. The *legacy* fingerprint (names, sizes and mtimes, what SceneLab used first) is kept beside it so
that runs stored under it are still found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DIGEST_CHUNK = 1 << 20
CACHE_VERSION = 1
Stat = tuple[str, int, int]  # (path relative to the root, size, mtime in ns)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scenelab" / "file-digests"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # a file name that is not valid UTF-8 hashes as its raw bytes


def legacy_fingerprint(classes: list[str], stats: Iterable[Stat]) -> str:
    """Names, sizes and mtimes: changes when a dataset is copied without its timestamps."""
    h = hashlib.sha256(_encode("\n".join(classes)))
    for rel, size, mtime in sorted(stats):
        h.update(_encode(f"\n{rel}\t{size}\t{mtime}"))
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(DIGEST_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def _cache_file(root: Path) -> Path:
    return cache_dir() / f"{hashlib.sha256(_encode(str(root))).hexdigest()[:24]}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("v") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _save_cache(path: Path, files: dict[str, list]) -> None:
    """Best effort: a cache that cannot be written only costs reading the images again next time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"v": CACHE_VERSION, "files": files}))
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("File-digest cache not written (%s).", exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def content_fingerprint(
    root: Path, classes: list[str], stats: list[Stat], progress: Callable[[dict[str, Any]], None] | None = None
) -> str:
    """Classes, file names, sizes and content digests (cached by size and mtime); ``progress`` hears about every
    500th file read (``{"event": "scan", "done", "total", "elapsed"}``)."""
    cache_path = _cache_file(root)
    cached = _load_cache(cache_path)
    files: dict[str, list] = {}
    h = hashlib.sha256(_encode("\n".join(classes)))
    t0 = time.monotonic()
    for i, (rel, size, mtime) in enumerate(sorted(stats), 1):
        if progress is not None and (i % 500 == 0 or i == len(stats)):
            progress({"event": "scan", "done": i, "total": len(stats), "elapsed": time.monotonic() - t0})
        hit = cached.get(rel)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == size and hit[1] == mtime and isinstance(hit[2], str):
            digest = hit[2]
        else:
            try:
                digest = _file_digest(root / rel)
            except OSError:  # vanished or unreadable since the scan: it cannot be the same content
                digest = f"unreadable:{size}:{mtime}"
        files[rel] = [size, mtime, digest]
        h.update(_encode(f"\n{rel}\t{size}\t{digest}"))
    if files != cached:
        _save_cache(cache_path, files)
    return h.hexdigest()[:16]
