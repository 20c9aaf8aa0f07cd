"""The artifact store: one folder per run, written atomically, plus feature and image caches.

Layout under the artifacts root::

    runs/<run_id>/{config.json, history.csv, metrics.json, predictions.npz, model.keras}
    features/<key>.npz
    datasets/<fingerprint>-<size>-v<N>.npz
    weights/...

A run folder is first written as ``runs/.tmp-<run_id>-<random>/`` and renamed into place only when
every file is in it, so a run killed midway leaves nothing that claims to be complete. Two
processes asking for the same run serialise on ``runs/.locks/<run_id>.lock``: one trains, the
other waits and then reads the finished run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StoreError

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
RUN_FILES = ("config.json", "history.csv", "metrics.json")


def _store_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno == 28:
        what = "the disk is full"
    elif exc.errno in (13, 30):
        what = "it is read-only or not writable"
    else:
        what = exc.strerror or str(exc)
    return StoreError(
        f"Could not write to {path} because {what}; free some space or choose a writable "
        "artifacts folder (--artifacts or SCENELAB_ARTIFACTS). Earlier results are untouched."
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _store_error(path, exc) from exc


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays uncompressed (fast to load) through a temporary file and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _store_error(path, exc) from exc


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Load a cache file without pickle; a corrupt one is reported, deleted and ``None`` returned."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("Cache file %s is corrupt (%s); it will be rebuilt.", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


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
        except (OSError, ValueError, TypeError) as exc:
            self._quarantine(path, f"{type(exc).__name__}: {exc}")
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
    @contextlib.contextmanager
    def lock(self, run_id: str, timeout: float | None = None) -> Iterator[None]:
        """An exclusive inter-process lock for one run id (released when the process dies)."""
        lock_dir = self.runs_dir / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fh = open(lock_dir / f"{run_id}.lock", "a+")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise _store_error(lock_dir, exc) from exc
        try:
            start = time.monotonic()
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if timeout is not None and time.monotonic() - start > timeout:
                        raise StoreError(
                            f"Run {run_id} is being trained by another session; wait for it to finish."
                        ) from None
                    time.sleep(0.2)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def begin_run(self, run_id: str) -> Path:
        """A fresh temporary folder that :meth:`commit_run` will rename to the run's folder."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f".tmp-{run_id}-", dir=self.runs_dir))
        except OSError as exc:
            raise _store_error(self.runs_dir, exc) from exc

    def commit_run(self, run_id: str, tmp: Path) -> RunRecord:
        missing = [name for name in RUN_FILES if not (tmp / name).exists()]
        if missing:
            raise StoreError(f"Run {run_id} is incomplete (missing {', '.join(missing)}); not saved.")
        target = self.run_path(run_id)
        try:
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if target.exists():  # another process finished it first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _store_error(target, exc) from exc
        record = self.load_run(run_id)
        if record is None:
            raise StoreError(f"Run {run_id} could not be read back after saving.")
        return record

    def clean_stale(self, max_age_s: float = 0.0) -> int:
        """Remove temporary run folders left by killed processes; return how many were removed."""
        if not self.runs_dir.is_dir():
            return 0
        removed = 0
        now = time.time()
        for entry in self.runs_dir.glob(".tmp-*"):
            if now - entry.stat().st_mtime >= max_age_s:
                run_id = entry.name.split("-")[1]
                # only when nobody holds that run's lock (i.e. its writer is dead)
                lock_path = self.runs_dir / ".locks" / f"{run_id}.lock"
                with open(lock_path, "a+") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
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
