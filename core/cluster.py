"""Training on a Dask cluster: the second implementation of the executor seam (``core.worker``).

``SCENELAB_CLUSTER=tcp://HOST:PORT`` (or ``--cluster`` on ``train`` and ``reproduce``) sends every training job
to the Dask scheduler at that address; unset (or ``local``), jobs train on this machine as before
(:func:`executor_for`). A :class:`ClusterExecutor` keeps the local worker's bookkeeping (jobs by run id, a run in
flight shared, a stored run answered at once, cancel, queue position) and differs in how a job runs:

* it is submitted as ``core.clustertask.train_task`` under the key ``scenelab-train-<run id>``, so two clients
  (two apps, the app and the CLI) asking for the same run share one Dask future and one training;
* the worker finds the dataset by its fingerprint, or says it needs it: then the dataset's zip is scattered once
  per fingerprint (key ``scenelab-dataset-<fingerprint>``) and the task submitted again with it;
* progress events come back through the scheduler's event topic and land on the job (which worker, progress,
  history), as the local worker's do;
* the result is the run folder's files, installed into this store under the run's lock through a temporary
  folder renamed whole (:func:`install_run`); a run already stored is kept, so a task retried after its worker
  died (Dask reschedules it) still lands once;
* cancel sets the distributed ``Event`` the training polls, then cancels the future.

A scheduler that cannot be reached fails the job with one sentence; nothing falls back to this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from core.clustertask import PROGRESS_TOPIC, dataset_zip, train_task
from core.errors import ConfigError, SceneLabError, StoreError, first_line
from core.store.atomic import atomic_write_json
from core.store.folders import RunRecord, Store
from core.training.identity import prepare
from core.training.train import TrainingCancelled, TrainResult
from core.worker import Job, Worker, apply_progress, error_sentence, log_failure

logger = logging.getLogger(__name__)

CLUSTER_ENV = "SCENELAB_CLUSTER"
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.25
INFO_TTL_S = 5.0


def cluster_address(explicit: str | None = None) -> str | None:
    """The scheduler's address from ``explicit`` (``--cluster``) or ``SCENELAB_CLUSTER``; None: train here."""
    value = (explicit if explicit is not None else os.environ.get(CLUSTER_ENV, "")).strip()
    if not value or value == "local":
        return None
    if "://" not in value:
        if ":" not in value:
            raise ConfigError(
                f"The cluster address {value!r} has no port; give the Dask scheduler's address as tcp://HOST:PORT "
                "(dask scheduler prints it), or 'local' to train on this machine."
            )
        value = f"tcp://{value}"
    return value


def executor_for(store: Store, cluster: str | None = None) -> Worker:
    """The executor training jobs go through: a :class:`ClusterExecutor` when a cluster is named, else the
    local :class:`~core.worker.Worker` (the default, unchanged)."""
    address = cluster_address(cluster)
    return Worker(store) if address is None else ClusterExecutor(store, address)


def train_all(executor: Worker, configs: list[Any], data_root: str, *, progress: Any = None,
              should_stop: Any = None) -> int:  # fmt: skip
    """Submit every config at once (a cluster trains them side by side), wait for all; the number trained.
    The first failure is raised as its sentence once every job has ended (finished runs are kept)."""
    jobs = [executor.submit(cfg, data_root) for cfg in configs]
    while True:
        views = [j.view() for j in jobs]
        active = [v for v in views if v.active]
        if progress is not None:
            progress({"event": "runs", "done": sum(v.status == "done" for v in views), "total": len(views),
                      "where": sorted({v.where for v in active if v.status == "running" and v.where})})  # fmt: skip
        if not active:
            break
        if should_stop is not None and should_stop():
            for v in active:
                executor.cancel(v.id)
        time.sleep(POLL_S)
    failed = [v for v in views if v.status == "failed"]
    if failed:
        raise SceneLabError(f"{len(failed)} of {len(views)} run(s) failed; the first: {failed[0].error}")
    return sum(1 for v in views if v.status == "done" and not v.cached)


def install_run(store: Store, payload: dict[str, Any], data_root: Path, *, replace: bool = False,
                where: str = "") -> RunRecord:  # fmt: skip
    """A run folder sent home by a worker, installed whole into ``store`` (see the module docstring); the
    dataset's root in its config becomes this machine's (the worker may have trained on a shipped copy)."""
    run_id = str(payload["run_id"])
    files: dict[str, bytes] = payload["files"]
    for name in files:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise StoreError(f"A cluster worker sent the run file {name!r}; run {run_id} was not saved.")
    with store.lock(run_id):
        if not replace:
            record = store.load_run(run_id)
            if record is not None:
                return record
        tmp = store.begin_run(run_id)
        try:
            for name, data in files.items():
                if name == "config.json":
                    config = json.loads(data)
                    config["dataset"].update(root=str(data_root), name=data_root.name)
                    config["trained_on"] = where
                    atomic_write_json(tmp / name, config)
                else:
                    (tmp / name).write_bytes(data)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return store.commit_run(run_id, tmp, replace=replace)


def _unreachable(address: str, exc: BaseException) -> SceneLabError:
    return SceneLabError(
        f"The Dask scheduler at {address} cannot be reached ({first_line(exc)}); start it (dask scheduler) and its "
        f"workers, or unset {CLUSTER_ENV} to train on this machine."
    )


def _lost(address: str, exc: BaseException) -> str:
    """One sentence for a run the cluster lost (scheduler gone, workers dying, the future cancelled by another)."""
    if type(exc).__name__ == "KilledWorker":
        return (f"The run was lost: every Dask worker that took it died ({first_line(exc)}); check the workers' "
                "memory and logs, then train again.")  # fmt: skip
    return (f"The Dask scheduler at {address} stopped answering while the run trained ({type(exc).__name__}); "
            f"nothing was saved: start the scheduler again and train, or unset {CLUSTER_ENV}.")  # fmt: skip


class ClusterExecutor(Worker):
    """Training jobs on the Dask scheduler at ``address`` (see the module docstring)."""

    local_where = ""  # a worker's address once one starts the run

    def __init__(self, store: Store, address: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        super().__init__(store)
        self.address = address
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._keys = threading.Lock()  # _by_key, _generation, _shipped
        self._by_key: dict[str, Job] = {}
        self._generation: dict[str, int] = {}
        self._shipped: dict[str, Any] = {}
        self._info: tuple[float, str] = (-INFO_TTL_S, "")
        self._refresh = threading.Lock()
        self._answered = threading.Event()

    # -- the connection ----------------------------------------------------------------------------
    def client(self) -> Any:
        """The connected ``distributed.Client`` (made on first use, made again after the scheduler was lost)."""
        with self._client_lock:
            if self._client is not None and self._client.status == "running":
                return self._client
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close(timeout=2)
            from distributed import Client

            try:
                client = Client(self.address, timeout=self.connect_timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                self._client = None
                raise _unreachable(self.address, exc) from exc
            client.subscribe_topic(PROGRESS_TOPIC, self._on_event)
            self._client = client
            return client

    def describe(self) -> str:
        """Where runs train: the cluster and its workers, or why it cannot be reached (one sentence). Never
        waits: the scheduler is asked in the background at most every few seconds (a page calls this per rerun)."""
        stamp, text = self._info
        if time.monotonic() - stamp >= INFO_TTL_S and self._refresh.acquire(blocking=False):
            threading.Thread(target=self._ask_scheduler, name="scenelab-cluster-info", daemon=True).start()
        if not text:  # the first answer is worth a short wait (a page drawn once would keep "Connecting")
            self._answered.wait(self.connect_timeout + 1.0)
            text = self._info[1]
        return text or f"Connecting to the Dask cluster at {self.address}."

    def _ask_scheduler(self) -> None:
        try:
            workers = self.client().scheduler_info(n_workers=-1).get("workers", {})
            threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
            text = (f"Runs train on the Dask cluster at {self.address}: {len(workers)} worker(s), {threads} "
                    "thread(s).")  # fmt: skip
        except SceneLabError as exc:
            text = str(exc)
        except Exception as exc:  # noqa: BLE001 - a scheduler lost meanwhile: one sentence
            text = str(_unreachable(self.address, exc))
        finally:
            self._refresh.release()
        self._info = (time.monotonic(), text)
        self._answered.set()

    def problem(self) -> str | None:
        """The sentence saying the scheduler cannot be reached, or None."""
        text = self.describe()
        return None if text.startswith(("Runs train on the Dask cluster", "Connecting to")) else text

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close(timeout=5)
                self._client = None

    # -- a job ---------------------------------------------------------------------------------------
    def _enqueue(self, job: Job) -> None:
        threading.Thread(target=self._drive, args=(job,), name=f"scenelab-cluster-{job.id}", daemon=True).start()

    def _key(self, job: Job) -> str:
        if job.force:  # a retrain is never shared with a plain request for the stored run
            return f"scenelab-train-{job.id}-force-{uuid.uuid4().hex[:8]}"
        generation = self._generation.get(job.id, 0)
        return f"scenelab-train-{job.id}" + (f"-r{generation}" if generation else "")

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        """A progress event from a worker (on the client's event loop): onto its job, if it is ours."""
        msg = dict(event[1])
        job = self._by_key.get(str(msg.pop("job", "")))
        if job is None or not job.active:
            return
        worker = str(msg.pop("worker", ""))
        if msg.pop("attempt", False):  # a (re)start on some worker: its history starts again
            job.update(status="running", where=worker, history=[], started=job.started or time.time())
        apply_progress(job, msg)

    def _drive(self, job: Job) -> None:
        """Run ``job`` on the cluster and install its run (a thread per job; the waiting is Dask's)."""
        key = self._key(job)
        try:
            prep = prepare(job.cfg, job.data_root)
            request = {"cfg": job.cfg.to_dict(), "data_root": str(prep.info.root), "fingerprint": prep.info.fingerprint,
                       "run_id": job.id, "key": key, "force": job.force, "meta": job.meta}  # fmt: skip
            with self._keys:
                self._by_key[key] = job
            payload = self._train_remote(job, request, prep)
            record = install_run(self.store, payload, prep.info.root, replace=job.force, where=payload["worker"])
        except TrainingCancelled:
            job.update(status="cancelled", message="cancelled; nothing was saved", finished=time.time())
        except SceneLabError as exc:
            log_failure(f"Run {job.id} failed on the cluster", exc)
            job.update(status="failed", error=str(exc), message="failed", finished=time.time())
        except Exception as exc:  # noqa: BLE001 - one sentence for the page, the traceback for the log
            log_failure(f"Run {job.id} failed on the cluster", exc)
            job.update(status="failed", error=error_sentence(exc), message="failed", finished=time.time())
        else:
            job.update(status="done", result=TrainResult(record, cached=False, data_root=job.data_root),
                        history=list(record.history), message="trained", where=payload["worker"],
                        finished=time.time())  # fmt: skip
        finally:
            with self._keys:
                self._by_key.pop(key, None)
            self.prune()

    def _train_remote(self, job: Job, request: dict[str, Any], prep: Any) -> dict[str, Any]:
        client = self.client()
        key = request["key"]
        out = self._await(job, client.submit(train_task, request, key=key, retries=0), key)
        if out.get("need_dataset"):
            logger.info("Worker %s lacks dataset %s; shipping it.", out.get("worker"), prep.info.fingerprint)
            job.update(message=f"sending the dataset to {out.get('worker')}")
            shipped = self._dataset(client, prep.info.root, prep.info.fingerprint)
            out = self._await(job, client.submit(train_task, request, shipped, key=f"{key}-shipped"), key)
        return out

    def _dataset(self, client: Any, root: Path, fingerprint: str) -> Any:
        """The dataset's zip on the cluster, scattered once per fingerprint (kept while this executor lives)."""
        with self._keys:
            held = self._shipped.get(fingerprint)
        if held is not None and held.status == "finished":
            return held
        futures = client.scatter({f"scenelab-dataset-{fingerprint}": dataset_zip(root)}, hash=False)
        held = next(iter(futures.values()))
        with self._keys:
            self._shipped[fingerprint] = held
        return held

    def _await(self, job: Job, future: Any, key: str) -> dict[str, Any]:
        """The future's result; cancels it (and stops its training) when the job is cancelled. It polls the
        future's state (``Future.result(timeout=...)`` in a loop raced in distributed 2026.8 and lost results)."""
        from distributed import Event

        while not future.done():
            if job.cancel_requested:
                with contextlib.suppress(Exception):
                    Event(f"scenelab-stop-{key}", client=future.client).set()
                future.cancel()
                with self._keys:
                    self._generation[job.id] = self._generation.get(job.id, 0) + 1
                raise TrainingCancelled("Training was cancelled; nothing was saved.")
            if future.client.status in ("closing", "closed", "failed"):
                raise SceneLabError(_lost(self.address, ConnectionError(future.client.status)))
            time.sleep(POLL_S)
        try:
            return future.result()
        except (TrainingCancelled, SceneLabError):
            raise
        except Exception as exc:
            if job.cancel_requested:
                raise TrainingCancelled("Training was cancelled; nothing was saved.") from exc
            if type(exc).__module__.startswith(("distributed", "concurrent", "asyncio", "tornado")):
                raise SceneLabError(_lost(self.address, exc)) from exc
            raise
