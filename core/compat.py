"""Every private API of Keras, TensorFlow and Optuna that SceneLab reaches into, in one place.

Each shim names what it needs and why; ``tests/test_compat.py`` checks every one against the pinned
versions, so an upgrade that moves one fails there, loudly, instead of somewhere deep in a run.
(Streamlit's private API is used by the UI only: ``ui/compat.py``, same rule.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# Keras modules that re-export ``clear_session`` (patched together by replace_clear_session).
CLEAR_SESSION_MODULES = (
    "keras.src.backend.common.global_state",
    "keras.backend",
    "keras.utils",
    "keras._tf_keras.keras.backend",
    "keras._tf_keras.keras.utils",
    "keras.src.backend",
)


# -- Keras' unseeded draws, per thread -----------------------------------------------------------------
# Keras seeds every initializer and SeedGenerator built without a seed (``seed=None``: Dense kernels, Dropout
# masks, a random-weights backbone) by ``make_default_seed``: a draw from Python's global ``random``. So the
# numbers a model starts from after ``random.seed(s)`` depend on every other thread that draws from it meanwhile:
# a Dask worker's event loop does (``dask.sizeof`` samples large dicts with ``random.sample``), so a run trained on
# a cluster started elsewhere now and then (issue 23's test caught one). :func:`thread_keras_draws` gives the
# calling thread its own generator for those draws: the same sequence ``random.seed(s)`` gives, in no other
# thread's reach.
KERAS_DEFAULT_SEED_MODULES = ("keras.src.random.seed_generator", "keras.src.backend.tensorflow.random")
_thread_draws: Any = None  # threading.local(), made on first use


def _keras_default_seed() -> int:
    import random

    rng = getattr(_thread_draws, "rng", None)
    return (rng or random).randint(1, int(1e9))  # what keras.src.random.seed_generator.make_default_seed draws


def thread_keras_draws(seed: int) -> None:
    """From now on, Keras' unseeded draws in the calling thread come from ``random.Random(seed)``; other threads
    keep the global generator. Installs the hook in Keras' modules once."""
    import importlib
    import random
    import threading

    global _thread_draws
    if _thread_draws is None:
        _thread_draws = threading.local()
        for name in KERAS_DEFAULT_SEED_MODULES:
            importlib.import_module(name).make_default_seed = _keras_default_seed
    _thread_draws.rng = random.Random(seed)


# -- Keras global state --------------------------------------------------------------------------------
def keras_global_state() -> Any:
    """``keras.src.backend.common.global_state``: per-thread global attributes and ``clear_session``."""
    from keras.src.backend.common import global_state

    return global_state


def set_keras_seed_state(seed: int) -> None:
    """What ``keras.utils.set_random_seed`` records for Keras itself (its global seed, a fresh seed
    generator), without touching TensorFlow's global seed."""
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    state = keras_global_state()
    state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)


def clear_keras_thread_state() -> None:
    """Forget the calling thread's Keras state (its trackers are ``threading.local`` objects)."""
    state = keras_global_state()
    state.GLOBAL_STATE_TRACKER.__dict__.clear()
    state.GLOBAL_SETTINGS_TRACKER.__dict__.clear()


def replace_clear_session(new: Callable[..., None]) -> Callable[..., None]:
    """Install ``new`` as ``clear_session`` wherever Keras exposes the original; returns the original."""
    state = keras_global_state()
    current = state.clear_session
    for name in CLEAR_SESSION_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "clear_session", None) is current:
            module.clear_session = new
    return current


# -- TensorFlow ----------------------------------------------------------------------------------------
def tf_global_seed() -> int | None:
    """TensorFlow's current global seed (None when unset or when the private API moved)."""
    try:
        from tensorflow.python.eager import context

        return context.global_seed()
    except (ImportError, AttributeError):  # pragma: no cover - checked by tests/test_compat.py
        return None


def reset_tf_operation_seeds(seed: int) -> bool:
    """Restart the stream of operation seeds TensorFlow derives from its global seed (``tf.random.set_seed``
    does this too, but also clears every kernel cache): so a run's random ops get the same seeds whatever the
    process trained before it. False when the private API moved."""
    import random

    try:
        from tensorflow.python.eager import context

        ctx = context.context()
        if not hasattr(ctx, "_rng"):
            return False
        ctx._rng = random.Random(seed)
        return True
    except ImportError:  # pragma: no cover - checked by tests/test_compat.py
        return False


def convert_variables_to_constants(concrete_function: Any) -> Any:
    """A frozen copy of a concrete function (its variables as constants): for counting FLOPs of its graph, and for
    passes of a frozen prefix that Grappler can then fold and fuse (``core.training.features.FrozenFn``)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete_function)


def output_layer(tensor: Any) -> Any:
    """The layer that made a symbolic Keras tensor (``tensor._keras_history[0]``), or None for a tensor no
    layer made; a functional model's last layer in ``model.layers`` need not be its output layer."""
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history is not None else None


# -- Optuna ----------------------------------------------------------------------------------------------
def study_storage(study: Any) -> Any:
    """The storage object behind an ``optuna.Study`` (``study._storage``)."""
    return study._storage


def trial_id(trial: Any) -> int:
    """The storage's id of a ``FrozenTrial`` (``trial._trial_id``; ``number`` is per study)."""
    return trial._trial_id


# -- the study's own input pipeline, for the benchmarks -------------------------------------------------
def image_data_generator() -> type:
    """Keras 2's ``ImageDataGenerator`` (kept by Keras 3 under ``keras.src.legacy``), which the study used."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator
