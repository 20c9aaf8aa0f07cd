"""Atomic file writes and cache reads: what every stored file goes through.

A file is written to a temporary name in its folder, fsynced and renamed into place, so a reader sees
either the old file or the whole new one. Every write failure (a full disk, a read-only folder) becomes a
:class:`~core.errors.StoreError` of one sentence. Cache files are read without pickle; a corrupt one is
reported, deleted and rebuilt, never trusted.

Writing passes named *checkpoints* (``write:<file name>`` half-way through a file, ``commit`` before a run
folder's rename, ``import:...``, ``export:...``): listeners added with :func:`add_checkpoint_hook` see them.
SceneLab adds none; the interruption tests add one that pauses the process there so they can kill it at
exactly that point (``tests/hooks/sitecustomize.py``). Without a listener a checkpoint is an empty loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import StoreError, first_line, os_error_phrase
from core.store.mapped import Streamed, read_or_map, write_member

logger = logging.getLogger(__name__)

#: A checkpoint listener: (name, other names the same point answers to, inside a run's temporary folder).
CheckpointHook = Callable[[str, tuple[str, ...], bool], None]
_HOOKS: list[CheckpointHook] = []


def store_error(path: Path, exc: OSError) -> StoreError:
    """The one sentence for a failed write under ``path``: why, what to do, and that nothing was lost."""
    return StoreError(
        f"Could not write to {path} because {os_error_phrase(exc)}; free some space or choose a writable "
        "artifacts folder (--artifacts or SCENELAB_ARTIFACTS). Earlier results are untouched."
    )


def add_checkpoint_hook(hook: CheckpointHook) -> None:
    """Call ``hook`` at every checkpoint from now on (for the interruption tests)."""
    _HOOKS.append(hook)


def checkpoint(name: str, *aliases: str, in_run: bool = False) -> None:
    """A named point in writing stored files: every listener is called with it (none unless one was added)."""
    for hook in _HOOKS:
        hook(name, aliases, in_run)


def _write_file(fh: IO[bytes], data: bytes, path: Path) -> None:
    if _HOOKS:  # write half, pass the checkpoint, write the rest: a listener sees a half-written file
        half = len(data) // 2
        fh.write(data[:half])
        fh.flush()
        # "write:<file name>", or "write:<folder>" for any file in artifacts/<folder>/ (datasets, features)
        checkpoint(f"write:{path.name}", f"write:{path.parent.name}", in_run=path.parent.name.startswith(".tmp-"))
        fh.write(data[half:])
    else:
        fh.write(data)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None], prefix: str, suffix: str) -> None:
    """``write`` into a temporary file ``<prefix>*<suffix>`` in ``path``'s folder, fsync, rename onto ``path``; a
    failure leaves no temporary file and becomes the one-sentence :class:`StoreError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise store_error(path, exc) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and a rename."""
    path = Path(path)
    _atomic_write(path, lambda fh: _write_file(fh, data, path), f".{path.name}.", ".tmp")


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays uncompressed (fast to load) through a temporary file, fsync and a rename."""
    path = Path(path)

    def write(fh: IO[bytes]) -> None:
        if _HOOKS:  # whole in memory first, so a listener sees the file half-written
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            _write_file(fh, buf.getvalue(), path)
        else:
            np.savez(fh, **arrays)

    _atomic_write(path, write, f".{path.stem}.", ".npz")


def atomic_write_npz_streamed(path: Path, arrays: dict[str, np.ndarray | Streamed]) -> None:
    """:func:`atomic_write_npz` for arrays that need not fit in memory: a :data:`~core.store.mapped.Streamed` one
    is written chunk by chunk (the file is an ordinary uncompressed ``.npz``, and :func:`~core.store.mapped.map_member`
    maps its members)."""
    path = Path(path)

    def write(fh: IO[bytes]) -> None:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for i, (name, array) in enumerate(arrays.items()):
                write_member(zf, name, array)
                if i == 0 and _HOOKS:  # a listener sees the file half-written
                    fh.flush()
                    checkpoint(f"write:{path.name}", f"write:{path.parent.name}", in_run=False)

    _atomic_write(path, write, f".{path.stem}.", ".npz")


def load_npz(path: Path, *, map_large: bool = False) -> dict[str, np.ndarray] | None:
    """Load a cache file without pickle; a corrupt one is reported, deleted and ``None`` returned. ``map_large``:
    members past :data:`~core.store.mapped.MAP_ABOVE_BYTES` are memory-mapped (read-only) instead of read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: read_or_map(path, z, k) if map_large else z[k] for k in z.files}
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
