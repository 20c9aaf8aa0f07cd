"""core.tasks.Task to its end: success, failure, cancellation (the Study page's reproduction and the 256 px
download ride on it; a task that never ends leaves the page on "Reproducing" for ever)."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import SceneLabError
from core.tasks import Task


def _wait(task: Task, timeout: float = 10.0) -> Task:
    deadline = time.monotonic() + timeout
    while task.active and time.monotonic() < deadline:
        time.sleep(0.01)
    return task.view()


def test_a_task_that_succeeds_ends_done_with_its_result() -> None:
    def fn(progress, should_stop):
        progress({"done": 1, "total": 2})
        progress({"done": 2, "total": 2})
        return {"trained": 2}

    v = _wait(Task("ok", fn).start())
    assert v.status == "done"
    assert v.active is False
    assert v.result == {"trained": 2}
    assert v.error is None
    assert v.progress == {"done": 2, "total": 2}
    assert v.finished is not None and v.finished >= v.started


def test_a_task_that_returns_nothing_still_ends() -> None:
    v = _wait(Task("none", lambda progress, should_stop: None).start())
    assert (v.status, v.result, v.error) == ("done", None, None)


def test_a_failing_task_keeps_one_sentence() -> None:
    def fn(progress, should_stop):
        raise SceneLabError("The archive is truncated: download it again.")

    v = _wait(Task("dl", fn).start())
    assert v.status == "failed"
    assert v.error == "The archive is truncated: download it again."


def test_an_unexpected_error_is_logged_and_named(caplog: pytest.LogCaptureFixture) -> None:
    def fn(progress, should_stop):
        raise KeyError("elapsed")

    with caplog.at_level("ERROR", logger="core.tasks"):
        v = _wait(Task("boom", fn).start())
    assert v.status == "failed"
    assert "KeyError" in v.error and "boom" in v.error
    assert any("Traceback" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_cancel_stops_at_the_next_progress_report() -> None:
    started = threading.Event()

    def fn(progress, should_stop):
        started.set()
        for i in range(1000):
            progress({"done": i})
            time.sleep(0.01)
        return "never"

    task = Task("long", fn).start()
    assert started.wait(5)
    task.cancel()
    v = _wait(task)
    assert v.status == "cancelled"
    assert v.result is None
