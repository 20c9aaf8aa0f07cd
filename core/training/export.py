"""Stand-alone exports of a trained classifier: a ``.keras`` or ``.tflite`` file, ``labels.txt`` and a model card.

Both formats take raw 0..255 RGB float32 pixels, ``(batch, size, size, 3)`` (NHWC), at the run's image size
and output class probabilities in the order of ``labels.txt``: the preprocessing is a layer inside the model,
so nothing of SceneLab is needed to use one. A ``.keras`` file holds only built-in Keras layers and loads
with ``keras.models.load_model(path, safe_mode=True)``; a ``.tflite`` file uses TFLite builtin operators
only (no Flex delegate), so the stand-alone LiteRT interpreter (``ai-edge-litert``) runs it without
TensorFlow. A run trained with test-time flip (``tta``) is exported with the flip inside (the mean of the
image's and its mirror's probabilities), so an export reproduces the run's reported test accuracy.

Files are staged under hidden temporary names beside the destination and renamed into place only when all
three are written (labels, card, model last): a killed export leaves no file that looks complete, and
the card names the model file's sha256. Leftover temporary files older than an hour are removed by the
next export into the same folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, SceneLabError, StoreError, first_line, os_error_phrase
from core.paths import REPO
from core.store.atomic import checkpoint, fsync_dir
from core.store.folders import ENSEMBLE_KEY, RunRecord

logger = logging.getLogger(__name__)

FORMATS = {".keras": "keras", ".tflite": "tflite"}
LABELS_FILE = "labels.txt"
CARD_VERSION = 1
TEMP_MARK = ".part"
TEMP_MAX_AGE_S = 3600.0
INPUT_NAME = "image"
RESIZE = ("as SceneLab trained it: EXIF orientation applied, RGB, the whole image resized to size x size "
          "(aspect ratio not kept, no crop) with PIL's bilinear filter")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`write_export` wrote."""

    model: Path
    labels: Path
    card: Path
    format: str
    bytes: int
    sha256: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The CLI's JSON."""
        return {"model": str(self.model), "labels": str(self.labels), "card": str(self.card), "format": self.format,
                "bytes": self.bytes, "sha256": self.sha256, "seconds": round(self.seconds, 2)}


def scenelab_version() -> str:
    """The version in ``pyproject.toml`` (SceneLab is run from its checkout, not installed)."""
    try:
        return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def check_destination(dest: str | os.PathLike[str]) -> tuple[Path, str]:
    """``dest`` as an absolute path and its format, or one sentence saying why it cannot be written
    (nothing is created: :func:`write_export` makes the missing folders)."""
    path = Path(dest).expanduser().absolute()
    fmt = FORMATS.get(path.suffix)
    if fmt is None:
        raise ConfigError(f"The export file {path.name!r} has an unknown suffix; end it in .keras or .tflite.")
    if path.is_dir():
        raise ConfigError(f"The export destination {path} is a folder; give a file name ending in {path.suffix}.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists must be writable
        folder = folder.parent
    if not folder.is_dir():
        raise StoreError(f"Cannot export to {path} because {folder} is a file, not a folder; choose another destination.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"Cannot export to {path} because the folder {folder} is not writable; choose a writable folder.")
    return path, fmt


def _unwritable(path: Path, exc: OSError) -> StoreError:
    return StoreError(f"Cannot export to {path} because {os_error_phrase(exc)}; choose a writable folder with free space.")


# -- the model ------------------------------------------------------------------------------------------
def serving_model(model: Any, *, tta: bool, image_size: int) -> Any:
    """The classifier as exported: itself, or with test-time flip built in from built-in layers only
    (the width axis reversed by a fixed 0/1 matrix: exact, and loadable in safe mode and by TFLite)."""
    if not tta:
        return model
    import keras
    import numpy as np

    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = keras.layers.Permute((1, 3, 2), name="to_width_last")(inputs)
    mirror = keras.layers.Dense(image_size, use_bias=False, trainable=False, name="mirror_width")
    x = mirror(x)
    mirror.set_weights([np.eye(image_size, dtype="float32")[::-1]])
    flipped = keras.layers.Permute((1, 3, 2), name="from_width_last")(x)
    probs = keras.layers.Average(name="tta_mean")([model(inputs), model(flipped)])
    return keras.Model(inputs, probs, name=f"{model.name}_tta")


def tflite_bytes(model: Any, image_size: int) -> bytes:
    """The model converted to a TFLite flatbuffer of builtin operators, batch dimension left free."""
    import keras
    import tensorflow as tf

    spec = [keras.InputSpec(shape=(None, image_size, image_size, 3), dtype="float32", name=INPUT_NAME)]
    with tempfile.TemporaryDirectory(prefix="scenelab-export-") as saved, contextlib.redirect_stdout(sys.stderr):
        model.export(saved, format="tf_saved_model", verbose=False, input_signature=spec)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return bytes(converter.convert())


# -- the card -------------------------------------------------------------------------------------------
def model_card(record: RunRecord, fmt: str, model_file: Path, sha256: str, size: int, tta: bool) -> dict[str, Any]:
    """What a user of the exported file needs to know, and where it came from."""
    run = record.config.get("run", {})
    dataset = record.config.get("dataset", {})
    classes = list(dataset.get("classes", []))
    image_size = int(run["image_size"])
    how = {
        "keras": "keras.models.load_model(path, safe_mode=True).predict(x)",
        "tflite": "ai_edge_litert.interpreter.Interpreter(model_path=path) (or tf.lite.Interpreter): "
                  "resize_tensor_input to the batch, allocate_tensors, set_tensor, invoke, get_tensor",
    }[fmt]
    return {
        "card_version": CARD_VERSION,
        "format": fmt,
        "file": model_file.name,
        "sha256": sha256,
        "bytes": size,
        "how_to_load": how,
        "labels_file": LABELS_FILE,
        "classes": classes,
        "image_size": image_size,
        "input": {"name": INPUT_NAME, "shape": [None, image_size, image_size, 3], "layout": "NHWC",
                  "dtype": "float32", "range": [0, 255], "colour": "RGB",
                  "preprocessing": "inside the model: give raw pixels, not normalised ones",
                  "resize": RESIZE},
        "output": {"shape": [None, len(classes)], "dtype": "float32",
                   "meaning": "class probabilities (softmax), in the order of classes and labels.txt"},
        "test_time_flip": tta,
        "run_id": record.run_id,
        "run": run,
        **({"ensemble_of": record.members, "ensemble_runs": record.config[ENSEMBLE_KEY].get("runs")} if record.members else {}),
        "metrics": record.metrics,
        "dataset": {"name": dataset.get("name"), "fingerprint": dataset.get("fingerprint")},
        "weights": {"identity": record.config.get("weights_identity"), "request": record.config.get("weights_request")},
        "scenelab_version": scenelab_version(),
        "run_created": record.config.get("created"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- writing --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path`` (same suffix: Keras insists), removed unless renamed into
    place; readable by all (``mkstemp`` makes it private; an export is meant to be handed on)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o644)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _finish(tmp: Path) -> tuple[int, str]:
    """fsync a staged file; its size and sha256."""
    h = hashlib.sha256()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
        fh.seek(0)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return tmp.stat().st_size, h.hexdigest()


def clean_stale(folder: Path, max_age_s: float = TEMP_MAX_AGE_S) -> int:
    """Remove temporary export files older than ``max_age_s`` in ``folder`` (left by killed exports)."""
    removed, now = 0, time.time()
    for entry in folder.glob(f".*{TEMP_MARK}.*"):
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink() and now - entry.stat().st_mtime > max_age_s:
                entry.unlink()
                removed += 1
    return removed


def _write_model(serving: Any, tmp: Path, fmt: str, image_size: int) -> None:
    if fmt == "keras":
        serving.save(tmp)
    else:
        tmp.write_bytes(tflite_bytes(serving, image_size))


def write_export(record: RunRecord, model: Any, dest: str | os.PathLike[str]) -> ExportResult:
    """Export ``model`` (``record``'s classifier) to ``dest`` (.keras or .tflite), with labels.txt and the card."""
    path, fmt = check_destination(dest)
    start = time.perf_counter()
    run = record.config.get("run", {})
    # an ensemble's members carry their own test-time flip inside its model (core.training.ensemble)
    image_size, tta = int(run["image_size"]), bool(run.get("tta", False)) and not record.members
    classes = list(record.config.get("dataset", {}).get("classes", []))
    labels, card = path.parent / LABELS_FILE, path.with_suffix(".json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path.parent)
        serving = serving_model(model, tta=tta, image_size=image_size)
        with _staged(path) as tmp_model, _staged(labels) as tmp_labels, _staged(card) as tmp_card:
            _write_model(serving, tmp_model, fmt, image_size)
            size, digest = _finish(tmp_model)
            checkpoint("export:model")
            tmp_labels.write_text("\n".join(classes) + "\n")
            payload = model_card(record, fmt, path, digest, size, tta)
            tmp_card.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
            _finish(tmp_labels)
            _finish(tmp_card)
            os.replace(tmp_labels, labels)
            os.replace(tmp_card, card)
            os.replace(tmp_model, path)  # last: the model file appears only when everything beside it is there
        fsync_dir(path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    except SceneLabError:
        raise
    except Exception as exc:  # a converter or serialisation failure: one sentence
        raise StoreError(
            f"Run {record.run_id} could not be exported as {fmt} ({type(exc).__name__}: {first_line(exc)}); "
            "try the other format, or report this run's settings."
        ) from exc
    seconds = time.perf_counter() - start
    logger.info("Exported run %s to %s (%.1f MB, %.1f s).", record.run_id, path, size / 1e6, seconds)
    return ExportResult(path, labels, card, fmt, size, digest, seconds)
