"""An ensemble of stored runs as a run of its own: their averaged probabilities, one Keras model.

``save_ensemble`` writes an ensemble record into the store like any run (``config.json``, ``metrics.json``,
``history.csv``, ``predictions.npz`` and ``model.keras``), so the Runs page lists it, page 6 explains it
(through its first member, ``explained_record``) and ``export`` writes it. Its model takes raw 0..255 RGB
images at the members' common image size and outputs the mean of the members' probabilities, each member
with its own test-time flip inside (``core.training.export.serving_model``), from built-in layers only, so
plain ``keras.saving.load_model`` reads it. Its figures are the mean of the members' stored probabilities
(validation and test), which is what the model computes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.config import stable_hash
from core.errors import ConfigError
from core.store.atomic import atomic_write_json, atomic_write_npz, write_history_csv
from core.store.folders import CACHE_FORMAT_VERSION, ENSEMBLE_KEY, RunRecord, Store
from core.training.export import serving_model


def ensemble_id(member_ids: Sequence[str]) -> str:
    """An ensemble's id: the hash of its members' ids (their order does not matter)."""
    return stable_hash({ENSEMBLE_KEY: sorted(member_ids)})


def mean_probs(records: Sequence[RunRecord], key: str) -> np.ndarray:
    """The members' stored probabilities ``key`` (``probs``: test; ``val_probs``: validation), averaged."""
    arrays = []
    for r in records:
        preds = r.predictions() or {}
        if key not in preds:
            raise ConfigError(f"Run {r.run_id} has no stored {key}; train it again to use it in an ensemble.")
        arrays.append(np.asarray(preds[key], dtype="float64"))
    return np.mean(arrays, axis=0)


def _check_members(members: Sequence[RunRecord]) -> None:
    if len(members) < 2:
        raise ConfigError(f"An ensemble needs at least two runs; received {len(members)}.")
    sizes = {int(m.config["run"]["image_size"]) for m in members}
    prints = {m.config.get("dataset", {}).get("fingerprint") for m in members}
    if len(sizes) != 1 or len(prints) != 1:
        raise ConfigError("The runs of an ensemble must share one dataset and one image size; received "
                          f"image sizes {sorted(sizes)} on {len(prints)} dataset(s).")  # fmt: skip


def ensemble_model(members: Sequence[RunRecord]) -> Any:
    """One Keras model: the mean of the members' probabilities (each with its own test-time flip)."""
    import keras

    from core.training.runs import load_classifier

    size = int(members[0].config["run"]["image_size"])
    inputs = keras.Input((size, size, 3), name="image")
    outputs = []
    for i, record in enumerate(members):
        clf = load_classifier(record)
        served = serving_model(clf, tta=bool(record.config["run"].get("tta")), image_size=size)
        member = keras.Model(served.inputs[0], served.outputs[0], name=f"member_{i}")
        outputs.append(member(inputs))
    return keras.Model(inputs, keras.layers.Average(name="ensemble_mean")(outputs), name="ensemble")


def _metrics(members: Sequence[RunRecord], p_val: np.ndarray, y_val: np.ndarray, p_test: np.ndarray,
             y_test: np.ndarray) -> dict[str, Any]:  # fmt: skip
    first = members[0].metrics
    return {
        "val_accuracy": round(float(np.mean(p_val.argmax(1) == y_val)), 4),
        "test_accuracy": round(float(np.mean(p_test.argmax(1) == y_test)), 4),
        "train_accuracy": None,
        "n_train": first.get("n_train"), "n_val": int(len(y_val)), "n_test": int(len(y_test)),
        "epochs_run": None,
        "seconds": round(sum(float(m.metrics.get("seconds") or 0.0) for m in members), 3),
        "params_total": sum(int(m.metrics.get("params_total") or 0) for m in members),
        "backbone_params": first.get("backbone_params"),
        "members": len(members),
    }  # fmt: skip


def save_ensemble(store: Store, members: Sequence[RunRecord], meta: dict[str, Any] | None = None) -> RunRecord:
    """Store the ensemble of ``members`` (the first names its recipe on the pages) as a run; returns it
    (the stored one when it exists already)."""
    _check_members(members)
    run_id = ensemble_id([m.run_id for m in members])
    with store.lock(run_id):
        stored = store.load_run(run_id)
        if stored is not None:
            return stored
        first = members[0]
        preds = first.predictions() or {}
        p_val, p_test = mean_probs(members, "val_probs"), mean_probs(members, "probs")
        y_val, y_test = np.asarray(preds["val_true"]), np.asarray(preds["y_true"])
        tmp = store.begin_run(run_id)
        try:
            ensemble_model(members).save(tmp / "model.keras")
            inherited = {k: v for k, v in first.config.items() if k != "search_study"}  # not a search trial
            config = {**inherited, "run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      ENSEMBLE_KEY: {"members": [m.run_id for m in members],
                                     "runs": [m.config["run"] for m in members]},
                      "base_trained": True, "cache_format": CACHE_FORMAT_VERSION, **(meta or {})}  # fmt: skip
            atomic_write_npz(tmp / "predictions.npz", probs=p_test.astype("float32"), y_true=y_test.astype("int32"),
                             paths=np.asarray(preds["paths"], dtype=str), val_probs=p_val.astype("float32"),
                             val_true=y_val.astype("int32"))  # fmt: skip
            write_history_csv(tmp / "history.csv", [])
            atomic_write_json(tmp / "metrics.json", _metrics(members, p_val, y_val, p_test, y_test))
            atomic_write_json(tmp / "config.json", config)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return store.commit_run(run_id, tmp)


def explained_record(record: RunRecord, store: Store | None = None) -> RunRecord:
    """The run whose network a heatmap or a map explains: an ensemble's first member (from ``store``, else the
    store holding the ensemble), else the run itself."""
    if not record.members:
        return record
    first = (store or Store(record.path.parent.parent)).load_run(record.members[0])
    if first is None:
        raise ConfigError(f"Ensemble {record.run_id}'s first run is no longer stored; it cannot be explained.")
    return first
