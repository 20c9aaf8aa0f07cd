"""The artifact store: one folder per run, written atomically, plus feature and image caches.

Layout under the artifacts root::

    runs/<run_id>/{config.json, history.csv, metrics.json, predictions.npz, model.keras}
    features/<key>.npz
    datasets/<fingerprint>-<size>-v<N>.npz
    weights/...

A run folder is first written as ``runs/.tmp-<run_id>-<random>/`` and renamed into place only when
every file is in it, so a run killed midway leaves nothing that claims to be complete. Two
processes asking for the same run serialise on ``runs/.locks/<run_id>.lock``: one trains, the
other waits and then reads the finished run. Temporary folders and files left by killed writers
are removed by :meth:`Store.clean_stale` (also called whenever a run starts being written).

Every write failure (a full disk, a read-only folder) becomes a :class:`~core.errors.StoreError`
of one sentence and leaves earlier results untouched. A run is not started when the artifacts
disk has less than ``SCENELAB_MIN_FREE_MB`` megabytes free (default 64).

For the interruption tests, ``SCENELAB_TEST_PAUSE_AT=write:<file name>`` (half-way through writing
that file), ``write:<folder>`` (any file of ``datasets/`` or ``features/``), ``write`` (the first
file written into a run's temporary folder) or ``commit`` (every file written, before the rename) makes the process print ``scenelab-test: paused at ...`` on stderr
and sleep, so a test can kill it at exactly that point. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StoreError, os_error_phrase

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
RUN_FILES = ("config.json", "history.csv", "metrics.json")


MIN_FREE_MB_ENV = "SCENELAB_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 64
PAUSE_ENV = "SCENELAB_TEST_PAUSE_AT"
TEMP_FILE_MAX_AGE_S = 3600.0  # a cache's temporary file older than this has no live writer

# Runs whose lock this process holds, and the temporary run folders it is writing right now.
_HELD: set[tuple[str, str]] = set()
_LIVE_TMP: set[str] = set()
_STATE_LOCK = threading.Lock()


def store_error(path: Path, exc: OSError) -> StoreError:
    """The one sentence for a failed write under ``path``: why, what to do, and that nothing was lost."""
    return StoreError(
        f"Could not write to {path} because {os_error_phrase(exc)}; free some space or choose a writable "
        "artifacts folder (--artifacts or SCENELAB_ARTIFACTS). Earlier results are untouched."
    )


_store_error = store_error  # the old private name


def _pause_point(name: str, *aliases: str, in_run: bool = False) -> None:
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
        _pause_point(f"write:{path.name}", f"write:{path.parent.name}", in_run=path.parent.name.startswith(".tmp-"))
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
        first = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        logger.warning("Cache file %s is corrupt (%s); it will be rebuilt.", path, first)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _run_id_of_tmp(name: str) -> str:
    """``.tmp-<run_id>-<random>`` -> ``run_id`` (mkdtemp's random part has no '-')."""
    return name[len(".tmp-") :].rsplit("-", 1)[0]


@dataclass
class RunRecord:
    """A finished run as read back from the store."""

    run_id: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, float]]

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    def predictions(self) -> dict[str, np.ndarray] | None:
        return load_npz(self.path / "predictions.npz")


class Store:
    """Runs, features and decoded images under one artifacts root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def weights_dir(self) -> Path:
        return self.root / "weights"

    def run_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    # -- reading --------------------------------------------------------------------------------
    def has_run(self, run_id: str) -> bool:
        return self.load_run(run_id) is not None

    def load_run(self, run_id: str) -> RunRecord | None:
        """The finished run ``run_id``, or ``None``; a damaged run folder is moved aside."""
        path = self.run_path(run_id)
        if not path.is_dir():
            return None
        try:
            config = json.loads((path / "config.json").read_text())
            metrics = json.loads((path / "metrics.json").read_text())
            with open(path / "history.csv", newline="") as fh:
                history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
            if not isinstance(config, dict) or not isinstance(metrics, dict):
                raise ValueError("config or metrics is not a JSON object")
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            self._quarantine(path, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
            return None
        return RunRecord(run_id, path, config, metrics, history)

    def list_runs(self) -> list[RunRecord]:
        if not self.runs_dir.is_dir():
            return []
        records = []
        for entry in sorted(self.runs_dir.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                record = self.load_run(entry.name)
                if record is not None:
                    records.append(record)
        return records

    def _quarantine(self, path: Path, reason: str) -> None:
        target = path.parent / f".corrupt-{path.name}-{int(time.time())}"
        logger.warning("Run folder %s is damaged (%s); moved to %s and will be retrained.", path, reason, target)
        with contextlib.suppress(OSError):
            path.rename(target)

    # -- writing --------------------------------------------------------------------------------
    def _key(self, run_id: str) -> tuple[str, str]:
        return (os.path.abspath(self.runs_dir), run_id)

    @contextlib.contextmanager
    def lock(self, run_id: str, timeout: float | None = None) -> Iterator[None]:
        """An exclusive lock for one run id, between processes and between threads (``flock`` on a
        file opened per call); the kernel releases it when the holder dies, even by SIGKILL."""
        lock_dir = self.runs_dir / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fh = open(lock_dir / f"{run_id}.lock", "a+")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise store_error(lock_dir, exc) from exc
        try:
            start = time.monotonic()
            waited = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        logger.info("Run %s is being trained by another session; waiting for it to finish.", run_id)
                        waited = True
                    if timeout is not None and time.monotonic() - start > timeout:
                        raise StoreError(
                            f"Run {run_id} is being trained by another session; wait for it to finish."
                        ) from None
                    time.sleep(0.2)
            with _STATE_LOCK:
                _HELD.add(self._key(run_id))
            try:
                yield
            finally:
                with _STATE_LOCK:
                    _HELD.discard(self._key(run_id))
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def min_free_bytes(self) -> int:
        try:
            mb = float(os.environ.get(MIN_FREE_MB_ENV, DEFAULT_MIN_FREE_MB))
        except ValueError:
            mb = DEFAULT_MIN_FREE_MB
        return int(max(mb, 0.0) * 1024 * 1024)

    def check_free_space(self) -> None:
        """:class:`StoreError` (disk full) when the artifacts disk has less than the minimum free."""
        try:
            free = shutil.disk_usage(self.runs_dir).free
        except OSError:
            return
        if free < self.min_free_bytes():
            raise store_error(self.runs_dir, OSError(errno.ENOSPC, "No space left on device"))

    def begin_run(self, run_id: str) -> Path:
        """A fresh temporary folder that :meth:`commit_run` will rename to the run's folder.

        Called while holding :meth:`lock` for ``run_id`` (as :func:`core.train.train` does), it also
        removes what earlier, killed writers of the same run left behind.
        """
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(self.runs_dir, exc) from exc
        self.check_free_space()
        with contextlib.suppress(OSError):
            self.clean_stale()
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run_id}-", dir=self.runs_dir))
        except OSError as exc:
            raise store_error(self.runs_dir, exc) from exc
        with _STATE_LOCK:
            _LIVE_TMP.add(str(tmp))
        return tmp

    def commit_run(self, run_id: str, tmp: Path) -> RunRecord:
        """Rename a fully written temporary folder to the run's folder (all or nothing)."""
        try:
            missing = [name for name in RUN_FILES if not (tmp / name).exists()]
            if missing:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(f"Run {run_id} is incomplete (missing {', '.join(missing)}); not saved.")
            target = self.run_path(run_id)
            try:
                for f in tmp.iterdir():
                    if f.is_file():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
                _fsync_dir(tmp)
                _pause_point("commit")
                try:
                    os.rename(tmp, target)  # atomic; fails if another writer's run is already there
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    if self.load_run(run_id) is None:  # theirs was damaged and has been moved aside
                        os.rename(tmp, target)
                    else:  # another process finished it first: keep theirs
                        shutil.rmtree(tmp, ignore_errors=True)
                _fsync_dir(self.runs_dir)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise store_error(target, exc) from exc
        finally:
            with _STATE_LOCK:
                _LIVE_TMP.discard(str(tmp))
        record = self.load_run(run_id)
        if record is None:
            raise StoreError(f"Run {run_id} could not be read back after saving; train it again.")
        return record

    def clean_stale(self, max_age_s: float = 0.0, temp_file_age_s: float = TEMP_FILE_MAX_AGE_S) -> int:
        """Remove what killed writers left behind; return how many folders and files were removed.

        * ``runs/.tmp-<run_id>-*`` folders older than ``max_age_s`` whose run lock nobody holds (a
          live writer holds it for as long as it writes; the kernel drops it when the writer dies);
          when this process holds that lock itself, every such folder but the ones it is writing.
        * temporary cache files (``.<name>.*.npz`` / ``.tmp``) older than ``temp_file_age_s``.
        """
        removed = 0
        now = time.time()
        if self.runs_dir.is_dir():
            lock_dir = self.runs_dir / ".locks"
            for entry in sorted(self.runs_dir.glob(".tmp-*")):
                try:
                    if not entry.is_dir() or now - entry.stat().st_mtime < max_age_s:
                        continue
                except OSError:  # removed meanwhile
                    continue
                with _STATE_LOCK:
                    if str(entry) in _LIVE_TMP:
                        continue
                    ours = self._key(_run_id_of_tmp(entry.name)) in _HELD
                if ours:  # we hold the lock: nobody else can be writing this run
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
                    continue
                try:
                    lock_dir.mkdir(parents=True, exist_ok=True)
                    fh = open(lock_dir / f"{_run_id_of_tmp(entry.name)}.lock", "a+")  # noqa: SIM115
                except OSError:  # a read-only store: leave it
                    continue
                with fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:  # its writer is alive
                        continue
                    try:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed += 1
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
        for folder in (self.features_dir, self.datasets_dir, self.runs_dir):
            if not folder.is_dir():
                continue
            for entry in folder.glob(".*"):
                if not (entry.name.endswith(".tmp") or entry.name.endswith(".npz")):
                    continue
                try:
                    if not entry.is_file() or now - entry.stat().st_mtime < max(temp_file_age_s, max_age_s):
                        continue
                    entry.unlink()
                    removed += 1
                except OSError:
                    continue
        return removed


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
