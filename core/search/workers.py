"""Workers: processes that ask a study for trials until it holds the asked number, on any machine.

``n_trials`` is the number of finished (COMPLETE + PRUNED) trials the *study* should hold, not a
per-process count: a restarted worker completes the count, and several workers split it between them
exactly. Each worker checks the count before it asks for a trial and, right after asking, checks the
trial's rank among the live trials; a trial beyond the count (two workers asked at the same instant) is
closed as FAIL with ``surplus=True`` and never trained. Only the storage's own atomic trial numbering is
relied on. Trials left RUNNING by a dead worker are marked FAIL: at once when the worker ran on this
machine (its pid is gone), and through Optuna's heartbeat (RDB storages) for workers elsewhere; either
way its configuration is queued again (``core.search.storage.RetryStale``) and the next worker to ask
runs it, so a killed worker costs the time of its trial, not its configuration.

A machine is known by its host name and boot id; ``SCENELAB_HOST`` names it instead (containers that
share a kernel and a host name but not a process table, or a test standing in for other machines).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core import compat
from core.errors import ConfigError, SceneLabError
from core.search.storage import RetryStale

logger = logging.getLogger(__name__)
HOST_ENV = "SCENELAB_HOST"

def _proc_start(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]  # field 22: start time in clock ticks since boot


def host_name() -> str:
    """The name trials record for this machine: ``SCENELAB_HOST``, else the host name."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


def _host_id() -> str:
    if os.environ.get(HOST_ENV, "").strip():
        return host_name()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host (+ boot id), pid and the pid's start time (pids get reused)."""
    pid = os.getpid()
    return {"host": _host_id(), "pid": pid, "start": _proc_start(pid), "label": f"{host_name()}:{pid}"}


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, an exited child of ours not yet reaped, is reaped and
    counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _alive(worker: dict[str, Any]) -> bool:
    pid = int(worker.get("pid", -1))
    if not pid_alive(pid):
        return False
    start = worker.get("start")
    if start is not None and Path("/proc").is_dir():
        now = _proc_start(pid)
        return now == start
    return True


def _heartbeat_enabled(study: optuna.Study) -> bool:
    """The study's storage records heartbeats. A study wraps an RDBStorage in Optuna's cache, which is no
    RDBStorage but answers for it: an ``isinstance`` test here once made waiting workers skip stale trials,
    which were then failed only when some worker asked for a new trial (the kill test found it)."""
    interval = getattr(compat.study_storage(study), "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def _first_beat(study: optuna.Study, trial: optuna.trial.Trial) -> None:
    """Record the trial's first heartbeat now. Optuna's heartbeat thread records it concurrently with the
    objective's start, and a trial without any heartbeat is never failed: a worker killed in that instant
    would leave its trial RUNNING for ever (the kill test found it on a loaded machine)."""
    if _heartbeat_enabled(study):
        compat.study_storage(study).record_heartbeat(compat.trial_id(trial))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone, queue their configurations again; return their numbers.

    On this machine a worker is gone when its pid no longer runs (checked at once); for workers on
    other machines Optuna's heartbeat does it after its grace period (RDB storages only), and the
    storage's :class:`~core.search.storage.RetryStale` queues the configuration again.
    """
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if _heartbeat_enabled(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    me = _host_id()
    storage = compat.study_storage(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != me or _alive(worker):
            continue
        try:  # another worker may fail it first: then that one queues it again
            storage.set_trial_user_attr(
                compat.trial_id(t),
                "fail_reason",
                f"its worker ({worker.get('label')}) stopped before the trial finished (killed or crashed)",
            )
            failed = storage.set_trial_state_values(compat.trial_id(t), state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished or failed meanwhile: nothing to do
            continue
        if failed:
            logger.warning("Trial %d was left running by a dead worker (%s); marked FAIL and queued again.", t.number, worker.get("label"))
            RetryStale()(study, storage.get_trial(compat.trial_id(t)))
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - after)


class _Surplus(Exception):
    """The trial is beyond the study's target count: closed without training."""


class _QuietSurplus(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "_Surplus" not in record.getMessage()


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_IN_A_ROW = 5


class SearchStopped(SceneLabError):
    """A worker gave up because its trials kept failing."""


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """True when ``n_trials`` live (finished or running) trials were created before trial ``number``.

    Trial numbers are given out atomically by the storage, so of several trials asked for at the
    same instant only those within the count pass; the others are surplus.
    """
    ahead = [t for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < number]
    return len(ahead) >= n_trials


class _Tally:
    """Counts this worker's trials per state (an Optuna callback) and the reasons of failures in a row."""

    def __init__(self, mine: dict[str, int], on_trial: Callable[[FrozenTrial], None] | None) -> None:
        self.mine, self.on_trial = mine, on_trial
        self.in_a_row: list[str] = []

    def __call__(self, _: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.mine["complete" if trial.state == TrialState.COMPLETE else "pruned"] += 1
            self.in_a_row.clear()
        elif trial.user_attrs.get("surplus"):
            self.mine["surplus"] += 1
        else:
            self.mine["failed"] += 1
            self.in_a_row.append(str(trial.user_attrs.get("fail_reason") or "no reason recorded"))
        if self.on_trial is not None:
            self.on_trial(trial)


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.trial.Trial], float],
    n_trials: int,
    *,
    timeout: float | None = None,
    poll_s: float = 2.0,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    max_failures: int = MAX_FAILURES_IN_A_ROW,
) -> dict[str, int]:
    """Work on ``study`` until it holds ``n_trials`` finished (COMPLETE + PRUNED) trials.

    Other workers may share the study. Before asking for a trial this worker fails trials of dead
    workers and counts: it stops once ``n_trials`` are finished, and waits (polling) while the
    finished plus other workers' running trials already make the count, since a running one may
    still fail. Right after asking, a trial whose rank among live trials is ``n_trials`` or more was
    asked for concurrently with the last slot: it is closed as FAIL (``surplus``) without training.
    ``timeout`` stops asking for new trials after that many seconds; ``max_failures`` failed trials
    in a row raise :class:`SearchStopped` with the last reason. Returns this worker's trials per
    state (``complete``, ``pruned``, ``failed``, ``surplus``).
    """
    if n_trials < 1:
        raise ConfigError(f"The number of trials must be at least 1; received {n_trials}.")
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietSurplus) for f in optimize_log.filters):
        optimize_log.addFilter(_QuietSurplus())
    identity = worker_identity()
    mine = {"complete": 0, "pruned": 0, "failed": 0, "surplus": 0}
    t0 = time.monotonic()

    def guarded(trial: optuna.trial.Trial) -> float:
        _first_beat(study, trial)
        trial.set_user_attr("worker", identity)
        trial.set_user_attr("host", host_name())
        if is_surplus(study, trial.number, n_trials):
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", "not run: the study already had its trials when this worker asked")
            raise _Surplus(f"trial {trial.number} is beyond the study's {n_trials} trials")
        return objective(trial)

    record = _Tally(mine, on_trial)
    in_a_row = record.in_a_row
    waited = False
    while True:
        fail_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= n_trials:
            break
        if timeout is not None and time.monotonic() - t0 >= timeout:
            logger.info("Timeout reached: %d of %d trials finished; run again to go on.", finished, n_trials)
            break
        running = sum(t.state == TrialState.RUNNING for t in trials)
        queued = any(t.state == TrialState.WAITING for t in trials)
        if finished + running >= n_trials or (waited and not queued):
            # the last trials run elsewhere; one may still fail and need redoing. When a slot has just
            # been freed, the worker that failed the dead trial queues its configuration again right
            # after: one more poll lets that retry, not a new draw, take the slot
            waited = finished + running >= n_trials
            time.sleep(poll_s)
            continue
        try:
            study.optimize(guarded, n_trials=1, catch=(Exception,), callbacks=[record], gc_after_trial=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            # this worker was silent past the heartbeat's grace period (e.g. a suspended laptop) and
            # another one failed its trial meanwhile: the result is dropped, the count stays exact
            logger.warning("This worker's trial was marked failed by another worker meanwhile; its result is dropped.")
            mine["failed"] += 1
        if len(in_a_row) >= max_failures:
            raise SearchStopped(
                f"This worker stopped after {len(in_a_row)} trials in a row failed; the last one because: "
                f"{in_a_row[-1].rstrip('.')}."
            )
    return mine
