"""TensorFlow's process-wide settings: seeds and thread pools.

:func:`seed_all` exists because warm models (``core.models.warm``) must keep their traced graphs: setting
TensorFlow's global seed clears its kernel and function caches, which would cost a reused
DenseNet121 its optimised graph (about 10 s) although nothing random changes.
"""

from __future__ import annotations

import logging
import random

import numpy as np

from core import compat

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``, except that TensorFlow's global seed is set only when it
    differs from the current one (see the module docstring)."""
    import keras

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
