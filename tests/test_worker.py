"""The background worker on a tiny generated dataset with a tiny (truncated, random-weight) DenseNet121."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.config import RunConfig
from core.training import identity
from core.training import train as train_mod
from core.training.train import train
from core.worker import Worker, error_sentence, estimate_eta

REPO = Path(__file__).resolve().parent.parent

TINY = RunConfig(
    backbone="densenet121",
    weights="none",
    remove_blocks=3,
    image_size=32,
    epochs=2,
    batch_size=8,
    val_fraction=0.25,
)


def test_submit_trains_in_the_background_and_reports_progress(tiny_dataset, store):
    worker = Worker(store)
    job = worker.submit(TINY, tiny_dataset)
    assert job.status in ("queued", "running") and job.id == identity.prepare(TINY, tiny_dataset).run_id
    done = worker.wait(job.id, timeout=120)
    assert done is job and job.status == "done", job.error
    assert not job.cached and job.error is None
    m = job.result.record.metrics
    assert m["epochs_run"] == 2 and 0.0 <= m["test_accuracy"] <= 1.0
    assert [row["epoch"] for row in job.history] == [1.0, 2.0]
    assert job.progress["event"] in ("status", "epoch", "batch")
    assert job.started <= job.finished
    assert store.has_run(job.id)
    assert worker.get(job.id) is job and job in worker.jobs()


def test_same_run_twice_shares_one_training(tiny_dataset, store, monkeypatch):
    calls = []
    gate = threading.Event()
    real = train_mod.train

    def slow_train(*args, **kwargs):
        calls.append(1)
        gate.wait(30)  # hold the run "in flight" until both submissions are in
        return real(*args, **kwargs)

    monkeypatch.setattr("core.worker.train", slow_train)
    worker = Worker(store)
    cfg = TINY.replace(epochs=1)
    first = worker.submit(cfg, tiny_dataset)
    second = worker.submit(cfg, tiny_dataset)
    assert second is first
    assert worker.queue_position(first.id) == 0
    gate.set()
    assert worker.wait(first.id, timeout=120).status == "done", first.error
    assert len(calls) == 1


def test_stored_run_is_done_at_once_without_queueing(tiny_dataset, store, monkeypatch):
    stored = train(TINY, tiny_dataset, store)

    def boom(*a, **k):
        raise AssertionError("a stored run must not be queued")

    worker = Worker(store)
    monkeypatch.setattr(worker, "_ensure_thread", boom)
    job = worker.submit(TINY, tiny_dataset)
    assert job.status == "done" and job.cached and job.result.cached
    assert job.id == stored.run_id and len(job.history) == 2
    assert worker._queue.empty()


def test_cancel_stops_a_running_job_and_saves_nothing(tiny_dataset, store):
    worker = Worker(store)
    job = worker.submit(TINY.replace(epochs=200), tiny_dataset)
    waiting = worker.submit(TINY.replace(epochs=3, seed=7), tiny_dataset)
    for _ in range(600):  # up to 60 s for the first batches
        if job.progress.get("event") in ("batch", "epoch"):
            break
        threading.Event().wait(0.1)
    assert job.status == "running"
    assert worker.cancel(waiting.id) and waiting.status == "cancelled"  # queued: dropped
    assert worker.cancel(job.id)
    assert worker.wait(job.id, timeout=60).status == "cancelled"
    assert not store.has_run(job.id) and not store.has_run(waiting.id)
    assert not list(store.runs_dir.glob(".tmp-*"))
    assert not worker.cancel(job.id)  # nothing left to cancel


def test_bad_dataset_path_fails_with_one_sentence(tmp_path, store):
    worker = Worker(store)
    job = worker.submit(TINY, tmp_path / "nowhere")
    assert job.status == "failed" and not job.active
    assert "does not exist" in job.error and "Traceback" not in job.error
    assert job.error.count("\n") == 0
    assert worker.get(job.id) is job


def test_unexpected_error_is_one_line_and_its_traceback_is_logged(tiny_dataset, store, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("out of cheese\nline two")

    monkeypatch.setattr("core.worker.train", broken)
    worker = Worker(store)
    with caplog.at_level("ERROR", logger="core.worker"):
        job = worker.wait(worker.submit(TINY, tiny_dataset).id, timeout=30)
    assert job.status == "failed"
    assert job.error == "Training failed: RuntimeError: out of cheese"
    assert error_sentence(ValueError()) == "Training failed: ValueError"
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 1 and job.id in logged[0].getMessage()


def test_an_unexpected_error_preparing_a_run_is_logged(tiny_dataset, store, monkeypatch, caplog):
    def broken(*a, **k):
        raise KeyError("no such thing")

    monkeypatch.setattr("core.worker.prepare", broken)
    with caplog.at_level("ERROR", logger="core.worker"):
        job = Worker(store).submit(TINY, tiny_dataset)
    assert job.status == "failed" and job.error == "Training failed: KeyError: 'no such thing'"
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [KeyError]


def test_finished_jobs_are_bounded(tiny_dataset, store):
    worker = Worker(store, max_finished=3)
    for seed in range(5):
        worker.submit(TINY.replace(seed=seed), tiny_dataset / "missing")
    assert len(worker.jobs()) == 3


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"event": "batch", "epoch": 1, "epochs": 2, "batch": 5, "batches": 10, "elapsed": 5.0}, 15.0),
        ({"event": "epoch", "epoch": 1, "epochs": 4, "elapsed": 10.0}, 30.0),
        ({"event": "features", "done": 50, "total": 200, "elapsed": 2.0}, 6.0),
        ({"event": "status", "message": "building model"}, None),
    ],
)
def test_eta_from_measured_speed(event, expected):
    assert estimate_eta(event) == (pytest.approx(expected) if expected is not None else None)


def test_training_survives_clear_session_from_other_threads(tiny_dataset, store):
    """Streamlit calls keras.backend.clear_session() after every rerun, from its own threads."""
    import keras

    worker = Worker(store)  # makes clear_session per-thread
    stop = threading.Event()

    def rerun_forever():
        while not stop.is_set():
            keras.backend.clear_session(free_memory=False)
            stop.wait(0.005)

    noisy = threading.Thread(target=rerun_forever, daemon=True)
    noisy.start()
    try:
        job = worker.wait(worker.submit(TINY.replace(dense_1024=True, seed=5), tiny_dataset).id, timeout=120)
    finally:
        stop.set()
        noisy.join()
    assert job.status == "done", job.error
    keras.layers.Dense(1, name=None)
    before = keras.layers.Dense(1).name
    other = threading.Thread(target=keras.backend.clear_session)
    other.start()
    other.join()
    assert keras.layers.Dense(1).name != before  # this thread's name counter was not reset


def test_a_callback_runs_once_right_after_its_module_is_first_imported_by_any_thread() -> None:
    """``core.runtime.when_imported`` (how the app makes Keras' clear_session thread-local before any thread builds
    a model, without importing Keras itself), on a module no fresh process has imported yet."""
    code = """
import sys, threading
from core.runtime import when_imported
seen = []
assert "colorsys" not in sys.modules
when_imported("colorsys", lambda: seen.append(sys.modules["colorsys"].rgb_to_hsv(1, 0, 0)))
when_imported("colorsys", lambda: seen.append("twice"))  # registered once per module
assert seen == []
t = threading.Thread(target=lambda: __import__("colorsys")); t.start(); t.join()
import colorsys
when_imported("colorsys", lambda: seen.append("now"))  # already imported: at once
print(seen)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[(0.0, 1.0, 1), 'now']"
