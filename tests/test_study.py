"""The study reproduced as a whole: ``python -m core reproduce`` and the Study page, on a tiny dataset.

One real reproduction (every row's runs and a 2-trial search, EfficientNet-Lite0 with its ImageNet weights
at 32 px) fills an artifacts folder; the CLI's table, report and second (all cached) call are checked on it,
and the Study page is opened on an empty, a partly filled and that full store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.store import Store
from core.train import train
from tests.test_interrupts import _env

REPO = Path(__file__).resolve().parent.parent
BASE = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "32", "--trials", "2", "--grid-sample", "2"]
CFG = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=32)


def reproduce(data: Path, artifacts: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "reproduce", "--data", str(data), "--artifacts", str(artifacts),
                           *BASE, "--json", *extra], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def reproduced(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """bench/reproduce.py in its tiny mode: reproduce() from an empty artifacts folder, then the CLI again
    (``--json --report``) in a fresh process; its figures hold both passes."""
    artifacts = tmp_path_factory.mktemp("reproduced") / "artifacts"
    proc = subprocess.run([sys.executable, "-m", "bench.reproduce", "--tiny", "--data", str(tiny_dataset), "--keep",
                           str(artifacts)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) >= 3  # the bench's table before its JSON line
    return artifacts, json.loads(proc.stdout.strip().splitlines()[-1]), artifacts / "report"


def test_the_table_has_every_row_of_the_study(reproduced) -> None:
    _, out, _ = reproduced
    rows = out["rows"]
    assert [r["task"] for r in rows] == ["0", "0", "1", "1", "1", "1", "1", "1", "1", "2", "2", "3", "4", "5"]
    for row in rows:
        assert set(row) == {"task", "setting", "study", "ours", "val", "run_id", "seconds", "cached"}
        assert row["cached"] and row["run_id"] and 0.0 <= row["ours"] <= 1.0, row
    assert rows[0]["study"] == 0.917 and rows[-1]["study"] == 0.9518 and rows[1]["study"] is None
    assert out["runs_trained"] > 10
    assert set(out["task_seconds"]) == {"0", "1", "2", "3", "4", "5"}  # what each task cost, for BENCHMARKS.md


def test_the_report_names_every_run(reproduced) -> None:
    _, out, report = reproduced
    assert Path(out["report"]) == report.resolve()
    text = (report / "report.md").read_text()
    for row in out["rows"]:
        assert f"`{row['run_id']}`" in text
    assert "efficientnet_lite0" in text and "32 px" in text and "imagenet weights" in text
    assert (report / "accuracy.svg").read_text().startswith("<svg")
    assert (report / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_reproduction_is_all_cached(reproduced) -> None:
    _, out, _ = reproduced  # the CLI's call after reproduce() from empty: nothing trained, the same runs
    assert out["second_trained"] == 0 and out["all_cached_second"]
    assert [r["run_id"] for r in out["rows"]] == out["first_run_ids"]


@pytest.mark.parametrize(("extra", "words"), [(["--trials", "-1"], "--trials"), (["--grid-sample", "1"], "--grid-sample"),
                                              (["--image-size", "8"], "(--image-size)")])  # fmt: skip
def test_bad_input_exits_2_with_one_sentence(tiny_dataset: Path, tmp_path: Path, extra, words) -> None:
    proc = reproduce(tiny_dataset, tmp_path, *extra)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and words in err[0], err


# -- the page --------------------------------------------------------------------------------------------------
def study_page(data: Path, artifacts: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    state = {"data_root": str(data), "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 32, "seed": 0,
             "tta": False, "artifacts": str(artifacts), "study_trials": 2, "study_grid": 2}  # fmt: skip
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_study_page_on_an_empty_store(tiny_dataset: Path, tmp_path: Path) -> None:
    at = study_page(tiny_dataset, tmp_path / "empty")
    assert at.title[0].value == "The study, reproduced"
    table = at.dataframe[0].value
    assert len(table) == 14 and set(table["status"]) == {"not trained yet"}
    assert table["the study"].iloc[0] == "0.917" and table["ours (test)"].iloc[0] == "–" and table["page"].iloc[0].startswith("/finetune?")
    assert "What differs from the study" in at.info[0].value
    assert not at.button(key="study_reproduce").disabled


def test_the_study_page_partly_filled(tiny_dataset: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "part"
    record = train(CFG.replace(phase="head", train_per_class=50), tiny_dataset, Store(artifacts)).record
    at = study_page(tiny_dataset, artifacts)
    table = at.dataframe[0].value
    row = table[table["setting"] == "50 images per class"].iloc[0]
    assert row["status"] == "stored" and row["run"] == record.run_id
    assert row["ours (test)"] == f"{record.metrics['test_accuracy']:.3f}"
    # the grid's baseline is that same run (no augmentation, 50 per class): its row counts it
    assert table[table["task"] == "3"].iloc[0]["status"] == "1 of 2"
    assert (table["status"] == "not trained yet").sum() == 12


def test_the_study_page_on_a_full_store(reproduced, tiny_dataset: Path) -> None:
    artifacts, out, _ = reproduced
    at = study_page(tiny_dataset, artifacts)
    table = at.dataframe[0].value
    assert set(table["status"]) == {"stored"}
    assert list(table["run"]) == [r["run_id"] for r in out["rows"]]
    assert at.button(key="study_reproduce").disabled  # nothing left to train
    assert "14 of 14 rows stored" in "\n".join(c.value for c in at.caption)
