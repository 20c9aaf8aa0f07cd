"""TensorFlow's process-wide settings: seeds and thread pools.

:func:`seed_all` exists because warm models (``core.models.warm``) must keep their traced graphs: setting
TensorFlow's global seed clears its kernel and function caches, which would cost a reused
DenseNet121 its optimised graph (about 10 s) although nothing random changes.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from core import compat

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``, except that TensorFlow's global seed is set only when it
    differs from the current one (see the module docstring)."""
    import keras

    compat.thread_keras_draws(seed)  # Keras' unseeded draws: this thread's own, as random.seed(seed) would give
    if compat.tf_global_seed() != seed:
        keras.utils.set_random_seed(seed)
        return
    compat.set_keras_seed_state(seed)
    compat.reset_tf_operation_seeds(seed)  # the same op seeds as after set_random_seed, whatever ran before
    random.seed(seed)
    np.random.seed(seed)


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> dict[str, int]:
    """Set TensorFlow's thread pools (must run before TensorFlow executes its first op).

    ``None`` leaves TensorFlow's default (every core for both pools). Returns what is in effect.
    Measured within ±10% of the defaults on 2 cores (BENCHMARKS.md), so nothing calls it by default.
    """
    import tensorflow as tf

    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError as exc:  # the runtime is already initialised: settings are fixed now
        logger.warning("Thread settings not applied (%s).", exc)
    return {
        "intra_op": int(tf.config.threading.get_intra_op_parallelism_threads()),
        "inter_op": int(tf.config.threading.get_inter_op_parallelism_threads()),
    }


class _ThenCall(importlib.abc.Loader):
    """A module's own loader, then ``callback`` once the module has run (other attributes: the real loader's)."""

    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self.loader, self.callback = loader, callback

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once; and the real finders answer the lookup below
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenCall(spec.loader, self.callback)
        return spec


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` right after the top-level module ``name`` is first imported in this process, whichever
    thread imports it (at once if it already is). The app makes Keras' ``clear_session`` thread-local this way
    before any model is built, without importing Keras for pages that never build one."""
    if name in sys.modules:
        callback()
        return
    if not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))
