"""The `python -m core` contract: JSON last line, exit code 2 with one sentence on bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import build_parser, main, parse_tune
from core.config import DEFAULT_IMAGE_SIZE, ENTRY_DEFAULTS, SHARED_SETTINGS

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
    main(["describe", "--backbone", "densenet121", "--remove-blocks", "3", "--dense-1024", "--json"])
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
        (["train", "--data", ".", "--lr", "abc"], "Learning rate (--lr) must be a number; received 'abc'"),
        (["train", "--data", ".", "--dense-1024", "maybe"], "(--dense-1024) must be true or false"),
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


def _fresh_offline(tmp_path: Path) -> dict:
    """A fresh install without internet: empty HOME and KERAS_HOME, every download sent to a closed port."""
    (tmp_path / "home").mkdir()
    closed = "http://127.0.0.1:9"
    return {"HOME": str(tmp_path / "home"), "KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": closed,
            "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed}


def test_densenet_imagenet_offline_is_one_sentence(tiny_dataset, tmp_path):
    # its own empty KERAS_HOME and no reachable server: the offline answer, not a traceback, whatever ~/.keras holds
    r = run_cli("train", "--data", str(tiny_dataset), "--backbone", "densenet121", "--weights", "imagenet",
                "--artifacts", str(tmp_path), env=_fresh_offline(tmp_path))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("scenelab: DenseNet121 ImageNet weights are not cached")
    assert "Traceback" not in r.stderr


def test_a_fresh_offline_install_trains_with_no_run_settings_given(tiny_dataset, tmp_path):
    """``python -m core train`` with no backbone, weights or size: the offline default, on a machine with nothing
    cached and no internet (--data and --epochs only keep it fast)."""
    r = run_cli("train", "--data", str(tiny_dataset), "--epochs", "2", "--artifacts", str(tmp_path / "a"), "--json",
                env=_fresh_offline(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    out = _last_json(r.stdout)
    assert out["cached"] is False and out["epochs_run"] == 2 and 0.0 <= out["test_accuracy"] <= 1.0
    config = json.loads((tmp_path / "a" / "runs" / out["run_id"] / "config.json").read_text())["run"]
    assert (config["backbone"], config["weights"], config["image_size"]) == (ENTRY_DEFAULTS["backbone"], "imagenet", 128)


def test_every_entry_point_starts_from_the_same_backbone_and_size():
    from core.models.backbones import default_backbone, get_backbone
    from ui.settings import DEFAULTS

    parser = build_parser()
    want = (ENTRY_DEFAULTS["backbone"], DEFAULT_IMAGE_SIZE)
    assert get_backbone(want[0]).offline  # a fresh install without internet can train it
    for command in ("train", "describe", "reproduce"):
        args = parser.parse_args([command] if command != "train" else [command])
        assert (args.backbone, args.image_size) == want, command
    request = parse_tune(["--study", "s"])
    assert (request.cfg.backbone, request.cfg.image_size) == want and request.explicit == {}
    assert (DEFAULTS["backbone"](), DEFAULTS["image_size"]()) == want == (default_backbone(), want[1])
    for name in SHARED_SETTINGS:  # the app's sidebar starts where the command line does
        assert DEFAULTS[name]() == getattr(parser.parse_args(["train"]), name), name


def test_a_worker_request_survives_its_command_line():
    """The app starts search workers with ``tune_argv(request)``; parsing it back gives the same request."""
    from core.search.study import tune_argv

    argv = ["--study", "s", "--data", "/d", "--trials", "7", "--sampler", "random", "--repeats", "2", "--backbone",
            "densenet121", "--image-size", "64", "--tta", "false", "--train-per-class", "all", "--aug-hflip",
            "--full-lr", "none", "--early-stopping", "3"]
    request = parse_tune(argv)
    again = parse_tune(tune_argv(request))
    assert again == request
    assert request.explicit["train_per_class"] is None and request.explicit["aug_hflip"] is True
    assert request.explicit["early_stopping_patience"] == 3 and request.cfg.image_size == 64


@pytest.mark.parametrize(("name", "raw", "want"), [
    ("dense_1024", "on", True), ("dense_1024", "No", False), ("train_per_class", "all", None), ("train_per_class", "50", 50),
    ("epochs", "7", 7), ("lr", "1e-3", 1e-3), ("full_lr", "none", None), ("tta", "1", True), ("aug_copies", "5", 5),
])  # fmt: skip
def test_the_command_line_and_a_link_read_a_value_alike(name, raw, want):
    from core.config import RUN_SETTINGS
    from core.fields import flag_of
    from ui.links import _parse

    args = build_parser().parse_args(["train", flag_of(name, RUN_SETTINGS[name]), raw])
    assert getattr(args, name) == want == _parse(name, raw)


def test_a_bad_value_is_the_same_sentence_on_the_command_line_and_in_a_link(capsys):
    from core.errors import ConfigError
    from ui.links import _parse

    with pytest.raises(ConfigError, match=r"Epochs \(--epochs\) must be a whole number; received 'abc'"):
        _parse("epochs", "abc")
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "abc"])
    assert "Epochs (--epochs) must be a whole number; received 'abc'" in capsys.readouterr().err
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
    """``train`` reports progress through ``_ProgressPrinter`` on every path; no event it sends may crash it
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
    from core.commands import _ProgressPrinter

    _progress_printer = _ProgressPrinter()
    caplog.set_level(logging.INFO, logger="core")
    for event in ({}, {"event": "features"}, {"event": "features", "done": 64, "total": 64},
                  {"event": "prefix", "done": "x", "total": None}, {"event": "epoch"},
                  {"event": "epoch", "row": {"loss": None, "accuracy": "?"}}, {"event": "status"},
                  {"event": "batch", "logs": {}}, {"event": "download", "bytes": 1}):  # fmt: skip
        _progress_printer(event)
    assert "backbone features 64/64 (- s)" in caplog.messages


def test_counts_print_at_most_a_line_a_second_and_the_last(caplog):
    """Decoding 50,000 images sends an event per chunk: the CLI prints the first, then one a second, and the last."""
    from core.commands import _ProgressPrinter

    caplog.set_level(logging.INFO, logger="core")
    printer = _ProgressPrinter(every_s=3600.0)  # nothing between the first and the last within the hour
    for done in range(256, 50_001, 256):
        printer({"event": "decode", "done": min(done, 50_000), "total": 50_000, "elapsed": done / 1000})
    printer({"event": "decode", "done": 50_000, "total": 50_000, "elapsed": 50.0})
    decoding = [m for m in caplog.messages if m.startswith("decoding images")]
    assert decoding[0].startswith("decoding images 256/50000") and decoding[-1].startswith("decoding images 50000/50000")
    assert len(decoding) == 2 and "1000/s" in decoding[-1]  # the first and the last, nothing between
