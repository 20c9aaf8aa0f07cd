"""Workers on one study: counts, the surplus rule, dead workers' trials failed and their configurations run
again (on this machine through the pid, elsewhere through Optuna's heartbeat), several real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core import compat
from core.errors import ConfigError
from core.search import storage as storage_mod
from core.search import summaries as summaries_mod
from core.search import workers as workers_mod
from tests.test_tuning import REPO, env, last_json, tune_cmd

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- workers, counts, dead trials (fake objectives: no TensorFlow) ------------------------------------------
def quick(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    trial.report(x, 1)
    return x


def test_worker_completes_the_study_count_on_a_journal_storage(tmp_path: Path) -> None:
    storage = storage_mod.open_storage(storage_mod.resolve_storage_url(str(tmp_path / "s.log")))
    study = optuna.create_study(storage=storage, study_name="j", direction="maximize")
    assert workers_mod.run_worker(study, quick, 3)["complete"] == 3
    # run again with a higher target: tops up to it; a lower one runs nothing
    study = summaries_mod.load_study(storage, "j")
    assert workers_mod.run_worker(study, quick, 5)["complete"] == 2
    assert workers_mod.run_worker(study, quick, 4)["complete"] == 0
    assert len(study.trials) == 5 and summaries_mod.summary(study)["n_trials_complete"] == 5


def test_surplus_rule_and_waiting_for_running_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    running = study.ask()
    running.set_user_attr("worker", workers_mod.worker_identity())  # this (live) process
    third = study.ask()
    assert not workers_mod.is_surplus(study, running.number, 2)
    assert workers_mod.is_surplus(study, third.number, 2)  # 1 finished + 1 running already make 2
    study.tell(third, state=TrialState.FAIL)
    # 1 finished + 1 running by a live worker = 2: the worker waits and, at its timeout, has run nothing
    t0 = time.monotonic()
    assert workers_mod.run_worker(study, quick, 2, timeout=0.5, poll_s=0.1) == {"complete": 0, "pruned": 0, "failed": 0, "surplus": 0}
    assert time.monotonic() - t0 < 5
    # the running trial fails: its slot is free again and exactly one more trial runs
    study.tell(running, state=TrialState.FAIL)
    assert workers_mod.run_worker(study, quick, 2)["complete"] == 1
    assert summaries_mod.summary(study)["n_trials_complete"] == 2


def test_trials_of_a_dead_worker_are_failed(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.set_user_attr("worker", {**workers_mod.worker_identity(), "pid": dead.pid, "label": f"test:{dead.pid}"})
    mine = study.ask()
    mine.set_user_attr("worker", workers_mod.worker_identity())
    foreign = study.ask()
    foreign.set_user_attr("worker", {"host": "elsewhere/boot", "pid": 1, "label": "elsewhere:1"})
    assert workers_mod.fail_dead_trials(study) == [orphan.number]
    frozen = study.trials[orphan.number]
    assert frozen.state == TrialState.FAIL and "stopped before the trial finished" in frozen.user_attrs["fail_reason"]
    assert study.trials[mine.number].state == TrialState.RUNNING
    assert study.trials[foreign.number].state == TrialState.RUNNING  # other machines: the heartbeat's job


def test_a_dead_local_workers_trial_runs_again_once(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    x = orphan.suggest_float("x", 0, 1)
    orphan.set_user_attr("worker", {**workers_mod.worker_identity(), "pid": dead.pid, "label": f"test:{dead.pid}"})
    assert workers_mod.run_worker(study, quick, 2)["complete"] == 2
    trials = study.trials
    assert trials[orphan.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if storage_mod.retried_from(t) == orphan.number]
    assert retry.state == TrialState.COMPLETE and retry.params == {"x": x} and retry.value == x
    assert "worker" in retry.user_attrs and retry.user_attrs["worker"]["pid"] == os.getpid()  # not the dead one's
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2 and len(trials) == 3  # counted once
    reasons = summaries_mod.trials_frame(study).set_index("number")["reason"]
    assert "stopped before the trial finished" in reasons[orphan.number] and f"runs again as trial {retry.number}" in reasons[orphan.number]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_waiting_worker_fails_a_silent_trial_through_the_heartbeat(tmp_path: Path, monkeypatch) -> None:
    """Another machine's trial goes silent while this worker waits for it (the study is otherwise full): the
    heartbeat fails it after the grace period and this worker runs its configuration. (A study wraps its
    RDBStorage in Optuna's cache; an isinstance test once made waiting workers skip stale trials.)"""
    monkeypatch.setenv(storage_mod.HEARTBEAT_ENV, "1")
    monkeypatch.setenv(storage_mod.GRACE_ENV, "2")
    storage = storage_mod.open_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat=True)
    study = optuna.create_study(storage=storage, direction="maximize")
    silent = study.ask()
    x = silent.suggest_float("x", 0, 1)
    silent.set_user_attr("worker", {"host": "elsewhere/boot", "pid": 1, "label": "elsewhere:1"})
    compat.study_storage(study).record_heartbeat(compat.trial_id(silent))  # its last beat: then nothing
    mine = workers_mod.run_worker(study, quick, 1, poll_s=0.2, timeout=30)
    assert mine["complete"] == 1, "the silent trial was never failed"
    assert study.trials[silent.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if storage_mod.retried_from(t) == silent.number]
    assert retry.state == TrialState.COMPLETE and retry.params == {"x": x}


@pytest.mark.parametrize(
    ("interval", "grace", "words"),
    [("0", "5", "SCENELAB_HEARTBEAT_S must be a whole number of seconds, at least 1; received '0'"),
     ("1.5", "5", "received '1.5'"), ("5", "5", "must be longer than SCENELAB_HEARTBEAT_S (5 s)")],
)  # fmt: skip
def test_heartbeat_settings_from_the_environment(interval: str, grace: str, words: str, monkeypatch) -> None:
    monkeypatch.setenv(storage_mod.HEARTBEAT_ENV, "2")
    monkeypatch.setenv(storage_mod.GRACE_ENV, "6")
    assert storage_mod.heartbeat_settings() == (2, 6)
    monkeypatch.delenv(storage_mod.HEARTBEAT_ENV)
    monkeypatch.delenv(storage_mod.GRACE_ENV)
    assert storage_mod.heartbeat_settings() == (storage_mod.HEARTBEAT_INTERVAL_S, storage_mod.HEARTBEAT_GRACE_S)
    monkeypatch.setenv(storage_mod.HEARTBEAT_ENV, interval)
    monkeypatch.setenv(storage_mod.GRACE_ENV, grace)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
        storage_mod.heartbeat_settings()
    assert "\n" not in str(err.value)


# -- several processes ----------------------------------------------------------------------------------------
def test_two_workers_split_the_trials_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    n = 4
    procs = [
        subprocess.Popen(
            tune_cmd(tiny_dataset, "par", url, tmp_path / "art", "--trials", str(n), "--pruner", "none"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    reports = [last_json(out) for out, _ in outs]
    per_worker = [r["worker"]["complete"] + r["worker"]["pruned"] for r in reports]
    assert sum(per_worker) == n, reports
    assert all(k > 0 for k in per_worker), per_worker  # both took part
    study = summaries_mod.load_study(url, "par")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state == TrialState.FAIL)
    assert reports[0]["best_value"] == reports[1]["best_value"] == study.best_value


def test_killed_worker_resumes_and_its_trial_is_failed(tiny_dataset: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    n = 3
    cmd = tune_cmd(tiny_dataset, "kill", url, tmp_path / "art", "--trials", str(n), "--epochs", "20")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    storage = storage_mod.open_storage(url)
    victim = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                study = optuna.load_study(study_name="kill", storage=storage)
            except KeyError:
                time.sleep(0.3)
                continue
            trials = study.get_trials(deepcopy=False)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING and "config" in t.user_attrs  # training
                       and (t.user_attrs.get("worker") or {}).get("pid") == proc.pid]  # fmt: skip
            if done and running:
                victim = running[0].number
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None and victim is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert victim is not None, "the worker never had a running trial after a complete one"
    study = optuna.load_study(study_name="kill", storage=storage)
    assert study.trials[victim].state == TrialState.RUNNING  # as the killed process left it
    kept = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    report = last_json(again.stdout)
    assert report["n_trials_complete"] + report["n_trials_pruned"] == n
    study = optuna.load_study(study_name="kill", storage=storage)
    t = study.trials[victim]
    assert t.state == TrialState.FAIL and "stopped before the trial finished" in t.user_attrs["fail_reason"]
    assert kept <= {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert report["n_trials_failed"] >= 1
    # its configuration ran again (once) in the new worker
    (retry,) = [r for r in study.trials if r.system_attrs.get("retry_history") == [victim]]
    assert retry.params == t.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"]["pid"] != proc.pid
    assert "runs again as trial" in next(r["reason"] for r in report["trials"] if r["number"] == victim)
