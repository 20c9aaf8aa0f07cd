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
from core.fit import TrainingDiverged
from core.store import Store
from core.train import train
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
