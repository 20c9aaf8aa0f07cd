"""The search space file and the study's storage are checked before any study exists (issue 15: 6, 7, 8, 11).

Everything here fails before TensorFlow is imported, so it runs in-process and in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from core.cli import build_parser, tune_request
from core.cli import main as cli_main
from core.errors import ConfigError
from core.search import space as space_mod
from core.search.study import prepare_study

TINY_ARGS = [
    "--backbone", "densenet121", "--weights", "none", "--remove-blocks", "3", "--image-size", "32",
    "--epochs", "3", "--val-fraction", "0.25",
]  # fmt: skip


def request(data: Path, tmp: Path, *extra: str):
    args = ["tune", "--data", str(data), "--study", "s", "--storage", f"sqlite:///{tmp / 's.db'}", "--artifacts", str(tmp)]
    return tune_request(build_parser().parse_args([*args, *TINY_ARGS, *extra]))


def write_space(tmp: Path, text: str) -> str:
    path = tmp / "space.json"
    path.write_text(text)
    return str(path)


def no_study(tmp: Path) -> bool:
    db = tmp / "s.db"
    return not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


def cli_error(argv: list[str], capsys) -> str:
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("scenelab: "), err
    return err


# -- 6: the exact creating command resumes ----------------------------------------------------------------
def test_the_creating_command_with_space_and_a_fixed_parameter_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, json.dumps({"lr": {"low": 1e-4, "high": 1e-2}, "batch_size": [8, 16]}))
    command = ("--optimizer", "sgd", "--space", space)
    study, settings, _ = prepare_study(request(tiny_dataset, tmp_path, *command))
    assert settings["fixed"]["optimizer"] == "sgd" and "momentum" in settings["space"]
    again, resumed, _ = prepare_study(request(tiny_dataset, tmp_path, *command))
    assert again.study_name == study.study_name and resumed["space"] == settings["space"]
    # a space file that really differs is still refused
    other = write_space(tmp_path, json.dumps({"lr": {"low": 1e-3, "high": 1e-2}}))
    with pytest.raises(ConfigError, match="another search space"):
        prepare_study(request(tiny_dataset, tmp_path, "--optimizer", "sgd", "--space", other))


# -- 7: a parameter both in the space file and fixed on the command line -----------------------------------
def test_a_parameter_in_the_space_file_and_fixed_on_the_command_line_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, json.dumps({"lr": {"low": 1e-4, "high": 1e-2}}))
    with pytest.raises(ConfigError, match=r"'lr'.*--lr") as err:
        prepare_study(request(tiny_dataset, tmp_path, "--lr", "0.05", "--space", space))
    assert "\n" not in str(err.value) and str(err.value).count(". ") == 0
    assert no_study(tmp_path)
    # null in the file (not searched) and a fixed value agree: accepted
    fine = write_space(tmp_path, json.dumps({"lr": None, "dropout": {"high": 0.5}}))
    _, settings, _ = prepare_study(request(tiny_dataset, tmp_path, "--lr", "0.05", "--space", fine))
    assert settings["fixed"]["lr"] == 0.05 and "lr" not in settings["space"]


# -- 8: the whole space file is checked when read --------------------------------------------------------
SPACE_MISTAKES = [
    ('{"epochs": {"type": "float", "low": 5, "high": 20}}', "epochs", "whole number"),
    ('{"epochs": {"low": 5.5, "high": 20}}', "epochs", "whole number"),
    ('{"batch_size": {"type": "float", "low": 8, "high": 64}}', "batch_size", "whole number"),
    ('{"dropout": {"type": "float", "low": 0, "high": 0.5, "step": 0}}', "dropout", "step"),
    ('{"epochs": {"type": "int", "low": 5, "high": 20, "step": -1}}', "epochs", "step"),
    ('{"epochs": {"type": "int", "low": 5, "high": 20, "step": 2.5}}', "epochs", "step"),
    ('{"batch_size": [32, "64"]}', "batch_size", "'64'"),
    ('{"batch_size": "32"}', "batch_size", "'32'"),
    ('{"batch_norm": [0, 1]}', "batch_norm", "true or false"),
    ('{"optimizer": ["adam", "lion"]}', "optimizer", "'lion'"),
    ('{"dropout": {"type": "float", "low": NaN, "high": 0.5}}', "dropout", "finite"),
    ('{"weight_decay": {"low": 1e-5, "high": Infinity}}', "weight_decay", "finite"),
    ('{"weight_decay": Infinity}', "weight_decay", "finite"),
    ('{"lr": [0.001, NaN]}', "lr", "finite"),
    ('{"dropout": {"type": "float", "low": 0, "high": 1.5}}', "dropout", "1.5"),
    ('{"lr": {"low": 1e-4, "high": 20}}', "lr", "20"),
    ('{"epochs": {"type": "int", "low": 0, "high": 5}}', "epochs", "received 0"),
    ('{"batch_size": [0, 32]}', "batch_size", "received 0"),
    ('{"momentum": 1.2}', "momentum", "1.2"),
]


@pytest.mark.parametrize(("text", "key", "words"), SPACE_MISTAKES)
def test_space_file_mistakes_are_one_sentence_naming_the_key_before_any_study(
    text: str, key: str, words: str, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    space = write_space(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        space_mod.read_space_file(space)
    message = str(err.value)
    assert f"'{key}'" in message and words in message and "\n" not in message, message
    argv = ["tune", "--data", str(tiny_dataset), "--study", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}",
            "--artifacts", str(tmp_path), *TINY_ARGS, "--space", space]  # fmt: skip
    assert f"'{key}'" in cli_error(argv, capsys)
    assert no_study(tmp_path)


def test_a_good_space_file_reads_as_written(tmp_path: Path) -> None:
    data = {
        "lr": {"low": 1e-4, "high": 1e-2},
        "batch_size": [32, 64],
        "batch_norm": False,
        "momentum": None,
        "epochs": {"type": "int", "low": 10, "high": 40, "step": 5},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "full_epochs": [None, 5],
    }
    assert space_mod.read_space_file(write_space(tmp_path, json.dumps(data))) == data
    space = space_mod.build_space(data, {})
    assert space["epochs"] == {"type": "int", "low": 10, "high": 40, "log": False, "step": 5}


# -- 11: an in-memory SQLite storage vanishes with the process ----------------------------------------------
@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_storage_is_refused(url: str, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    argv = ["tune", "--data", str(tiny_dataset), "--study", "s", "--storage", url, "--artifacts", str(tmp_path), *TINY_ARGS]
    err = cli_error(argv, capsys)
    assert "memory" in err and "sqlite:///" in err
