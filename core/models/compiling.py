"""Functions traced once per key, in a background thread while callers run them eagerly.

Tracing a ``tf.function`` over a sub-model of DenseNet121 takes seconds; running the same Python body
eagerly takes about ten times a compiled call, still far quicker than tracing. :class:`Compiler` answers
a key's first calls eagerly while a daemon thread traces its function, then hands out the compiled one.
At interpreter exit no new compilation starts and the running one is waited for (bounded): the exit hook
is registered when the first thread starts, after TensorFlow's and Keras's own, so it runs before them
(atexit is last in, first out); a trace cut short by their clean-up was seen to fail.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

logger = logging.getLogger(__name__)

MAX_PENDING_COMPILES = 2  # background compilations queued at most (older requests are dropped)

_STOPPING = threading.Event()
_WORKERS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_EXIT_HOOK = threading.Lock()
_exit_hook_registered = False


def _stop_workers(timeout: float = 30.0) -> None:
    _STOPPING.set()
    deadline = time.monotonic() + timeout
    for thread in list(_WORKERS):
        thread.join(max(0.0, deadline - time.monotonic()))


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _EXIT_HOOK:
        if not _exit_hook_registered:
            atexit.register(_stop_workers)
            _exit_hook_registered = True


def _warmup_value(spec: Any) -> Any:
    """A value matching ``spec`` for the first (tracing) call: zeros, a batch of one where the batch is
    free (``None``), -1 for an int32 scalar (a class index: "the predicted class")."""
    import tensorflow as tf

    if spec.dtype == tf.int32 and spec.shape.rank == 0:
        return tf.constant(-1, tf.int32)
    return tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)


class Compiler:
    """``body(key)`` (a Python function over tensors) traced as a ``tf.function`` with ``signature(key)``.

    Keras layers are not safe to run from two threads at once (tracing one sub-model while another runs
    eagerly through the same layers was seen to fail), so every Python-level pass takes
    :attr:`keras_lock`; compiled functions run without it. Thread-safe.
    """

    def __init__(
        self, body: Callable[[Hashable], Callable[..., Any]], signature: Callable[[Hashable], list[Any]],
        *, background: bool = True,
    ) -> None:
        self._body, self._signature = body, signature
        self.background = background
        self._lock = threading.RLock()
        self.keras_lock = threading.RLock()
        self._compiled: dict[Hashable, Callable[..., Any]] = {}
        self._queue: list[Hashable] = []
        self._worker: threading.Thread | None = None

    def is_compiled(self, key: Hashable) -> bool:
        return key in self._compiled

    def compile(self, key: Hashable) -> Callable[..., Any]:
        """Trace ``key``'s tf.function and run it once (the slow part), then publish it."""
        import tensorflow as tf

        with self.keras_lock:  # one compilation at a time; a second asker waits and reuses it
            fn = self._compiled.get(key)
            if fn is not None:
                return fn
            t0 = time.perf_counter()
            # a partial has no __code__, so TensorFlow counts each key's function on its own and does
            # not warn of "excessive retracing" when several keys (same code) are compiled in turn
            spec = self._signature(key)
            fn = tf.function(functools.partial(self._body(key)), input_signature=spec, reduce_retracing=True,
                             autograph=False)
            fn(*[_warmup_value(a) for a in spec])
            with self._lock:
                self._compiled[key] = fn
            logger.debug("compiled %s in %.1f s", key, time.perf_counter() - t0)
            return fn

    def call(self, key: Hashable, *args: Any) -> Any:
        """``key``'s function on ``args``: compiled when it is, else eagerly while it compiles."""
        fn = self._compiled.get(key)
        if fn is not None:
            return fn(*args)
        if not self.background:
            return self.compile(key)(*args)
        with self.keras_lock:  # eager: slower than compiled, far faster than compiling
            fn = self._compiled.get(key)  # compiled while this call waited for the lock
            if fn is None:
                out = self._body(key)(*args)
        if fn is not None:
            return fn(*args)
        self.schedule(key)
        return out

    def schedule(self, key: Hashable) -> None:
        """Compile ``key`` in a background thread (the two most recent requests are kept)."""
        with self._lock:
            if key in self._compiled or key in self._queue:
                return
            self._queue.append(key)
            while len(self._queue) > MAX_PENDING_COMPILES:
                dropped = self._queue.pop(0)
                logger.debug("not compiling %s after all (newer requests came first)", dropped)
            if self._worker is None and not _STOPPING.is_set():
                _register_exit_hook()
                self._worker = threading.Thread(target=self._work, name="inspector-compile", daemon=True)
                _WORKERS.add(self._worker)
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue or _STOPPING.is_set():
                    self._queue.clear()
                    self._worker = None  # the thread ends, so it keeps no owner alive
                    return
                key = self._queue[0]
            try:
                self.compile(key)
            except Exception as exc:  # an eager call still answers; say why compiling failed
                logger.warning("Compiling %s failed (%s); it keeps running uncompiled.", key, exc)
            finally:
                with self._lock:
                    if key in self._queue:
                        self._queue.remove(key)

    def wait(self, timeout: float = 120.0) -> bool:
        """Wait until background compilation is done; True if nothing is left pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and self._worker is None:
                    return True
            time.sleep(0.05)
        return False
