"""The study reproduced as a whole: ``python -m core reproduce`` and the Study page, on a tiny dataset.

One real reproduction in each mode (quick: heads on the frozen backbone; faithful: every row fine-tuned;
each row's runs and a 2-trial search, EfficientNet-Lite0 with its ImageNet weights at 32 px) fills an
artifacts folder; the CLI's tables, claims, reports and second (all cached) calls are checked on it, and
the Study page is opened on an empty, a partly filled and that full store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.search.request import config_argv
from core.store.folders import Store
from core.training.train import train
from tests.apphelpers import CORE_REPORTING_IMPORTS
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


ROW_KEYS = {"task", "setting", "key", "mode", "study", "ours", "low", "high", "n", "val", "run_id", "run_ids", "seconds",
            "cached", "reason"}  # fmt: skip
VERDICTS = {"holds here", "not here", "too close to tell"}


@pytest.mark.parametrize("mode", ["quick", "faithful"])
def test_the_table_has_every_row_of_the_study(reproduced, mode: str) -> None:
    _, out, _ = reproduced
    figures = out["modes"][mode]
    rows = figures["rows"]
    assert [r["task"] for r in rows] == ["0", "0", "1", "1", "1", "1", "1", "1", "1", "2", "2", "3", "4", "5"]
    for row in rows:
        assert set(row) == ROW_KEYS and row["mode"] == mode
        assert row["cached"] and row["run_id"] and row["reason"] is None, row
        assert 0.0 <= row["low"] <= row["ours"] <= row["high"] <= 1.0, row  # every figure with its interval
    assert rows[0]["study"] == 0.917 and rows[-1]["study"] == 0.9518 and rows[1]["study"] is None
    assert figures["runs_trained"] > (10 if mode == "quick" else 5)
    assert set(figures["task_seconds"]) == {"0", "1", "2", "3", "4", "5"}  # what each task cost, for BENCHMARKS.md
    claims = figures["claims"]
    assert [c["key"] for c in claims] == ["truncate", "overfit", "augment", "regularise", "search", "finetune"]
    for c in claims:
        assert c["verdict"] in VERDICTS and c["low"] <= c["diff"] <= c["high"], c


def test_faithful_rows_are_other_runs_than_quick_ones(reproduced) -> None:
    _, out, _ = reproduced
    quick = {r["key"]: r["run_id"] for r in out["modes"]["quick"]["rows"]}
    faithful = {r["key"]: r["run_id"] for r in out["modes"]["faithful"]["rows"]}
    assert faithful["t0-head"] == quick["t0-head"]  # the frozen row is the same run in both
    assert all(faithful[k] != quick[k] for k in quick if k != "t0-head")
    assert out["faithful_over_quick"] > 0


def test_the_report_names_every_run(reproduced) -> None:
    artifacts, out, _ = reproduced
    assert out["report"] == "DIR/report-quick" and (artifacts / "report-quick" / "report.md").is_file()
    for mode in ("quick", "faithful"):
        report = artifacts / f"report-{mode}"
        text = (report / "report.md").read_text()
        for row in out["modes"][mode]["rows"]:
            assert f"`{row['run_id']}`" in text
        assert "efficientnet_lite0" in text and "32 px" in text and "imagenet weights" in text
        assert f"Mode **{mode}**" in text and "## The study's conclusions, here" in text
        assert json.loads((report / "rows.json").read_text())["claims"] == out["modes"][mode]["claims"]
        assert (report / "accuracy.svg").read_text().startswith("<svg")
        assert (report / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["quick", "faithful"])
def test_a_second_reproduction_is_all_cached(reproduced, mode: str) -> None:
    _, out, _ = reproduced  # the CLI's call after reproduce() from empty: nothing trained, the same runs
    figures = out["modes"][mode]
    assert figures["second_trained"] == 0 and figures["all_cached_second"]
    assert [r["run_id"] for r in figures["rows"]] == figures["first_run_ids"]


def core_reporting_imports(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``python -m core ARGS`` in a fresh process; its result and the heavy modules (TensorFlow...) it imported."""
    proc = subprocess.run([sys.executable, "-c", CORE_REPORTING_IMPORTS, *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    heavy = [json.loads(line[6:]) for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert len(heavy) == 1, proc.stderr[-2000:]  # the report itself is there: an empty list means something
    return proc, heavy[0]


@pytest.mark.parametrize("mode", ["quick", "faithful"])
def test_cached_answers_never_import_tensorflow(reproduced, tiny_dataset: Path, mode: str) -> None:
    """Everything that only reads the store answers without TensorFlow or Keras: the reproduction with every
    row stored, a stored run through ``train``, the list of runs."""
    artifacts, out, _ = reproduced
    common = ["--data", str(tiny_dataset), "--artifacts", str(artifacts), "--json"]
    proc, heavy = core_reporting_imports("reproduce", *common, *BASE, "--mode", mode)
    assert heavy == []
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    assert [r["run_id"] for r in rows] == out["modes"][mode]["first_run_ids"]  # the same table, read without Keras
    _, heavy = core_reporting_imports("reproduce", *common, *BASE, "--mode", mode, "--estimate")
    assert heavy == []
    stored = Store(artifacts).load_run(rows[2]["run_id"])  # a task 1 row: a cut backbone
    flags = config_argv(RunConfig.from_dict(stored.config["run"]))  # its settings as the CLI's flags
    proc, heavy = core_reporting_imports("train", *common, *flags)
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == [] and answer["cached"] and answer["run_id"] == stored.run_id, answer
    assert answer["test_accuracy"] == stored.metrics["test_accuracy"]
    proc, heavy = core_reporting_imports("runs", "--artifacts", str(artifacts), "--json")
    listed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == [] and listed["count"] == len(Store(artifacts).list_runs()) > 10
    assert stored.run_id in {r["run_id"] for r in listed["runs"]}


def test_describe_builds_once_then_answers_from_its_cache(tmp_path: Path) -> None:
    args = ("describe", "--backbone", "efficientnet_lite0", "--remove-blocks", "2", "--image-size", "32", "--artifacts",
            str(tmp_path), "--json")  # fmt: skip
    first, heavy_first = core_reporting_imports(*args)
    again, heavy_again = core_reporting_imports(*args)
    assert "keras" in heavy_first and heavy_again == []  # counted once with Keras, then read back
    assert json.loads(again.stdout.strip().splitlines()[-1]) == json.loads(first.stdout.strip().splitlines()[-1])
    assert len(list((tmp_path / "describe").glob("*.json"))) == 1


@pytest.mark.parametrize(("extra", "words"), [(["--trials", "-1"], "--trials"), (["--grid-sample", "1"], "--grid-sample"),
                                              (["--image-size", "8"], "(--image-size)"), (["--repeats", "0"], "--repeats"),
                                              (["--mode", "slow"], "--mode")])  # fmt: skip
def test_bad_input_exits_2_with_one_sentence(tiny_dataset: Path, tmp_path: Path, extra, words) -> None:
    proc = reproduce(tiny_dataset, tmp_path, *extra)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and words in err[0], err


# -- the page --------------------------------------------------------------------------------------------------
def study_page(data: Path, artifacts: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    state = {"data_root": str(data), "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 32, "seed": 0,
             "tta": False, "artifacts": str(artifacts), "study_trials": 2, "study_grid": 2, "study_repeats_quick": 1,
             "study_repeats_faithful": 1}  # fmt: skip
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_study_page_on_an_empty_store(tiny_dataset: Path, tmp_path: Path) -> None:
    at = study_page(tiny_dataset, tmp_path / "empty")
    assert at.title[0].value == "The study, reproduced"
    table = at.dataframe[0].value
    assert len(table) == 14
    assert set(table["backbone frozen"]) == set(table["fine-tuned"]) == {"not trained yet"}
    assert table["the study"].iloc[0] == "0.917" and table["page"].iloc[0].startswith("/finetune?")
    assert at.expander[0].label == "**What differs from the study**"
    differs = "\n".join(m.value for m in at.expander[0].markdown)
    assert "Fine-tuned (faithful)" in differs and "frozen" in differs and "32 px" in differs
    assert not at.button(key="study_reproduce").disabled
    claims = at.dataframe[1].value
    assert len(claims) == 6 and set(claims["fine-tuned"]) == {"not measured yet"}


def test_the_study_page_partly_filled(tiny_dataset: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "part"
    record = train(CFG.replace(phase="head", train_per_class=50), tiny_dataset, Store(artifacts)).record
    at = study_page(tiny_dataset, artifacts)
    table = at.dataframe[0].value
    row = table[table["setting"] == "50 images per class"].iloc[0]
    assert row["backbone frozen"].startswith(f"{record.metrics['test_accuracy']:.3f} (")
    assert row["runs"].startswith(record.run_id) and row["fine-tuned"] == "not trained yet"
    # the grid's baseline is that same run (no augmentation, 50 per class): its row counts it
    assert table[table["task"] == "3"].iloc[0]["backbone frozen"] == "1 of 2 runs"
    assert (table["backbone frozen"] == "not trained yet").sum() == 12


def test_the_study_page_on_a_full_store(reproduced, tiny_dataset: Path) -> None:
    artifacts, out, _ = reproduced
    at = study_page(tiny_dataset, artifacts)
    table = at.dataframe[0].value
    for mode, column in (("quick", "backbone frozen"), ("faithful", "fine-tuned")):
        rows = out["modes"][mode]["rows"]
        assert [c.split(" ")[0] for c in table[column]] == [f"{r['ours']:.3f}" for r in rows]  # the stored figures
    assert [ids.split(" · ")[0] for ids in table["runs"]] == [r["run_id"] for r in out["modes"]["quick"]["rows"]]
    assert at.button(key="study_reproduce").disabled  # nothing left to train
    assert "quick: every run stored · faithful: every run stored" in "\n".join(c.value for c in at.caption)
    claims = at.dataframe[1].value
    for mode, column in (("quick", "backbone frozen"), ("faithful", "fine-tuned")):
        assert [v.split(":")[0] for v in claims[column]] == [c["verdict"] for c in out["modes"][mode]["claims"]]


_PAGE_IN_A_FRESH_PROCESS = """
import json, sys
from streamlit.testing.v1 import AppTest
repo, state = sys.argv[1], json.loads(sys.argv[2])
at = AppTest.from_file(repo + "/app.py", default_timeout=120)
for key, value in state.items():
    at.session_state[key] = value
at.run()
print(json.dumps({"exceptions": [str(e.value) for e in at.exception], "frozen": list(at.dataframe[0].value["backbone frozen"]),
                  "heavy": [m for m in ("tensorflow", "keras", "sklearn") if m in sys.modules]}))
"""


def test_the_study_page_reads_a_full_store_without_tensorflow(reproduced, tiny_dataset: Path) -> None:
    """The app's first page, drawn in a fresh process from a full store, never loads TensorFlow or Keras."""
    artifacts, out, _ = reproduced
    state = {"data_root": str(tiny_dataset), "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 32,
             "seed": 0, "tta": False, "artifacts": str(artifacts), "study_trials": 2, "study_grid": 2,
             "study_repeats_quick": 1, "study_repeats_faithful": 1}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _PAGE_IN_A_FRESH_PROCESS, str(REPO), json.dumps(state)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = json.loads(proc.stdout.strip().splitlines()[-1])
    assert page["exceptions"] == [] and page["heavy"] == []
    assert [c.split(" ")[0] for c in page["frozen"]] == [f"{r['ours']:.3f}" for r in out["modes"]["quick"]["rows"]]


def test_the_search_row_is_kept_until_a_trial_lands(reproduced, tiny_dataset: Path, monkeypatch) -> None:
    """Task 5's row is read from its storage once, then from ``studies/.rows/`` until the storage's files change."""
    from core.search import storage
    from core.study import reproduce as rep

    artifacts, out, _ = reproduced
    how = rep.Plan(trials=2, grid_sample=2)
    first = rep.table(CFG, str(tiny_dataset), Store(artifacts), how=how)[-1]
    opened: list[str] = []
    real_open = storage.open_storage
    monkeypatch.setattr(storage, "open_storage", lambda url, **kw: opened.append(url) or real_open(url, **kw))
    again = rep.table(CFG, str(tiny_dataset), Store(artifacts), how=how)[-1]
    assert opened == [] and again == first and again.ours == out["modes"]["quick"]["rows"][-1]["ours"]
    assert again.figures["test"] == first.figures["test"]  # the claims' figure comes back too
    db = next((artifacts / "studies").glob("*.db"))
    os.utime(db, ns=(db.stat().st_atime_ns, db.stat().st_mtime_ns + 1_000_000))  # as a new trial would
    assert rep.table(CFG, str(tiny_dataset), Store(artifacts), how=how)[-1] == first and len(opened) == 1
