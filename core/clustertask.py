"""What runs on a Dask worker: one training, its dataset found or unpacked, its run folder sent home.

:func:`train_task` is the function ``core.cluster.ClusterExecutor`` submits. On the worker it

* finds the dataset by its content fingerprint (``core.data.fingerprint``): the client's path when the worker
  sees the same content there; else the copy a client shipped earlier, cached under the worker's own folder by
  fingerprint; else, when the client sent the dataset's zip with this call, that zip unpacked into that cache;
  else it answers ``{"need_dataset": True}`` and the client ships it. A copy at the client's path whose content
  differs is refused with one sentence (a worker never trains on other images under the same name);
* trains the run into a worker-local store (``SCENELAB_WORKER_ARTIFACTS``, default
  ``~/.cache/scenelab/worker``), reusing a run it already holds, with the same run id the client computed
  (else one sentence: its weights differ);
* sends progress events (the local worker's dicts) to the client through the scheduler's event topic
  :data:`PROGRESS_TOPIC`, and stops at the next batch once the client sets the distributed ``Event`` named
  after the job's key;
* returns the run folder's files as bytes, which the client installs into its own store atomically.

Nothing here is written outside the worker's folder; a worker killed midway leaves a temporary run folder that
the next training of that run (on any worker sharing the folder) removes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.errors import DatasetError, SceneLabError

logger = logging.getLogger(__name__)

PROGRESS_TOPIC = "scenelab-progress"
WORKER_ARTIFACTS_ENV = "SCENELAB_WORKER_ARTIFACTS"
SHIPPED = "shipped-datasets"
PROGRESS_EVERY_S = 0.5  # batch and feature events at most twice a second; the others always
STOP_EVERY_S = 0.5  # how often the stop event is asked (a round trip to the scheduler)


class DatasetMismatch(DatasetError):
    """The worker's copy of a dataset at the client's path holds other images."""


def worker_artifacts() -> Path:
    """The worker's own artifacts folder: ``SCENELAB_WORKER_ARTIFACTS``, else ``~/.cache/scenelab/worker``."""
    explicit = os.environ.get(WORKER_ARTIFACTS_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scenelab" / "worker"


def dataset_zip(root: str | os.PathLike[str]) -> bytes:
    """Every visible file of a dataset folder as an uncompressed zip (images are compressed already)."""
    root = Path(root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    path = Path(dirpath) / name
                    zf.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def _unpack(data: bytes, fingerprint: str, cache: Path) -> Path:
    """The shipped zip unpacked into ``cache/<fingerprint>`` (via a temporary folder, renamed when whole)."""
    from core.data.scan import scan_dataset

    target = cache / fingerprint
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{fingerprint}-", dir=cache))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                parts = Path(name).parts
                if Path(name).is_absolute() or ".." in parts:
                    raise DatasetError(f"The shipped dataset holds the unsafe path {name!r}; nothing was unpacked.")
            zf.extractall(tmp)
        got = scan_dataset(tmp).fingerprint
        if got != fingerprint:
            raise DatasetMismatch(
                f"The dataset shipped to this worker unpacked with fingerprint {got}, not {fingerprint}; "
                "the client's folder changed while it was sent: train again."
            )
        try:
            os.rename(tmp, target)
        except OSError:  # another task on a worker sharing this folder unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def locate_dataset(data_root: str, fingerprint: str, shipped: bytes | None, cache: Path) -> Path | None:
    """Where this worker reads the dataset of ``fingerprint`` (None: it must be shipped); see the module."""
    from core.data.scan import scan_dataset
    from core.data.security import check_inside

    here = Path(data_root)
    if here.is_dir() and check_inside(here):  # a path outside this worker's SCENELAB_DATA_ROOTS: not seen here
        info = scan_dataset(here)
        if info.fingerprint != fingerprint:
            raise DatasetMismatch(
                f"This worker's copy of {data_root} holds other images (fingerprint {info.fingerprint}, the "
                f"client's is {fingerprint}); make the copies the same, or remove the worker's so the client "
                "ships its own."
            )
        return here
    cached = cache / fingerprint
    if cached.is_dir():
        return cached
    if shipped is None:
        return None
    return _unpack(shipped, fingerprint, cache)


def _plain(value: Any) -> Any:
    """An event as msgpack can carry it (numpy scalars become floats)."""
    return json.loads(json.dumps(value, default=float))


class _Link:
    """The worker's side of a job: progress events out, the stop event in (both throttled)."""

    def __init__(self, key: str) -> None:
        from distributed import Event, get_worker

        self.worker = get_worker()
        self.key = key
        self.stop_event = Event(f"scenelab-stop-{key}")
        self.last_sent = 0.0
        self.last_asked = 0.0
        self.stopped = False

    def send(self, event: dict[str, Any]) -> None:
        if self.should_stop():  # also stops feature extraction, which has no stop check of its own
            from core.training.train import TrainingCancelled

            raise TrainingCancelled("Training was cancelled; nothing was saved.")
        now = time.monotonic()
        kind = event.get("event")
        last = kind != "batch" and event.get("done") == event.get("total")  # a pass's end always goes
        if kind in ("batch", "features", "prefix") and now - self.last_sent < PROGRESS_EVERY_S and not last:
            return
        self.last_sent = now
        msg = {"job": self.key, "worker": self.worker.address, **_plain(event)}
        self.worker.log_event(PROGRESS_TOPIC, msg)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self.stopped and now - self.last_asked >= STOP_EVERY_S:
            self.last_asked = now
            try:
                self.stopped = bool(self.stop_event.is_set())
            except Exception:  # noqa: BLE001 - the scheduler is gone: the client no longer waits either
                self.stopped = True
        return self.stopped


def _run_files(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()}


def train_task(request: dict[str, Any], shipped: bytes | None = None) -> dict[str, Any]:
    """One run trained on this worker; see the module docstring. ``request`` holds ``cfg`` (a dict),
    ``data_root``, ``fingerprint``, ``run_id``, ``key``, ``force`` and ``meta``."""
    from core.store.folders import Store
    from core.training.identity import prepare
    from core.training.train import train

    link = _Link(request["key"])
    link.send({"event": "status", "message": "finding the dataset", "attempt": True})
    root_dir = worker_artifacts()
    root = locate_dataset(request["data_root"], request["fingerprint"], shipped, root_dir / SHIPPED)
    if root is None:
        return {"need_dataset": True, "worker": link.worker.address}
    cfg = RunConfig.from_dict(request["cfg"])
    prep = prepare(cfg, root)
    if prep.run_id != request["run_id"]:
        raise SceneLabError(
            f"Worker {link.worker.address} names this run {prep.run_id}, the client {request['run_id']}: its "
            "weights or SceneLab differ; install the same SceneLab version and weights on every worker."
        )
    result = train(cfg, root, Store(root_dir), progress=link.send, should_stop=link.should_stop,
                   force=bool(request.get("force")), meta=request.get("meta") or None)  # fmt: skip
    return {
        "run_id": result.run_id,
        "files": _run_files(result.record.path),
        "worker": link.worker.address,
        "worker_root": str(prep.info.root),
        "shipped": root != Path(request["data_root"]),
        "cached_on_worker": result.cached,
    }
