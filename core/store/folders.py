"""The artifact store: one folder per run, written atomically, plus feature and image caches.

Layout under the artifacts root::

    runs/<run_id>/{config.json, history.csv, metrics.json, predictions.npz, model.keras}
    features/<key>.npz
    datasets/<fingerprint>-<size>-v<N>.npz
    weights/...

A run folder is first written as ``runs/.tmp-<run_id>-<random>/`` (files through ``core.store.atomic``) and
renamed into place only when every file is in it, so a run killed midway leaves nothing that claims to be
complete. Two processes asking for the same run serialise on ``runs/.locks/<run_id>.lock``: one trains,
the other waits and then reads the finished run. Temporary folders and files left by killed writers are
removed by :meth:`Store.clean_stale` (also called whenever a run starts being written).

A run is not started when the artifacts disk has less than ``SCENELAB_MIN_FREE_MB`` megabytes free
(default 64).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StoreError, first_line
from core.store.atomic import checkpoint, fsync_dir, load_npz, store_error

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
RUN_FILES = ("config.json", "history.csv", "metrics.json")
ENSEMBLE_KEY = "ensemble"  # config.json's key naming an ensemble record's members


MIN_FREE_MB_ENV = "SCENELAB_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 64
REPLACED_PREFIX = ".replaced-"  # runs/.replaced-<run_id>-<random>/run: a run being replaced (train --force)
TEMP_FILE_MAX_AGE_S = 3600.0  # a cache's temporary file older than this has no live writer

# Runs whose lock this process holds, and the temporary run folders it is writing right now.
_HELD: set[tuple[str, str]] = set()
_LIVE_TMP: set[str] = set()
_STATE_LOCK = threading.Lock()


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

    @property
    def members(self) -> list[str]:
        """The run ids an ensemble record averages (``core.training.ensemble``); empty for a single run."""
        ensemble = self.config.get(ENSEMBLE_KEY)
        return list(ensemble.get("members", [])) if isinstance(ensemble, dict) else []


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
            self._quarantine(path, f"{type(exc).__name__}: {first_line(exc)}")
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

        Called while holding :meth:`lock` for ``run_id`` (as :func:`core.training.train.train` does), it also
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

    def commit_run(self, run_id: str, tmp: Path, *, replace: bool = False) -> RunRecord:
        """Rename a fully written temporary folder to the run's folder (all or nothing).

        ``replace`` (``train --force``): a stored run of the same id is replaced; it stays intact until the
        new one is complete, then is moved aside, the new one renamed in, and the old one removed (a crash
        between the two renames is undone by :meth:`clean_stale`). Without it, a run another process
        finished first is kept."""
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
                fsync_dir(tmp)
                checkpoint("commit")
                if replace and target.is_dir():
                    self._swap_in(run_id, tmp, target)
                else:
                    self._rename_in(run_id, tmp, target)
                fsync_dir(self.runs_dir)
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

    def _rename_in(self, run_id: str, tmp: Path, target: Path) -> None:
        try:
            os.rename(tmp, target)  # atomic; fails if another writer's run is already there
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if self.load_run(run_id) is None:  # theirs was damaged and has been moved aside
                os.rename(tmp, target)
            else:  # another process finished it first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)

    def _swap_in(self, run_id: str, tmp: Path, target: Path) -> None:
        """Replace ``target`` by the complete ``tmp``: old aside, new in, old removed (under the run's lock)."""
        aside = Path(tempfile.mkdtemp(prefix=f"{REPLACED_PREFIX}{run_id}-", dir=self.runs_dir))
        with _STATE_LOCK:
            _LIVE_TMP.add(str(aside))  # no clean-up of this process may put it back meanwhile
        try:
            os.rename(target, aside / "run")
            checkpoint("replace")
            os.rename(tmp, target)
            fsync_dir(self.runs_dir)
        finally:
            with _STATE_LOCK:
                _LIVE_TMP.discard(str(aside))
        shutil.rmtree(aside, ignore_errors=True)

    @contextlib.contextmanager
    def _unless_written(self, run_id: str) -> Iterator[bool]:
        """Yields True while holding ``run_id``'s lock when nobody else is writing that run (this process
        holding it counts as nobody else: it is the caller); False when a live writer holds it."""
        with _STATE_LOCK:
            ours = self._key(run_id) in _HELD
        if ours:
            yield True
            return
        try:
            (self.runs_dir / ".locks").mkdir(parents=True, exist_ok=True)
            fh = open(self.runs_dir / ".locks" / f"{run_id}.lock", "a+")  # noqa: SIM115
        except OSError:  # a read-only store: leave everything as it is
            yield False
            return
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is alive
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _clean_runs(self, now: float, max_age_s: float) -> int:
        removed = 0
        for entry in sorted(self.runs_dir.glob(".tmp-*")) + sorted(self.runs_dir.glob(f"{REPLACED_PREFIX}*")):
            try:
                if not entry.is_dir() or now - entry.stat().st_mtime < max_age_s:
                    continue
            except OSError:  # removed meanwhile
                continue
            with _STATE_LOCK:
                if str(entry) in _LIVE_TMP:
                    continue
            replaced = entry.name.startswith(REPLACED_PREFIX)
            run_id = entry.name[len(REPLACED_PREFIX if replaced else ".tmp-") :].rsplit("-", 1)[0]
            with self._unless_written(run_id) as free:
                if not free:
                    continue
                if replaced and not self.run_path(run_id).exists() and (entry / "run").is_dir():
                    with contextlib.suppress(OSError):  # a replacement cut short: the old run back
                        os.rename(entry / "run", self.run_path(run_id))
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def clean_stale(self, max_age_s: float = 0.0, temp_file_age_s: float = TEMP_FILE_MAX_AGE_S) -> int:
        """Remove what killed writers left behind; return how many folders and files were removed.

        * ``runs/.tmp-<run_id>-*`` folders older than ``max_age_s`` whose run lock nobody holds (a
          live writer holds it for as long as it writes; the kernel drops it when the writer dies);
          when this process holds that lock itself, every such folder but the ones it is writing.
        * ``runs/.replaced-<run_id>-*`` likewise; a replaced run whose successor never arrived is put back.
        * temporary cache files (``.<name>.*.npz`` / ``.tmp``) older than ``temp_file_age_s``.
        """
        now = time.time()
        removed = self._clean_runs(now, max_age_s) if self.runs_dir.is_dir() else 0
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

    def reset(self, keep: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """Delete every stored run but those in ``keep`` and those being written (their lock is held), and
        every feature and decoded-image cache file: the owner's reset of a shared app (studies stay: workers may
        be writing them; delete one from the search page). Returns the counts."""
        runs = caches = 0
        if self.runs_dir.is_dir():
            for entry in sorted(self.runs_dir.iterdir()):
                if entry.name.startswith(".") or not entry.is_dir() or entry.name in keep:
                    continue
                with self._unless_written(entry.name) as free:
                    if free:
                        shutil.rmtree(entry, ignore_errors=True)
                        runs += 1
        for folder in (self.features_dir, self.datasets_dir):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.is_file() and not entry.name.startswith("."):
                        with contextlib.suppress(OSError):
                            entry.unlink()
                            caches += 1
        return {"runs": runs, "caches": caches}
