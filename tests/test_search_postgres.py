"""The search beyond one machine, on the real PostgreSQL server the ``pg_storage_url`` fixture gives (issue 13).

Each worker is a real ``python -m core tune`` process with its own artifacts folder and its own ``SCENELAB_HOST``,
standing in for machines A, B, C: none of them can see another's processes, so a dead worker is found only
through Optuna's heartbeat (1 s here, failed after 5 s of silence instead of 10 s / 60 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState

from core.cli import main as cli_main
from core.search import summaries
from tests.conftest import make_dataset
from tests.test_tuning import REPO, TINY_ARGS, last_json

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def worker(data: Path, url: str, study: str, machine: str, tmp: Path, *extra: str) -> subprocess.Popen:
    """``python -m core tune`` as machine ``machine``: its own artifacts folder and host name."""
    cmd = ["-m", "core", "tune", "--data", str(data), "--study", study, "--storage", url,
           "--artifacts", str(tmp / machine), *TINY_ARGS, "--repeats", "1", "--pruner", "none", *extra, "--json"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
           "SCENELAB_HOST": machine, "SCENELAB_HEARTBEAT_S": "1", "SCENELAB_HEARTBEAT_GRACE_S": "5"}  # fmt: skip
    return subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def trials(url: str, name: str) -> list[FrozenTrial]:
    try:
        return summaries.load_study(url, name).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet
        return []


def wait_for(what: str, check, procs: list[subprocess.Popen], timeout: float = 240):
    """Poll ``check()`` until it returns something truthy; fail with the workers' stderr when they die first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                pytest.fail(f"a worker died (exit {p.returncode}) before {what}: {p.communicate()[1][-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, url: str, name: str, timeout: float = 300) -> str:
    """The worker's stdout once it exits 0; on a timeout, fail with the study's trials and the worker's log."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        states = [(t.number, t.state.name, t.user_attrs.get("host"), t.system_attrs.get("retry_history")) for t in trials(url, name)]
        import sqlalchemy

        from tests import pg

        eng = sqlalchemy.create_engine(pg.check_ours(url), poolclass=sqlalchemy.pool.NullPool)
        with eng.connect() as conn:
            beats = conn.execute(sqlalchemy.text("SELECT now(), t.number, t.state, h.heartbeat FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id ORDER BY t.number")).all()
        eng.dispose()
        pytest.fail(f"the worker did not finish in {timeout:.0f} s; trials {states}; beats {beats}; its log: {err[-3000:]}")
    assert proc.returncode == 0, err[-2000:]
    return out


def running_of(url: str, name: str, pid: int) -> FrozenTrial | None:
    """The trial process ``pid`` is training (its parameters all drawn: its config is stored), or None."""
    return next((t for t in trials(url, name) if t.state == TrialState.RUNNING and "config" in t.user_attrs
                 and (t.user_attrs.get("worker") or {}).get("pid") == pid), None)  # fmt: skip


def assert_exact(url: str, name: str, n: int) -> list[FrozenTrial]:
    """``n`` finished trials, numbered without gap or twin, none left running or queued; every other trial
    is a surplus one (never trained) or a dead worker's one whose configuration ran again."""
    ts = trials(url, name)
    assert sorted(t.number for t in ts) == list(range(len(ts)))
    assert sum(t.state in FINISHED for t in ts) == n
    assert not [t.number for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = {t.system_attrs["retry_history"][-1] for t in ts if t.system_attrs.get("retry_history")}
    for t in ts:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("surplus") or t.number in retried, (t.number, t.user_attrs)
    runs = [t.user_attrs["run_id"] for t in ts if t.state == TrialState.COMPLETE]
    assert len(runs) == len(set(runs))  # no configuration trained twice
    return ts


@pytest.mark.slow
def test_three_workers_finish_exactly_the_asked_trials(tiny_dataset: Path, pg_storage_url: str, tmp_path: Path) -> None:
    n = 6
    procs = [worker(tiny_dataset, pg_storage_url, "three", m, tmp_path, "--trials", str(n)) for m in ("a", "b", "c")]
    reports = [last_json(finish(p, pg_storage_url, "three")) for p in procs]
    per_worker = [r["worker"]["complete"] + r["worker"]["pruned"] for r in reports]
    assert sum(per_worker) == n, reports
    assert sum(k > 0 for k in per_worker) >= 2, per_worker  # (the last to load TensorFlow may find the work done)
    ts = assert_exact(pg_storage_url, "three", n)
    assert sum(r["worker"]["surplus"] for r in reports) == sum(bool(t.user_attrs.get("surplus")) for t in ts)
    hosts = {t.user_attrs["host"] for t in ts if t.state == TrialState.COMPLETE}
    assert hosts <= {"a", "b", "c"} and len(hosts) >= 2
    for t in ts:
        if t.state == TrialState.COMPLETE:  # each trial's figures and full config are in the storage
            assert t.user_attrs["metrics"]["test_accuracy"] == t.user_attrs["test_accuracy"]
            assert t.user_attrs["config"]["lr"] == t.params["lr"]
            assert t.user_attrs["artifacts"] == str((tmp_path / t.user_attrs["host"]).resolve())


@pytest.mark.slow
def test_killed_workers_are_failed_by_heartbeat_retried_and_the_study_resumes(tiny_dataset: Path, pg_storage_url: str, tmp_path: Path, capsys) -> None:
    url, name, n = pg_storage_url, "kill", 5
    extra = ("--trials", str(n), "--epochs", "10")
    a, b = (worker(tiny_dataset, url, name, m, tmp_path, *extra) for m in ("machine-a", "machine-b"))
    try:
        # A is killed in the middle of a trial, once the study has a finished one
        victim = wait_for("A running a trial after a finished one", lambda: any(t.state in FINISHED for t in trials(url, name)) and running_of(url, name, a.pid), [a, b])
        a.send_signal(signal.SIGKILL)
        a.communicate()
        # B, on another machine, sees A's heartbeat go silent: the trial is failed and its configuration queued again
        retry = wait_for("the killed trial's retry", lambda: next((t for t in trials(url, name) if t.system_attrs.get("retry_history") == [victim.number]), None), [b])
        assert retry.params == victim.params
        assert trials(url, name)[victim.number].state == TrialState.FAIL
        # B is killed too, in the middle of a trial: every worker is dead
        second = wait_for("B running a trial", lambda: running_of(url, name, b.pid), [b])
        b.send_signal(signal.SIGKILL)
        b.communicate()
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert trials(url, name)[second.number].state == TrialState.RUNNING  # as the killed worker left it
    report = last_json(finish(worker(tiny_dataset, url, name, "machine-c", tmp_path, *extra), url, name))
    assert report["n_trials_complete"] + report["n_trials_pruned"] == n and report["n_trials_running"] == 0
    ts = assert_exact(url, name, n)
    for dead in (victim, second):
        assert ts[dead.number].state == TrialState.FAIL
        reruns = [t for t in ts if (t.system_attrs.get("retry_history") or [None])[-1] == dead.number]
        assert len(reruns) == 1 and reruns[0].params == dead.params
        done = [t for t in ts if t.state in FINISHED and t.params == dead.params]
        assert len(done) == 1, [(t.number, t.state.name, t.params, t.system_attrs) for t in ts]  # counted once
        assert (done[0].user_attrs["worker"])["pid"] not in (a.pid, dead.user_attrs["worker"]["pid"])

    # machine D, which trained nothing, reads every trial's figures from the storage alone
    assert cli_main(["tune", "--study", name, "--storage", url, "--artifacts", str(tmp_path / "machine-d"), "--json"]) == 0
    seen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen["best_run_here"] is False and seen["best_host"] in {"machine-a", "machine-b", "machine-c"}
    assert seen["best_artifacts"] == str((tmp_path / seen["best_host"]).resolve())
    rows = {r["number"]: r for r in seen["trials"]}
    assert sorted(rows) == [t.number for t in ts]
    for t in ts:
        if t.state == TrialState.COMPLETE:
            assert rows[t.number]["test_accuracy"] == t.user_attrs["test_accuracy"] and rows[t.number]["run_id"]
    assert "runs again as trial" in rows[victim.number]["reason"]
    assert seen["best_config"] == ts[seen["best_trial"]].user_attrs["config"]


def test_a_worker_with_another_dataset_is_refused(tiny_dataset: Path, pg_storage_url: str, tmp_path: Path, capsys) -> None:
    from core.cli import build_parser, tune_request
    from core.search.study import prepare_study

    args = ["tune", "--data", str(tiny_dataset), "--study", "fp", "--storage", pg_storage_url, "--artifacts", str(tmp_path), *TINY_ARGS]
    prepare_study(tune_request(build_parser().parse_args(args)))
    other = make_dataset(tmp_path / "other", n_train=9)  # the same layout, other images: another fingerprint
    assert cli_main(["tune", "--data", str(other), "--study", "fp", "--storage", pg_storage_url, "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not the one study 'fp' was created with" in err, err
    assert summaries.load_study(pg_storage_url, "fp").get_trials() == []
