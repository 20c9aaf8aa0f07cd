"""What every session shares in one app process: the store, the training worker, cached reads.

Streamlit's ``st.cache_resource`` holds the store and the one background worker per artifacts folder;
``st.cache_data`` holds the dataset scan (a minute), the list of stored runs (until the runs folder
changes) and thumbnails.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import streamlit as st

from core.cluster import CLUSTER_ENV, executor_for
from core.config import RunConfig
from core.data.arrays import DatasetInfo, decode_image, scan_dataset
from core.errors import SceneLabError
from core.runtime import when_imported
from core.store.folders import RunRecord, Store
from core.tasks import Task, TaskFn
from core.training.identity import prepare
from core.training.runs import runs_like as _runs_like
from core.worker import Worker, isolate_keras_sessions
from ui.settings import settings

# Every thread of the app may build models (the worker, the speed task, page 6, the dataset map), and clearing Keras'
# session is global unless made thread-local: do that the moment Keras is first imported, by whichever thread,
# without importing it for pages that never build a model
when_imported("keras", isolate_keras_sessions)


@st.cache_resource(max_entries=4, show_spinner=False)
def _store(artifacts: str) -> Store:
    store = Store(artifacts)
    with contextlib.suppress(OSError):
        store.clean_stale(max_age_s=600.0)  # run folders left half-written by killed processes
    return store


@st.cache_resource(show_spinner=False)
def _worker(artifacts: str, cluster: str = "") -> Worker:
    return executor_for(_store(artifacts), cluster)


def get_store() -> Store:
    return _store(settings()["artifacts"])


def get_worker() -> Worker:
    """The app's one training executor (shared by every session; keyed by the artifacts folder and the cluster):
    this machine's worker thread, or the Dask cluster ``SCENELAB_CLUSTER`` names (``core.cluster``)."""
    cluster = os.environ.get(CLUSTER_ENV, "").strip()
    artifacts = settings()["artifacts"]
    return _worker(artifacts, cluster) if cluster else _worker(artifacts)  # unset: the same resource as always


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _scan(data_root: str) -> DatasetInfo:
    return scan_dataset(data_root)


def dataset_report(data_root: str | os.PathLike[str], *, show_error: bool = True) -> DatasetInfo | None:
    """The dataset's classes and files (cached a minute), or None after one sentence saying why not."""
    try:
        return _scan(str(data_root).strip())
    except SceneLabError as exc:
        if show_error:
            st.error(str(exc))
        return None


def lookup(cfg: RunConfig, data_root: str) -> tuple[str | None, RunRecord | None]:
    """(run id, stored run or None) for ``cfg``; (None, None) after one sentence when it cannot be resolved.

    The dataset's scan is the cached one (a minute, as :func:`dataset_report`'s): pages look up to ten configs
    per rerun (page 3's grid), and each fresh scan of mit_split_64 cost 25-960 ms on 2 busy cores, which made
    page 3's preview take seconds after every slider move (issue 22)."""
    try:
        prep = prepare(cfg, data_root, _scan(str(data_root).strip()))
    except SceneLabError as exc:
        st.error(str(exc))
        return None, None
    record = prep.stored(get_store())
    return (record.run_id if record is not None else prep.run_id), record


@st.cache_data(max_entries=4, show_spinner=False)
def _records(artifacts: str, stamp: tuple[int, int]) -> list[RunRecord]:
    return Store(artifacts).list_runs()


def all_runs() -> list[RunRecord]:
    """Every stored run (re-read when the runs folder changes)."""
    store = get_store()
    try:
        st_ = store.runs_dir.stat()
        stamp = (st_.st_mtime_ns, st_.st_nlink)
    except OSError:
        return []
    return _records(str(store.root), stamp)


def runs_like(info: DatasetInfo, cfg: RunConfig) -> list[RunRecord]:
    """Stored runs on this dataset with ``cfg``'s backbone, weights and image size."""
    return _runs_like(all_runs(), {info.fingerprint, info.legacy_fingerprint}, cfg)


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, size: int = 128) -> np.ndarray | None:
    """An image file as an RGB array for display (None if it cannot be read any more)."""
    try:
        return decode_image(path, size)
    except SceneLabError:
        return None


@st.cache_resource(show_spinner=False)
def _tasks() -> dict[str, Task]:
    return {}


def get_task(name: str) -> Task | None:
    """The app's background task ``name`` (shared by every session), if one was started."""
    return _tasks().get(name)


def start_task(name: str, fn: TaskFn) -> Task:
    """Start ``fn`` as the task ``name`` unless one of that name is running; the running or new task."""
    tasks = _tasks()
    current = tasks.get(name)
    if current is not None and current.active:
        return current
    tasks[name] = Task(name, fn).start()
    return tasks[name]
