"""Every private API SceneLab uses (core/compat.py, ui/compat.py), checked against the pinned versions.

When an upgrade of Keras, TensorFlow, Optuna or Streamlit moves one of them, this file fails and names it,
instead of a run failing somewhere deep.
"""

from __future__ import annotations

import threading

import optuna
import pytest

from core import compat


def test_keras_global_state_and_seeds() -> None:
    import keras

    state = compat.keras_global_state()
    for name in ("clear_session", "set_global_attribute", "get_global_attribute", "GLOBAL_STATE_TRACKER",
                 "GLOBAL_SETTINGS_TRACKER"):  # fmt: skip
        assert hasattr(state, name), f"keras.src.backend.common.global_state.{name} is gone"
    assert isinstance(state.GLOBAL_STATE_TRACKER, threading.local)
    keras.utils.set_random_seed(7)
    assert compat.tf_global_seed() == 7, "tensorflow.python.eager.context.global_seed() no longer reports the seed"
    compat.set_keras_seed_state(11)
    from keras.src.utils import rng_utils

    assert state.get_global_attribute(rng_utils.GLOBAL_RANDOM_SEED) == 11
    assert compat.tf_global_seed() == 7  # TensorFlow's own seed untouched: warm graphs survive
    from tensorflow.python.eager import context

    keras.utils.set_random_seed(7)
    fresh = [context.internal_operation_seed() for _ in range(3)]
    assert compat.reset_tf_operation_seeds(7), "tensorflow's eager context has no _rng of operation seeds any more"
    assert [context.internal_operation_seed() for _ in range(3)] == fresh  # as after set_random_seed(7)


def test_keras_unseeded_draws_are_the_seeding_threads_own() -> None:
    """After ``seed_all(s)`` Keras' unseeded draws (Dense kernels, Dropout masks) follow ``random.Random(s)``, as
    they did from the global generator after ``random.seed(s)``, and another thread drawing from the global
    generator meanwhile (a Dask worker's event loop does) changes nothing; a thread that never seeded keeps the
    global generator."""
    import importlib
    import random

    import keras
    import numpy as np

    from core.models.model import build_head
    from core.runtime import seed_all

    def head() -> list[np.ndarray]:
        return [v.numpy() for v in build_head(6, 3, dropout=0.5, dense_1024=True).variables]

    seed_all(5)
    expected = random.Random(5)
    layer = keras.layers.Dense(2)
    assert layer.kernel_initializer.seed == expected.randint(1, int(1e9))
    assert keras.random.SeedGenerator().state.numpy()[0] == expected.randint(1, int(1e9))
    seed_all(5)
    alone = head()
    seed_all(5)
    meddler = threading.Thread(target=lambda: [random.sample(range(100), 5) for _ in range(1000)])
    meddler.start()
    meddler.join()
    random.random()  # the seeding thread's own use of the global generator does not shift Keras' draws either
    assert all(np.array_equal(a, b) for a, b in zip(alone, head(), strict=True))
    for name in compat.KERAS_DEFAULT_SEED_MODULES:
        assert importlib.import_module(name).make_default_seed is compat._keras_default_seed, name
    random.seed(9)
    seen: list[int] = []
    other = threading.Thread(target=lambda: seen.append(keras.layers.Dense(2).kernel_initializer.seed))
    other.start()
    other.join()
    assert seen == [random.Random(9).randint(1, int(1e9))]  # an unseeded thread: the global generator


def test_thread_state_clear_is_per_thread() -> None:
    state = compat.keras_global_state()
    state.set_global_attribute("scenelab_probe", "main")
    seen: list[object] = []

    def other() -> None:
        state.set_global_attribute("scenelab_probe", "other")
        compat.clear_keras_thread_state()
        seen.append(state.get_global_attribute("scenelab_probe"))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None] and state.get_global_attribute("scenelab_probe") == "main"


def test_clear_session_can_be_replaced_and_restored() -> None:
    import keras

    calls: list[int] = []
    original = compat.keras_global_state().clear_session

    def mine(free_memory: bool = True) -> None:
        calls.append(1)

    try:
        assert compat.replace_clear_session(mine) is original
        keras.backend.clear_session()
        keras.utils.clear_session()
        assert calls == [1, 1], "keras.backend/keras.utils no longer re-export global_state.clear_session"
    finally:
        compat.replace_clear_session(original)
        import sys

        for name in compat.CLEAR_SESSION_MODULES:
            module = sys.modules.get(name)
            if module is not None and getattr(module, "clear_session", None) is mine:
                module.clear_session = original


def test_optuna_storage_and_trial_id() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage = compat.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    ids = [compat.trial_id(t) for t in study.trials]
    assert len(set(ids)) == 2 and all(isinstance(i, int) for i in ids)
    assert storage.get_trial(ids[1]).number == 1


def test_tensorflow_graph_freezing_and_the_studys_generator() -> None:
    import tensorflow as tf

    v = tf.Variable(2.0)
    fn = tf.function(lambda x: x * v).get_concrete_function(tf.TensorSpec((), tf.float32))
    frozen = compat.convert_variables_to_constants(fn)
    assert float(tf.reshape(frozen(tf.constant(3.0)), [-1])[0]) == pytest.approx(6.0)
    assert not frozen.graph.get_collection("variables")  # its variables are constants now
    generator = compat.image_data_generator()
    assert hasattr(generator(horizontal_flip=True), "flow_from_directory")


def test_streamlit_pages_manager() -> None:
    """The class attribute ensure_router reads and clears: set to True by the first manager of an app with a
    pages/ folder (ours), shared by every manager, and left False once cleared."""
    from pathlib import Path

    from ui.compat import pages_manager

    manager = pages_manager()
    assert "uses_pages_directory" in vars(manager), (
        "streamlit.runtime.pages_manager.PagesManager.uses_pages_directory is gone: ui/compat.ensure_router needs it"
    )
    saved = manager.uses_pages_directory
    try:
        manager.uses_pages_directory = None
        first = manager(main_script_path=str(Path(__file__).resolve().parent.parent / "app.py"))
        assert manager.uses_pages_directory is True and first.uses_pages_directory is True
        manager.uses_pages_directory = False  # what ensure_router does: the next manager keeps it
        manager(main_script_path=str(Path(__file__).resolve().parent.parent / "app.py"))
        assert manager.uses_pages_directory is False
    finally:
        manager.uses_pages_directory = saved


def test_keras_output_layer_of_a_functional_model() -> None:
    import keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    assert compat.output_layer(model.outputs[0]).name == "out"
    assert compat.output_layer(hidden).name == "hidden"
    assert compat.output_layer(keras.ops.ones((1,))) is None  # a plain tensor made by no layer
