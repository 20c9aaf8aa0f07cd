"""The `python -m core` contract: JSON last line, exit code 2 with one sentence on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main
from core.models.backbones import keras_models_dir
from core.models.backbones.densenet import DENSENET121_NOTOP_FILE

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
