"""Wrong results and lost intentions found by trying SceneLab as a demanding user (issue 15).

Each test failed on the code before its fix: ``--force`` kept the old run, a NaN loss was stored as a result,
a Train pressed right after Cancel was lost, bad seeds and class counts were tracebacks, messages quoted
another value than the one given.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import SEED_MAX, RunConfig
from core.errors import ConfigError
from core.store.folders import Store
from core.training.fit import TrainingDiverged
from core.training.train import train
from core.worker import Worker
from tests.test_interrupts import _env, kill_when

REPO = Path(__file__).resolve().parent.parent
TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=2, batch_size=8,
                 val_fraction=0.25)  # fmt: skip


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=env or _env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def train_args(data: Path, artifacts: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--backbone", "densenet121", "--weights", "none", "--remove-blocks", "3",
            "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--artifacts", str(artifacts), "--json", *extra]


# -- 1: train --force ---------------------------------------------------------------------------------------------
def test_force_replaces_the_stored_run(tiny_dataset: Path, tmp_path: Path) -> None:
    runs = []
    for i in range(3):
        proc = cli(*train_args(tiny_dataset, tmp_path, *(["--force"] if i else [])))
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        time.sleep(1.1)  # a new `created` second for each run
    assert len({r["run_id"] for r in runs}) == 1 and not any(r["cached"] for r in runs)
    store = Store(tmp_path)
    stored = store.load_run(runs[0]["run_id"])
    assert stored is not None and stored.metrics["seconds"] == runs[-1]["seconds"]  # the newest is what is stored
    assert len({r["seconds"] for r in runs}) == 3
    assert not list(store.runs_dir.glob(".replaced-*")) and not list(store.runs_dir.glob(".tmp-*"))


@pytest.mark.parametrize("point", ["write", "replace"])
def test_a_killed_force_keeps_the_old_run(tiny_dataset: Path, tmp_path: Path, point: str) -> None:
    """Killed while writing the new run, or between the old run's move aside and the new one's rename in:
    the old run is there afterwards (at once, or after the clean-up every store access runs)."""
    first = cli(*train_args(tiny_dataset, tmp_path))
    record = json.loads(first.stdout.strip().splitlines()[-1])
    before = (Path(record["path"]) / "config.json").read_text()
    kill_when([sys.executable, "-m", "core", *train_args(tiny_dataset, tmp_path, "--force")],
              f"scenelab-test: paused at {point}", env=_env(SCENELAB_TEST_PAUSE_AT=point))  # fmt: skip
    store = Store(tmp_path)
    store.clean_stale()
    again = store.load_run(record["run_id"])
    assert again is not None and (again.path / "config.json").read_text() == before
    assert not list(store.runs_dir.glob(".replaced-*"))


# -- 5: a loss that stops being a number ---------------------------------------------------------------------------
def test_a_diverging_run_is_not_stored(tiny_dataset: Path, store: Store) -> None:
    cfg = TINY.replace(optimizer="sgd", lr=10.0, weight_decay=1e6, epochs=4)
    with pytest.raises(TrainingDiverged, match="NaN or infinite.*nothing was saved"):
        train(cfg, tiny_dataset, store)
    assert store.list_runs() == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_settings_are_refused(tiny_dataset: Path, tmp_path: Path, value: str) -> None:
    for option in ("--weight-decay", "--lr", "--dropout", "--aug-zoom"):
        proc = cli(*train_args(tiny_dataset, tmp_path, f"{option}={value}"))
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and option in err[0] and value in err[0].lower(), (option, err)
    assert not (tmp_path / "runs").exists()


# -- 10: Cancel, then Train at once -----------------------------------------------------------------------------------
def test_train_right_after_cancel_starts_a_new_job(tiny_dataset: Path, store: Store) -> None:
    worker = Worker(store)
    cfg = TINY.replace(epochs=100_000)  # far longer than the test: only a cancel ends it
    job = worker.submit(cfg, tiny_dataset)
    deadline = time.monotonic() + 120
    while job.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.cancel(job.id)
    again = worker.submit(cfg, tiny_dataset)  # pressed within the second
    assert again is not job and again.status == "queued"
    assert worker.wait(job.id, timeout=5) is again  # the id now follows the new job
    worker.cancel(again.id)
    assert worker.wait(again.id, timeout=120).status == "cancelled"


# -- 12, 13: one sentence that names the option and quotes the value given -------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seed", "-1"], f"Seed (--seed) must be between 0 and {SEED_MAX}; received -1."),
        (["--seed", str(SEED_MAX + 1)], f"received {SEED_MAX + 1}."),
        (["--full-epochs", "0", "--phase", "head+full"], "(--full-epochs) must be at least 1; received 0."),
        (["--full-lr", "0", "--phase", "head+full"], "(--full-lr) must be in (0, 10]; received 0.0."),
        (["--epochs", "0"], "(--epochs) must be at least 1; received 0."),
    ],
)
def test_bad_values_name_the_option_and_quote_the_value(tiny_dataset: Path, tmp_path: Path, args, words) -> None:
    proc = cli(*train_args(tiny_dataset, tmp_path, *args))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and words in err[0], err


def test_describe_with_no_classes_is_one_sentence() -> None:
    proc = cli("describe", "--classes", "0")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "--classes" in err[0] and "received 0" in err[0], err


def test_one_seed_range_everywhere() -> None:
    RunConfig(seed=SEED_MAX).validate()
    with pytest.raises(ConfigError, match="Seed"):
        RunConfig(seed=SEED_MAX + 1).validate()
    from core.config import RUN_SETTINGS

    assert RUN_SETTINGS["seed"].high == SEED_MAX == 2**32 - 1


# -- the Runs page (items 2 and 3) ------------------------------------------------------------------------
def _runs_page(data: Path, artifacts: Path, selected: list[str]):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    for key, value in {"data_root": str(data), "backbone": "densenet121", "weights": "none", "image_size": 32,
                       "seed": 0, "artifacts": str(artifacts), "runs_selected": selected}.items():  # fmt: skip
        at.session_state[key] = value
    at.switch_page("pages/runs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown_runs(at) -> list[str]:
    """The run ids of the 'Selected runs' panels (their 'Open in' buttons)."""
    return [b.key.removeprefix("runs_open_") for b in at.button if (b.key or "").startswith("runs_open_")]


def test_a_selection_follows_its_run_when_a_new_run_arrives(tiny_dataset: Path, tmp_path: Path) -> None:
    old = train(TINY, tiny_dataset, Store(tmp_path)).record
    at = _runs_page(tiny_dataset, tmp_path, [])
    at.session_state[at.data_editor[0].key] = {"edited_rows": {0: {"select": True}}, "added_rows": [],
                                               "deleted_rows": []}  # the user ticks the top row  # fmt: skip
    at.run()
    assert _shown_runs(at) == [old.run_id]
    time.sleep(0.02)
    new = train(TINY.replace(seed=1), tiny_dataset, Store(tmp_path)).record  # another process's run, now the top row
    at.run()  # the user presses r
    assert not at.exception, [e.value for e in at.exception]
    table = at.data_editor[0].value
    assert list(table["run_id"]) == [new.run_id, old.run_id]  # the new run took the top row...
    assert _shown_runs(at) == [old.run_id]  # ...and the tick stayed on the run the user picked
    assert list(table.loc[table["select"], "run_id"]) == [old.run_id]


def test_open_in_its_page_opens_that_very_run(tiny_dataset: Path, tmp_path: Path) -> None:
    record = train(TINY.replace(seed=3_000_000_000), tiny_dataset, Store(tmp_path)).record  # a seed >= 2^31
    train(TINY, tiny_dataset, Store(tmp_path))  # the run the page used to open instead (seed 0)
    at = _runs_page(tiny_dataset, tmp_path, [record.run_id])
    at.button(key=f"runs_open_{record.run_id}").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    captions = "\n".join(c.value for c in at.caption)
    assert f"run `{record.run_id}`" in captions, captions[:2000]
    assert at.session_state["seed"] == 3_000_000_000
    assert not [w.value for w in at.warning if "nearest run" in w.value]
