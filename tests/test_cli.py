"""The `python -m core` contract: JSON last line, exit code 2 with one sentence on bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.backbones import keras_models_dir
from core.backbones.densenet import DENSENET121_NOTOP_FILE
from core.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "blocks, expected",
    [(0, 7_037_504), (1, 4_847_168), (2, 1_444_928), (3, 381_760)],
)
def test_describe_densenet_parameter_counts(blocks, expected, capsys):
    assert main(["describe", "--backbone", "densenet121", "--remove-blocks", str(blocks), "--json"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["backbone_params"] == expected
    assert out["params_total"] == expected + out["head_params"]
    assert out["cut_layer"] == ["relu", "pool4_pool", "pool3_pool", "pool2_pool"][blocks]
    assert 0 < out["params_trainable"] <= out["params_total"]


def test_describe_dense_1024_head(capsys):
    main(["describe", "--remove-blocks", "3", "--dense-1024", "--json"])
    out = _last_json(capsys.readouterr().out)
    assert out["head_params"] == 128 * 1024 + 1024 + 1024 * 8 + 8


def test_train_json_then_cached(tiny_dataset, tmp_path):
    args = ["train", "--data", str(tiny_dataset), "--backbone", "densenet121", "--weights", "none",
            "--remove-blocks", "3", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
            "--artifacts", str(tmp_path), "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    a = _last_json(first.stdout)
    for key in ("run_id", "cached", "test_accuracy", "val_accuracy", "train_accuracy", "epochs_run", "seconds", "params_total"):
        assert key in a
    assert a["cached"] is False and a["epochs_run"] == 2
    b = _last_json(run_cli(*args).stdout)
    assert b["cached"] is True and b["run_id"] == a["run_id"] and b["test_accuracy"] == a["test_accuracy"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["train", "--data", "/no/such/folder"], "does not exist"),
        (["train", "--data", ".", "--lr", "abc"], "invalid float"),
        (["train", "--data", ".", "--optimizer", "lion"], "invalid choice"),
        (["train", "--data", "{tiny}", "--remove-blocks", "5", "--weights", "none"], "--remove-blocks"),
        (["train", "--data", "{tiny}", "--weights", "/no/weights.h5"], "does not exist"),
        (["describe", "--backbone", "vgg99"], "Unknown backbone"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(args, match, tiny_dataset, capsys):
    args = [a.replace("{tiny}", str(tiny_dataset)) for a in args]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_densenet_imagenet_offline_is_one_sentence(tiny_dataset, tmp_path):
    if (keras_models_dir() / DENSENET121_NOTOP_FILE).exists():
        pytest.skip("DenseNet121 ImageNet weights are cached on this machine")
    # an empty KERAS_HOME and no reachable server: the offline answer, not a traceback
    r = run_cli("train", "--data", str(tiny_dataset), "--weights", "imagenet", "--artifacts", str(tmp_path),
                env={"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("scenelab: DenseNet121 ImageNet weights are not cached")
    assert "Traceback" not in r.stderr


# -- progress on the command line: every training path, the printer active --------------------------------
TRAIN_PATHS = {
    "head on cached features": ["--phase", "head"],
    "head, flips only (mirror features)": ["--phase", "head", "--aug-hflip"],
    "head, augmented (per-epoch feature banks)": ["--phase", "head", "--aug-hflip", "--aug-zoom", "0.2"],
    "suffix on cached prefix activations": ["--phase", "full", "--freeze-blocks", "1"],
    "suffix on augmented prefix banks": ["--phase", "full", "--freeze-blocks", "1", "--aug-hflip", "--aug-zoom", "0.2"],
    "whole network": ["--phase", "full"],
    "whole network, augmented images": ["--phase", "full", "--aug-zoom", "0.2"],
    "head, then the whole network": ["--phase", "head+full", "--aug-hflip", "--aug-zoom", "0.2"],
}


@pytest.mark.parametrize("path", sorted(TRAIN_PATHS))
def test_every_training_path_prints_its_progress(path, tiny_dataset, tmp_path, capsys, caplog):
    """``train`` reports progress through ``_progress_printer`` on every path; no event it sends may crash it
    (a per-epoch augmentation bank's "features" event without "elapsed" once ended a finished run in a
    KeyError)."""
    caplog.set_level(logging.INFO, logger="core")
    args = ["train", "--data", str(tiny_dataset), "--backbone", "densenet121", "--weights", "none",
            "--remove-blocks", "2", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--artifacts", str(tmp_path), "--json", *TRAIN_PATHS[path]]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    out = _last_json(capsys.readouterr().out)
    assert out["cached"] is False and out["epochs_run"] >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "core"]
    phases = {"head": ["head"], "full": ["full"], "head+full": ["head", "full"]}[args[args.index("--phase") + 1]]
    for phase in phases:
        assert any(line.startswith(f"{phase} epoch 1/1") for line in lines), lines
    assert not any(" - " in line for line in lines if " epoch " in line), lines  # every figure of an epoch was sent


def test_progress_printer_takes_any_event(caplog):
    """Events with missing, None or odd values print what they have instead of raising."""
    from core.commands import _progress_printer

    caplog.set_level(logging.INFO, logger="core")
    for event in ({}, {"event": "features"}, {"event": "features", "done": 64, "total": 64},
                  {"event": "prefix", "done": "x", "total": None}, {"event": "epoch"},
                  {"event": "epoch", "row": {"loss": None, "accuracy": "?"}}, {"event": "status"},
                  {"event": "batch", "logs": {}}, {"event": "download", "bytes": 1}):  # fmt: skip
        _progress_printer(event)
    assert "features 64/64 (- s)" in caplog.messages
