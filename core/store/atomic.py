"""Atomic file writes and cache reads: what every stored file goes through.

A file is written to a temporary name in its folder, fsynced and renamed into place, so a reader sees
either the old file or the whole new one. Every write failure (a full disk, a read-only folder) becomes a
:class:`~core.errors.StoreError` of one sentence. Cache files are read without pickle; a corrupt one is
reported, deleted and rebuilt, never trusted.

For the interruption tests, ``SCENELAB_TEST_PAUSE_AT=write:<file name>`` (half-way through writing that
file), ``write:<folder>`` (any file of ``datasets/`` or ``features/``), ``write`` (the first file written
into a run's temporary folder) or ``commit`` (every file written, before the rename; see ``core.store.folders``)
makes the process print ``scenelab-test: paused at ...`` on stderr and sleep, so a test can kill it at
exactly that point. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StoreError, first_line, os_error_phrase

logger = logging.getLogger(__name__)

PAUSE_ENV = "SCENELAB_TEST_PAUSE_AT"


def store_error(path: Path, exc: OSError) -> StoreError:
    """The one sentence for a failed write under ``path``: why, what to do, and that nothing was lost."""
    return StoreError(
        f"Could not write to {path} because {os_error_phrase(exc)}; free some space or choose a writable "
        "artifacts folder (--artifacts or SCENELAB_ARTIFACTS). Earlier results are untouched."
    )


def pause_point(name: str, *aliases: str, in_run: bool = False) -> None:
    """Test hook: sleep at ``name`` (or one of its ``aliases``) when ``SCENELAB_TEST_PAUSE_AT`` asks for it."""
    want = os.environ.get(PAUSE_ENV)
    if not want:
        return
    if not (want in (name, *aliases) or (want == "write" and in_run and name.startswith("write:"))):
        return
    sys.stderr.write(f"scenelab-test: paused at {name if want == 'write' else want} ({name})\n")
    sys.stderr.flush()
    time.sleep(float(os.environ.get("SCENELAB_TEST_PAUSE_S", "120")))


def _write_file(fh: io.BufferedWriter | Any, data: bytes, path: Path) -> None:
    if os.environ.get(PAUSE_ENV):  # write half, pause, write the rest
        half = len(data) // 2
        fh.write(data[:half])
        fh.flush()
        # "write:<file name>", or "write:<folder>" for any file in artifacts/<folder>/ (datasets, features)
        pause_point(f"write:{path.name}", f"write:{path.parent.name}", in_run=path.parent.name.startswith(".tmp-"))
        fh.write(data[half:])
    else:
        fh.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                _write_file(fh, data, path)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise store_error(path, exc) from exc


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays uncompressed (fast to load) through a temporary file, fsync and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                if os.environ.get(PAUSE_ENV):
                    buf = io.BytesIO()
                    np.savez(buf, **arrays)
                    _write_file(fh, buf.getvalue(), path)
                else:
                    np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise store_error(path, exc) from exc


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Load a cache file without pickle; a corrupt one is reported, deleted and ``None`` returned."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip, pickled objects...: rebuild, never trust
        logger.warning("Cache file %s is corrupt (%s); it will be rebuilt.", path, first_line(exc))
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_history_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join(repr(float(row.get(k, float("nan")))) for k in keys))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
