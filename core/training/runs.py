"""A finished run: written to the store, read back as a model, summarised for tables, found by settings.

``save_run`` writes one run's files into the store's temporary folder and commits it (all or nothing);
``load_classifier`` rebuilds its trained classifier (image 0..255 -> probabilities) from what was stored.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig
from core.data.arrays import DecodedDataset
from core.errors import StoreError, WeightsError, first_line
from core.models.backbones import ResolvedWeights, resolve_weights
from core.models.model import Classifier, classifier_for
from core.store.atomic import atomic_write_json, atomic_write_npz, write_history_csv
from core.store.folders import CACHE_FORMAT_VERSION, RunRecord, Store
from core.training.export import ExportResult, check_destination, write_export
from core.training.identity import Prepared


def save_run(
    prep: Prepared,
    store: Store,
    clf: Classifier,
    ds: DecodedDataset,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    p_test: np.ndarray,
    base_trained: bool,
    *,
    replace: bool = False,
    meta: dict[str, Any] | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> RunRecord:
    """Write the run's config, model, test predictions, history and metrics, then commit it atomically.

    ``val`` (validation probabilities and labels) is kept beside the test predictions (``val_probs``,
    ``val_true``), so runs can be combined and compared on validation alone (``core.search.best``).

    When the backbone is the pretrained file's (a head-only run), only the head is kept: kilobytes, not
    megabytes; ``load_classifier`` rebuilds the rest from the same weights."""
    tmp = store.begin_run(prep.run_id)
    try:
        config = {
            "run_id": prep.run_id,
            "run": prep.cfg.to_dict(),
            "dataset": {
                "root": str(prep.info.root),
                "name": prep.info.root.name,
                "fingerprint": prep.info.fingerprint,
                "classes": ds.classes,
            },
            "weights_identity": prep.weights.identity,
            "weights_request": prep.weights.request,
            "base_trained": base_trained,
            "cache_format": CACHE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(meta or {}),
        }
        if base_trained or prep.weights.path is None:
            clf.model.save(tmp / "model.keras")
        else:
            clf.head.save_weights(tmp / "head.weights.h5")
        atomic_write_npz(
            tmp / "predictions.npz",
            probs=p_test.astype("float32"),
            y_true=ds.y_test.astype("int32"),
            paths=np.asarray(ds.test_paths, dtype=str),
            **({} if val is None else {"val_probs": val[0].astype("float32"), "val_true": val[1].astype("int32")}),
        )
        write_history_csv(tmp / "history.csv", history)
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_json(tmp / "config.json", config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return store.commit_run(prep.run_id, tmp, replace=replace)


def load_classifier(record: RunRecord) -> Any:
    """The trained classifier of a stored run (image 0..255 -> probabilities).

    A head-only run is rebuilt from its weights; when those are a file, the file must still be the one
    the run was trained with (its digest is in the run's weights identity), else the rebuilt model would
    score anything while the run still reports its own accuracy: refused in one sentence."""
    import keras

    cfg = RunConfig.from_dict(record.config["run"])
    if record.model_path.exists():
        try:
            return keras.models.load_model(record.model_path, safe_mode=True, compile=False)
        except Exception as exc:  # damaged zip, foreign or unsafe (Lambda) content: one sentence
            raise _damaged(record, record.model_path, exc) from exc
    weights = _trained_weights(record, cfg)
    clf = classifier_for(cfg, len(record.config["dataset"]["classes"]), weights)
    try:
        clf.head.load_weights(record.path / "head.weights.h5")
    except Exception as exc:
        raise _damaged(record, record.path / "head.weights.h5", exc) from exc
    return clf.model


def _trained_weights(record: RunRecord, cfg: RunConfig) -> ResolvedWeights:
    """The backbone weights a head-only run was trained with, or one sentence if they are gone or changed."""
    trained = record.config.get("weights_identity")
    try:
        weights = resolve_weights(cfg.backbone, cfg.weights)
    except WeightsError as exc:
        if _names_a_file(cfg.weights):
            raise WeightsError(
                f"Run {record.run_id} was trained on the weights file {cfg.weights}, which is gone; put that "
                "file back where it was, or train the run again."
            ) from exc
        raise
    if weights.path is not None and _names_a_file(cfg.weights) and trained and weights.identity != trained:
        raise WeightsError(
            f"Run {record.run_id} was trained on the weights file {weights.path} as it was then (sha256 "
            f"{trained.rsplit(':', 1)[-1]}...), but that file has changed since (now {weights.identity.rsplit(':', 1)[-1]}...); "
            "put the original file back, or train the run again on the new one."
        )
    return weights


def _names_a_file(request: str) -> bool:
    """Whether a run's ``weights`` setting names a file (not ``imagenet`` or ``none``)."""
    return request not in ("imagenet", "none", "random", "")


def _damaged(record: RunRecord, path: Path, exc: BaseException) -> StoreError:
    return StoreError(
        f"The stored model of run {record.run_id} ({path}) could not be loaded ({first_line(exc)}); delete the "
        f"folder {record.path} and train the run again."
    )


def export_model(record: RunRecord, dest: str | os.PathLike[str]) -> ExportResult:
    """Write a stand-alone ``.keras`` or ``.tflite`` file of a run's classifier (raw 0..255 RGB in,
    probabilities out), with ``labels.txt`` and a model card beside it (:mod:`core.training.export`)."""
    check_destination(dest)  # a bad suffix or folder is refused before the model is loaded
    return write_export(record, load_classifier(record), dest)


SUMMARY_METRICS = (
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "epochs_run",
    "seconds",
    "params_total",
    "backbone_params",
)


def summary_row(record: RunRecord) -> dict[str, Any]:
    """One flat row per run for tables: config columns, accuracies, seconds."""
    run = record.config.get("run", {})
    aug = run.get("augment", {}) or {}
    row: dict[str, Any] = {"run_id": record.run_id, "dataset": record.config.get("dataset", {}).get("name")}
    row.update({k: v for k, v in run.items() if k != "augment"})
    row.update({f"aug_{k}": v for k, v in aug.items()})
    for k in SUMMARY_METRICS:
        row[k] = record.metrics.get(k)
    row["created"] = record.config.get("created")
    return row


def runs_like(records: list[RunRecord], fingerprints: str | set[str], cfg: RunConfig) -> list[RunRecord]:
    """The stored runs on the dataset (any of its ``fingerprints``: its content's, and the legacy one runs
    stored before used) with ``cfg``'s backbone, weights and image size."""
    wanted = {fingerprints} if isinstance(fingerprints, str) else set(fingerprints)
    out = []
    for r in records:
        run = r.config.get("run", {})
        if (
            r.config.get("dataset", {}).get("fingerprint") in wanted
            and run.get("backbone") == cfg.backbone
            and run.get("weights") == cfg.weights
            and run.get("image_size") == cfg.image_size
        ):
            out.append(r)
    return out


def read_config_file(path: str | os.PathLike[str]) -> RunConfig:
    """A RunConfig from a JSON file (a run's config.json or a bare settings object)."""
    data = json.loads(Path(path).read_text())
    return RunConfig.from_dict(data.get("run", data))
