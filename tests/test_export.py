"""Exports that work elsewhere (``core.training.export``, ``python -m core export``), and a head-only run that
refuses a changed weights file (issue 15, item 4).

Each export is loaded in a fresh interpreter started with ``-I`` from another folder (the project is not
on ``sys.path``; site-packages is), with plain Keras in safe mode or the stand-alone LiteRT interpreter
(TensorFlow never imported), and must give the run's own test predictions and accuracy.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import cli
from core.config import RunConfig
from core.data.arrays import decode_dataset, scan_dataset
from core.errors import ConfigError, StoreError, WeightsError
from core.models.backbones import ResolvedWeights, build_base
from core.store.folders import Store
from core.training.export import LABELS_FILE, clean_stale
from core.training.runs import export_model, load_classifier
from core.training.train import train

REPO = Path(__file__).resolve().parent.parent
TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=2, batch_size=8, val_fraction=0.25)
LITE0 = TINY.replace(backbone="efficientnet_lite0")  # builds three times faster than DenseNet121 (141 layers, not 427)

LOAD_KERAS = """
import json, sys
import numpy as np
import keras
out = {}
for path, data in zip(sys.argv[1::2], sys.argv[2::2]):
    model = keras.models.load_model(path, safe_mode=True)
    out[path] = model.predict(np.load(data)["x"], verbose=0).tolist()
print(json.dumps(out))
"""
LOAD_TFLITE = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
out = {}
for path, data in zip(sys.argv[1::2], sys.argv[2::2]):
    x = np.load(data)["x"]
    it = Interpreter(model_path=path)
    inp, res = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    out[path] = it.get_tensor(res["index"]).tolist()
assert "tensorflow" not in sys.modules, "the LiteRT interpreter pulled in TensorFlow"
print(json.dumps(out))
"""
NOT_THE_PROJECT = """
import importlib.util, sys
assert importlib.util.find_spec("core") is None, "the project is importable"
"""


def run_elsewhere(script: str, args: list[str], cwd: Path) -> dict[str, list[list[float]]]:
    """``script`` in a fresh ``python -I`` (no PYTHONPATH, no script folder, no user site) in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-I", "-c", NOT_THE_PROJECT + script, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """A plain head run and one with test-time flip, in one store, with their test images as npz."""
    root = tmp_path_factory.mktemp("export")
    store = Store(root / "artifacts")
    out = {}
    for name, cfg in (("plain", TINY), ("tta", TINY.replace(tta=True))):
        record = train(cfg, tiny_dataset, store).record
        out[name] = record
    x = decode_dataset(scan_dataset(tiny_dataset), 32, store.datasets_dir).x_test.astype("float32")
    np.savez(root / "test.npz", x=x)
    return root, store, out


def check_predictions(record, probs: list[list[float]], atol: float) -> None:
    probs = np.asarray(probs)
    pred = record.predictions()
    np.testing.assert_allclose(probs, pred["probs"], atol=atol)
    accuracy = float((probs.argmax(axis=1) == pred["y_true"]).mean())
    assert abs(accuracy - record.metrics["test_accuracy"]) <= 0.01


def check_files(record, result, fmt: str) -> dict:
    assert result.model.is_file() and result.format == fmt and result.bytes == result.model.stat().st_size
    assert result.labels.read_text().splitlines() == record.config["dataset"]["classes"]
    card = json.loads(result.card.read_text())
    assert card["format"] == fmt and card["file"] == result.model.name and card["sha256"] == result.sha256
    assert card["classes"] == record.config["dataset"]["classes"] and card["image_size"] == 32
    assert card["input"]["range"] == [0, 255] and card["input"]["layout"] == "NHWC" and "bilinear" in card["input"]["resize"]
    assert card["run_id"] == record.run_id and card["run"] == record.config["run"]
    assert card["metrics"]["test_accuracy"] == record.metrics["test_accuracy"]
    assert card["dataset"]["fingerprint"] == record.config["dataset"]["fingerprint"]
    assert card["weights"]["identity"] == record.config["weights_identity"]
    assert card["scenelab_version"] == "0.1.0" and card["test_time_flip"] == record.config["run"]["tta"]
    assert not [p.name for p in result.model.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    return card


@pytest.mark.parametrize(("fmt", "script", "atol"), [("keras", LOAD_KERAS, 1e-5), ("tflite", LOAD_TFLITE, 1e-4)])
def test_an_export_runs_without_scenelab_and_reproduces_the_runs_accuracy(runs, fmt, script, atol):
    root, _, records = runs
    args = []
    for name, record in records.items():
        result = export_model(record, root / fmt / f"{name}.{fmt}")
        check_files(record, result, fmt)
        args += [str(result.model), str(root / "test.npz")]
    elsewhere = root / f"elsewhere-{fmt}"
    elsewhere.mkdir()
    probs = run_elsewhere(script, args, elsewhere)
    for name, record in records.items():
        check_predictions(record, probs[str(root / fmt / f"{name}.{fmt}")], atol)


def test_the_cli_exports_and_refuses_bad_input_with_one_sentence(runs, capsys, tmp_path):
    _, store, records = runs
    record = records["plain"]
    base = ["export", "--artifacts", str(store.root)]
    assert cli.main([*base, record.run_id, "--to", str(tmp_path / "out" / "m.keras"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["model"] == str(tmp_path / "out" / "m.keras") and payload["format"] == "keras"
    assert (tmp_path / "out" / LABELS_FILE).is_file() and (tmp_path / "out" / "m.json").is_file()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dir.keras").mkdir()
    bad = {
        "0123456789abcdef": ("new/m.keras", "No finished run"),
        "../../etc": ("new/m.keras", "not a run id"),
        record.run_id: ("new/m.onnx", "unknown suffix"),
    }
    for run_id, (name, words) in bad.items():
        assert cli.main([*base, run_id, "--to", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert cli.main([*base, record.run_id, "--to", str(tmp_path / "a-file" / "m.keras")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="unknown suffix"):
        export_model(record, tmp_path / "M.KERAS")
    with pytest.raises(ConfigError, match="is a folder"):
        export_model(record, tmp_path / "dir.keras")
    assert not (tmp_path / "new").exists() and not (tmp_path / LABELS_FILE).exists()  # nothing made on a refusal


def test_a_full_disk_midway_is_one_sentence_and_leaves_nothing(runs, tmp_path, monkeypatch):
    from core.training import export
    def full(serving, tmp, fmt, image_size):
        tmp.write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_write_model", full)
    with pytest.raises(StoreError, match="the disk is full") as exc:
        export_model(runs[2]["plain"], tmp_path / "out" / "m.tflite")
    assert "\n" not in str(exc.value) and list((tmp_path / "out").iterdir()) == []


def test_a_killed_export_leaves_nothing_that_looks_complete(runs, tmp_path):
    _, store, records = runs
    dest = tmp_path / "out" / "model.keras"
    env = {**os.environ, "SCENELAB_TEST_PAUSE_AT": "export:model", "SCENELAB_TEST_PAUSE_S": "60", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "export", records["plain"].run_id, "--to", str(dest), "--artifacts", str(store.root)],
        cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if "scenelab-test: paused at export:model" in line:
                break
        else:
            pytest.fail("the export never reached its pause point")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    left = sorted(p.name for p in dest.parent.iterdir())
    assert left and all(name.startswith(".") and ".part" in name for name in left), left  # hidden temporaries only
    assert clean_stale(dest.parent, max_age_s=0) == len(left) and not list(dest.parent.iterdir())


# -- issue 15, item 4: a head-only run on a weights file -------------------------------------------------
def save_random_backbone(path: Path, seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    build_base(LITE0.backbone, 32, ResolvedWeights("none", None, "x")).save_weights(path)


def test_a_run_on_a_weights_file_refuses_a_changed_or_missing_file(tiny_dataset, tmp_path):
    weights = tmp_path / "mine.weights.h5"
    save_random_backbone(weights, seed=1)
    record = train(LITE0.replace(weights=str(weights)), tiny_dataset, Store(tmp_path / "a")).record
    assert not record.model_path.exists() and (record.path / "head.weights.h5").is_file()  # only the head is kept
    load_classifier(record)  # the same file: rebuilt
    save_random_backbone(weights, seed=2)  # other weights under the same name
    with pytest.raises(WeightsError, match="has changed since") as exc:
        load_classifier(record)
    msg = str(exc.value)
    assert record.run_id in msg and str(weights) in msg and "train the run again" in msg and "\n" not in msg
    with pytest.raises(WeightsError, match="has changed since"):
        export_model(record, tmp_path / "out" / "m.keras")
    assert not (tmp_path / "out" / "m.keras").exists()
    weights.unlink()
    with pytest.raises(WeightsError, match="which is gone") as exc:
        load_classifier(record)
    assert record.run_id in str(exc.value) and "\n" not in str(exc.value)



# -- the Runs page's downloads (ui/downloads.py) -------------------------------------------------------------
def downloads_script(run_path: str) -> None:
    from pathlib import Path

    import streamlit as st

    from core.store.folders import Store
    from ui.downloads import export_buttons

    path = Path(run_path)
    record = Store(path.parent.parent).load_run(path.name)
    export_buttons(record, st.container())


def download_labels(at) -> list[str]:
    return [el.proto.label for el in at.get("download_button")]


def test_the_runs_page_offers_both_downloads_prepared_on_first_click(runs, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ui import downloads

    monkeypatch.setattr(downloads, "EXPORT_DIR", tmp_path / "exports")
    record = runs[2]["plain"]
    at = AppTest.from_function(downloads_script, args=(str(record.path),), default_timeout=120).run()
    assert [b.label for b in at.button] == ["Download .keras", "Download .tflite"] and download_labels(at) == []
    at.button(key=f"downloads_prepare_keras_{record.run_id}").click().run()
    assert not at.exception and not at.error
    labels = download_labels(at)
    assert labels[0].startswith("Download .keras (") and labels[1] == "Labels and model card (.zip)"
    assert [b.label for b in at.button] == ["Download .tflite"]
    keras_file = downloads.export_file(record, "keras")
    assert keras_file.is_file() and keras_file.parent.parent.name.startswith(record.run_id)
    with zipfile.ZipFile(io.BytesIO(downloads.cards_zip(record))) as zf:
        assert sorted(zf.namelist()) == ["labels.txt", "model-card-keras.json"]
        assert json.loads(zf.read("model-card-keras.json"))["file"] == keras_file.name
    monkeypatch.setattr(downloads, "export_model", _fail)  # the .tflite export fails: one sentence, no traceback
    at.button(key=f"downloads_prepare_tflite_{record.run_id}").click().run()
    assert not at.exception and [e.value for e in at.error] == [
        f"The model of run {record.run_id} could not be exported as .tflite (RuntimeError: converter crashed)."
    ]


def _fail(record, dest):
    raise RuntimeError("converter crashed\nwith a traceback")
