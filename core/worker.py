"""A background training worker: one daemon thread consuming a queue of runs.

The app holds one :class:`Worker` per process and every browser session submits to it, so a
Streamlit rerun (a slider moved, a tab closed) never kills a training, and two tabs asking for the
same run share one training. Pure Python: it never imports streamlit.

``submit(cfg, data_root)`` answers at once with a :class:`Job`:

* the run is already stored -> a job that is ``done`` with ``cached=True`` (nothing queued);
* the same run is queued or running -> that very job (unless it is being cancelled: then a new job,
  trained after the cancelled one has stopped);
* the settings or the dataset are unusable -> a job that is ``failed`` with a one-sentence error;
* otherwise a new ``queued`` job, trained in submission order.

Keras keeps its global state (layer-name counters, seeds, call contexts, scopes) per thread, but
``keras.backend.clear_session()`` replaces that state for *every* thread at once; and Streamlit calls
it after every script run. A rerun while the worker builds or traces a model then breaks the build
("The name "zero_padding2d" is used 2 times in the model") or silently resets its seed. A Worker
therefore makes ``clear_session`` clear only the calling thread's state (:func:`isolate_keras_sessions`), from
the moment its thread starts (the first run that must be trained; until then the app need not load Keras).

**The executor seam.** A :class:`Worker`'s public methods (``submit``, ``get``, ``jobs``, ``queue_position``,
``cancel``, ``wait``, ``describe``) are the one interface every training job of the app goes through (the train
panel, the Study page's reproduction, page 3's grid). :class:`Worker` trains on this machine, one run at a time;
``core.cluster.ClusterExecutor`` (a subclass: the same bookkeeping, another :meth:`Worker._enqueue`) trains on a
Dask cluster. ``core.cluster.executor_for`` picks one from ``SCENELAB_CLUSTER``; unset, it is this one.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from core import compat
from core.config import RunConfig, stable_hash
from core.errors import SceneLabError
from core.store.folders import Store
from core.training.identity import prepare
from core.training.train import TrainingCancelled, TrainResult, train

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
MAX_FINISHED = 50


def isolate_keras_sessions() -> None:
    """Make ``keras.backend.clear_session()`` reset only the calling thread's Keras state (idempotent)."""
    import keras

    current = compat.keras_global_state().clear_session
    if getattr(current, "scenelab_thread_local", False):
        return

    def clear_session(free_memory: bool = True) -> None:
        compat.clear_keras_thread_state()  # threading.local trackers: this thread's state only
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.compat.v1.reset_default_graph()  # the default-graph stack is per thread as well
        # a full collection per call is costly: Streamlit clears after every script run of every
        # session (twice a second per watcher); collect only on the worker's own thread
        if free_memory and threading.current_thread().name.startswith("scenelab-worker"):
            gc.collect()

    clear_session.__doc__ = (current.__doc__ or "") + "\n(SceneLab: clears the calling thread's state only.)"
    clear_session.scenelab_thread_local = True  # type: ignore[attr-defined]
    compat.replace_clear_session(clear_session)


def log_failure(what: str, exc: BaseException) -> None:
    """A SceneLab error is the user's to fix (its sentence, as a warning); any other is a bug, so its
    traceback goes to the log even though the page shows one sentence."""
    if isinstance(exc, SceneLabError):
        logger.warning("%s: %s", what, exc)
    else:
        logger.error("%s", what, exc_info=exc)


def error_sentence(exc: BaseException) -> str:
    """One sentence for the UI: a SceneLab error's own message, else the exception's type and first line."""
    if isinstance(exc, SceneLabError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"Training failed: {type(exc).__name__}: {first}".rstrip(": ")


def estimate_eta(event: dict[str, Any]) -> float | None:
    """Seconds left in the current phase, from the speed measured so far (None when unknown)."""
    kind = event.get("event")
    elapsed = event.get("elapsed")
    if elapsed is None:
        return None
    if kind in ("scan", "decode", "features", "prefix"):
        done, total = event.get("done", 0), event.get("total", 0)
        fraction = done / total if total else 0.0
    elif kind == "batch":
        epochs, batches = event.get("epochs", 0), event.get("batches", 0)
        if not epochs or not batches:
            return None
        fraction = ((event["epoch"] - 1) * batches + event["batch"]) / (epochs * batches)
    elif kind == "epoch":
        epochs = event.get("epochs", 0)
        fraction = event["epoch"] / epochs if epochs else 0.0
    else:
        return None
    if fraction <= 0.0:
        return None
    return max(0.0, float(elapsed) * (1.0 - fraction) / fraction)


def apply_progress(job: Job, event: dict[str, Any]) -> None:
    """A training's progress event on its job: the latest event (with its time left), a message, the history."""
    event = dict(event)
    event["eta_s"] = estimate_eta(event)
    with job._lock:
        job.progress = event
        kind = event.get("event")
        if kind == "status":
            job.message = str(event.get("message", ""))
        elif kind == "features":
            job.message = "computing backbone features"
        elif kind == "decode":
            job.message = "decoding images"
        elif kind == "scan":
            job.message = "reading the dataset's files"
        elif kind in ("batch", "epoch"):
            job.message = "training the head" if event.get("phase") == "head" else "fine-tuning the whole network"
        if kind == "epoch":
            job.history.append(dict(event["row"]))


@dataclass(eq=False)
class Job:
    """One run asked of the worker. Read it through :meth:`view` for a consistent copy."""

    id: str
    cfg: RunConfig
    data_root: str
    status: str = "queued"
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: TrainResult | None = None
    error: str | None = None
    cached: bool = False
    force: bool = False  # train again even if stored (replaces it once the new run is complete)
    meta: dict[str, Any] = field(default_factory=dict)  # stored with the run, not part of its id
    where: str = ""  # where it trains: "this machine", or a cluster worker's address once one took it
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def cancel_requested(self) -> bool:
        return self._stop.is_set()

    def view(self) -> Job:
        """A snapshot whose progress and history will not change under the reader."""
        with self._lock:
            return dataclasses.replace(self, progress=dict(self.progress), history=[dict(r) for r in self.history])

    def update(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)


class Worker:
    """A queue of training jobs consumed by one daemon thread (started on the first submission)."""

    def __init__(self, store: Store, *, max_finished: int = MAX_FINISHED) -> None:
        self.store = store
        self.max_finished = max_finished
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self._thread: threading.Thread | None = None

    # -- asking ------------------------------------------------------------------------------------
    def submit(
        self,
        cfg: RunConfig,
        data_root: str | os.PathLike[str],
        *,
        force: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> Job:
        """Queue ``cfg`` on ``data_root`` unless it is stored or in flight (see the module docstring);
        ``force`` queues it even when stored (Retrain)."""
        root = str(data_root)
        try:
            prep = prepare(cfg, root)
            run_id = prep.run_id
        except Exception as exc:  # noqa: BLE001 - becomes a failed job with one sentence; the traceback is logged
            log_failure(f"Run of {cfg.backbone} on {root} could not be prepared", exc)
            now = time.time()
            job = Job(
                id=f"invalid-{stable_hash({'cfg': cfg.to_dict(), 'root': root}, 10)}",
                cfg=cfg,
                data_root=root,
                status="failed",
                error=error_sentence(exc),
                started=now,
                finished=now,
            )
            with self._lock:
                self._jobs[job.id] = job
            self.prune()
            return job
        with self._lock:
            existing = self._jobs.get(run_id)
            if existing is not None and existing.active and not existing.cancel_requested:
                return existing  # the same run in flight: share it (one being cancelled is not shared)
            record = None if force else prep.stored(self.store)
            if record is not None:
                now = time.time()
                job = Job(
                    id=run_id,
                    cfg=cfg,
                    data_root=root,
                    status="done",
                    message="cached",
                    history=list(record.history),
                    started=now,
                    finished=now,
                    result=TrainResult(record, cached=True),
                    cached=True,
                )
                self._jobs[run_id] = job
                self._prune_locked()
                return job
            job = Job(id=run_id, cfg=cfg, data_root=root, force=force, meta=dict(meta or {}), where=self.local_where)
            self._jobs.pop(run_id, None)  # a failed or cancelled earlier attempt: replaced, kept last
            self._jobs[run_id] = job
            self._enqueue(job)
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Every remembered job, oldest submission first."""
        with self._lock:
            return list(self._jobs.values())

    def queue_position(self, job_id: str) -> int | None:
        """How many jobs run or wait before ``job_id`` (0 = it is running), None if not active."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.active]
        active.sort(key=lambda j: (j.status != "running", j.submitted))
        for i, job in enumerate(active):
            if job.id == job_id:
                return i
        return None

    def cancel(self, job_id: str) -> bool:
        """Stop a running job at its next batch, or drop a queued one; False if nothing to cancel."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return False
            job._stop.set()
            if job.status == "queued":
                job.update(status="cancelled", message="cancelled before it started", finished=time.time())
            return True

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until ``job_id`` finishes (for scripts and tests); the job, or None if unknown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or not job.active:
                return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    def describe(self) -> str:
        """Where this executor trains, in one sentence (the sidebar shows it)."""
        return "Runs train on this machine, one at a time."

    def problem(self) -> str | None:
        """Why runs cannot train now, in one sentence (None: they can)."""
        return None

    # -- the thread --------------------------------------------------------------------------------
    local_where = "this machine"  # a job's ``where`` from its submission on

    def _enqueue(self, job: Job) -> None:
        """Start ``job`` (the caller holds the lock): here, the queue of this machine's one thread."""
        self._queue.put(job)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="scenelab-worker", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        # before this thread builds its first model (not at construction: a page that only reads stored runs
        # never loads Keras, and this import runs off the page's thread)
        try:
            isolate_keras_sessions()
        except Exception:  # noqa: BLE001 - the jobs must still run; a rerun may then disturb a build (logged)
            logger.exception("Could not make keras.backend.clear_session thread-local")
        while True:
            job = self._queue.get()
            try:
                if job.status == "queued":
                    self._run(job)
            except Exception:  # noqa: BLE001 - the thread must outlive any one job
                logger.exception("Worker failed on job %s", job.id)
            finally:
                self.prune()

    def _run(self, job: Job) -> None:
        job.update(status="running", started=time.time(), message="starting")

        def on_progress(event: dict[str, Any]) -> None:
            if job.cancel_requested:  # also stops feature extraction, which has no stop check
                raise TrainingCancelled("Training was cancelled; nothing was saved.")
            apply_progress(job, event)

        try:
            result = train(
                job.cfg,
                job.data_root,
                self.store,
                progress=on_progress,
                should_stop=job._stop.is_set,
                force=job.force,
                meta=job.meta,
            )
        except TrainingCancelled:
            job.update(status="cancelled", message="cancelled; nothing was saved", finished=time.time())
            return
        except Exception as exc:  # noqa: BLE001 - one sentence for the page, the traceback for the log
            log_failure(f"Run {job.id} failed", exc)
            job.update(status="failed", error=error_sentence(exc), message="failed", finished=time.time())
            return
        job.update(
            status="done",
            result=result,
            cached=result.cached,
            history=list(result.record.history),
            message="cached" if result.cached else "trained",
            finished=time.time(),
        )

    def prune(self) -> None:
        """Forget the oldest finished jobs beyond ``max_finished``."""
        with self._lock:
            self._prune_locked()

    def _prune_locked(self) -> None:
        finished = [j for j in self._jobs.values() if not j.active]
        excess = len(finished) - self.max_finished
        if excess > 0:
            finished.sort(key=lambda j: j.finished or j.submitted)
            for job in finished[:excess]:
                self._jobs.pop(job.id, None)
