"""One long job in a background thread (a download, a reproduction of the study), followed by any page.

A :class:`Task` runs ``fn(progress, should_stop)`` once in a daemon thread, so a Streamlit rerun or a
closed tab never kills it; pages read :meth:`Task.view` to draw its progress. ``progress`` takes a dict
(the latest one is kept); ``should_stop`` turns True after :meth:`Task.cancel`. A failure is kept as one
sentence. Pure Python: never imports streamlit.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import SceneLabError, first_line

logger = logging.getLogger(__name__)

TaskFn = Callable[[Callable[[dict[str, Any]], None], Callable[[], bool]], Any]


class TaskCancelled(SceneLabError):
    """The task was cancelled by its user."""


@dataclass(eq=False)
class Task:
    """A named background job: status ``running``, ``done``, ``failed`` or ``cancelled``."""

    name: str
    fn: TaskFn
    status: str = "running"
    progress: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        return self.status == "running"

    def start(self) -> Task:
        threading.Thread(target=self._run, name=f"scenelab-task-{self.name}", daemon=True).start()
        return self

    def cancel(self) -> None:
        self._stop.set()

    def view(self) -> Task:
        """A copy whose progress will not change under the reader."""
        with self._lock:
            return dataclasses.replace(self, progress=dict(self.progress))

    def _report(self, event: dict[str, Any]) -> None:
        if self._stop.is_set():
            raise TaskCancelled(f"{self.name} was cancelled.")
        with self._lock:
            self.progress = dict(event)

    def _run(self) -> None:
        try:
            result = self.fn(self._report, self._stop.is_set)
            status, error = "done", None
        except TaskCancelled:
            status, error, result = "cancelled", None, None
        except SceneLabError as exc:
            status, error, result = "failed", str(exc), None
        except Exception as exc:  # noqa: BLE001 - the thread reports every failure as one sentence
            logger.exception("Task %s failed", self.name)
            status, error, result = "failed", f"{self.name} failed ({type(exc).__name__}: {first_line(exc)}).", None
        with self._lock:
            self.status, self.error, self.result, self.finished = status, error, result, time.time()
