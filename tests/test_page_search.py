"""AppTest of pages/search.py (through app.py): a study made by the test, errors, workers, loading the best."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from streamlit.testing.v1 import AppTest

from core.cli import build_parser, tune_request
from core.search.study import prepare_study
from tests.apphelpers import metrics, texts

REPO = Path(__file__).resolve().parent.parent
TINY_ARGS = [
    "--backbone", "densenet121", "--weights", "none", "--remove-blocks", "3", "--image-size", "32",
    "--epochs", "3", "--val-fraction", "0.25",
]  # fmt: skip
DIST = {
    "optimizer": optuna.distributions.CategoricalDistribution(
        ["sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam"]
    ),
    "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
    "dropout": optuna.distributions.FloatDistribution(0.0, 0.9),
}


def make_study(data: Path, artifacts: Path, name: str = "demo", trials: int = 6) -> optuna.Study:
    """A study created the way the CLI creates one, holding hand-made trials (no training)."""
    args = build_parser().parse_args(
        [
            "tune",
            "--data",
            str(data),
            "--study",
            name,
            "--artifacts",
            str(artifacts),
            "--trials",
            str(trials),
            *TINY_ARGS,
        ]
    )
    study, _, _ = prepare_study(tune_request(args))
    rows = [("adam", 1e-3, 0.1, 0.80, 0.78), ("nadam", 3e-3, 0.5, 0.90, 0.88), ("sgd", 1e-2, 0.2, 0.70, 0.66)]
    for i, (opt, lr, dropout, val, test) in enumerate(rows):
        study.add_trial(
            create_trial(
                params={"optimizer": opt, "lr": lr, "dropout": dropout}, distributions=DIST, value=val,
                intermediate_values={1: val - 0.2, 2: val - 0.1, 3: val},
                user_attrs={"test_accuracy": test, "run_id": f"run{i}"},
            )
        )  # fmt: skip
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED, params={"optimizer": "adagrad", "lr": 1e-5, "dropout": 0.0}, distributions=DIST,
            intermediate_values={1: 0.3, 2: 0.31}, user_attrs={"prune_reason": "pruned after epoch 2"},
        )
    )  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "the disk is full."}))
    return study


def open_page(data: Path, artifacts: Path, **state) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["data_root"] = str(data)
    at.session_state["backbone"] = "densenet121"
    at.session_state["weights"] = "none"
    at.session_state["image_size"] = 32
    at.session_state["seed"] = 0
    at.session_state["artifacts"] = str(artifacts)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page("pages/search.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_exit(pid: int, timeout: float = 120.0) -> None:
    """Wait for a worker the page started (our child) to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            return
        if done:
            return
        time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    raise AssertionError(f"the worker {pid} did not finish in {timeout:.0f} s")


def last_json_line(log: Path) -> dict:
    return json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])


@pytest.fixture()
def demo(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, optuna.Study]:
    artifacts = tmp_path / "artifacts"
    return artifacts, make_study(tiny_dataset, artifacts)


def table(at: AppTest, column: str):
    """The page's dataframe holding ``column``, and its column config (headers, tooltips, formats)."""
    df = next(d for d in at.dataframe if column in d.value.columns)
    return df.value, json.loads(df.proto.columns or "{}")


def test_page_shows_the_study(tiny_dataset: Path, demo) -> None:
    artifacts, _ = demo
    at = open_page(tiny_dataset, artifacts)
    assert at.selectbox(key="search_study_pick").value == "demo"
    m = metrics(at)  # the summary agrees with the counts and the target
    assert (m["finished"], m["complete"], m["pruned"], m["failed"], m["running"]) == ("4 of 6", "3", "1", "1", "0")
    assert m["best val accuracy"] == "0.900" and m["its test accuracy"] == "0.880"  # 3 decimals, as everywhere
    assert "4 of 6 trials finished" in " ".join(str(p.proto.text) for p in at.get("progress"))
    text = texts(at)
    assert (
        "Best trial 1" in text
        and "Optimizer nadam · Learning rate 3.0e-03 · Dropout 0.5" in text
        and "run `run1`" in text
    )
    # the CLI's defaults, named: flip on cached features, test-time flip, 3 seeds per trial
    assert "phase head · 3 epochs · flip augmentation · test-time flip · 3 seed(s) per trial" in text
    trials, config = table(at, "state")
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert "the disk is full." in set(trials["reason"])
    assert config["value"]["label"] == "Val accuracy" and config["test_accuracy"]["label"] == "Test accuracy"
    assert list(trials["value"]) == ["0.800", "0.900", "0.700", "–", "–"]  # pruned and failed: a dash, never None
    assert not trials[["reason", "optimizer", "run_id" if "run_id" in trials else "reason"]].isna().any().any()
    assert config["lr"]["label"] == "Learning rate" and config["lr"]["help"].startswith(
        "lr: "
    )  # technical name in the tooltip
    assert config["optimizer"]["label"] == "Optimizer" and config["host"]["label"] == "Machine"
    reference, ref_config = table(at, "accuracy")
    assert len(reference) == 7 and reference.iloc[0].tolist() == ["Nadam", 0.952]  # one row per optimizer
    assert reference["optimizer"].is_unique
    assert ref_config["accuracy"]["type_config"]["format"] == "%.3f"
    assert "the study: best trial per optimizer (selected on test)" in text and "study's reported figures" in text
    assert (
        "your search: best trial per optimizer" in text and "reference study" not in text and "this study" not in text
    )
    ours = next(
        d.value for d in at.dataframe if list(d.value.columns) == ["optimizer", "value", "test_accuracy", "number"]
    )
    assert ours.iloc[0]["optimizer"] == "nadam" and len(ours) == 3
    assert len(at.main.dataframe) == 4  # trials, reference, per-optimizer, and the studies under Advanced
    # charts: history (whole-number trial ticks), learning curves, parallel coordinates, slices; no importances
    # from 3 trials, and the page says why before
    charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(charts) == 4
    axis = charts[0]["layer"][0]["encoding"]["x"]["axis"]
    assert axis["tickMinStep"] == 1 and axis["format"] == "d"
    assert "drawn from 10 finished trials on" in text and "Your search has 3." in text


def test_page_puts_storage_workers_and_dashboard_under_advanced(tiny_dataset: Path, demo) -> None:
    artifacts, _ = demo
    at = open_page(tiny_dataset, artifacts)
    (advanced,) = [e for e in at.expander if e.label.startswith("Advanced")]
    assert advanced.text_input(key="search_storage") is not None
    assert [b.label for b in advanced.button] == ["Start a worker", "Stop workers"]
    url = f"sqlite:///{(artifacts / 'studies' / 'studies.db').resolve()}"
    assert [c.value for c in advanced.code] == [f"optuna-dashboard {url}"]
    assert "0 worker(s) of this app running." in "\n".join(c.value for c in advanced.caption)
    # the answer comes first: the summary, the best trial and the trials are drawn before the expander
    last = list(at.main.children.values())[-1]
    assert getattr(last, "label", "").startswith("Advanced"), last


def test_importances_from_ten_finished_trials(tiny_dataset: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    study = make_study(tiny_dataset, artifacts, trials=12)
    for i in range(7):  # 3 + 7 = 10 complete trials
        study.add_trial(create_trial(params={"optimizer": "adam", "lr": 10 ** -(2 + i / 3), "dropout": i / 10}, distributions=DIST,
                                     value=0.5 + i / 50, user_attrs={"test_accuracy": 0.5, "run_id": f"x{i}"}))  # fmt: skip
    at = open_page(tiny_dataset, artifacts)
    assert len(at.get("vega_lite_chart")) == 5 and "Your search has 10." in texts(at)


def test_load_best_config_goes_to_finetune(tiny_dataset: Path, demo) -> None:
    artifacts, _ = demo
    at = open_page(tiny_dataset, artifacts)
    at.button(key="search_load_best").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value.startswith("0")  # the Fine-tune page
    assert at.session_state["finetune_lr"] == 3e-3 and at.session_state["finetune_optimizer"] == "nadam"


def test_bad_storage_is_one_sentence(tiny_dataset: Path, tmp_path: Path) -> None:
    at = open_page(tiny_dataset, tmp_path / "a", search_storage="/no/such/folder/studies.db")
    assert len(at.error) == 1 and "does not exist" in at.error[0].value
    assert "\n" not in at.error[0].value and not at.metric


def test_new_study_with_everything_fixed_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "a"
    at = open_page(tiny_dataset, artifacts)
    assert at.selectbox(key="search_study_pick").value == "+ New search…"  # no study yet
    at.text_input(key="search_new_name").input("all-fixed")
    for p in ("optimizer", "lr", "weight_decay", "momentum", "dropout", "batch_size", "batch_norm"):
        at.checkbox(key=f"search_fix_{p}").check()
    at.button(key="search_start").click().run()
    assert not at.exception
    assert any("Nothing is left to search" in e.value for e in at.error), [e.value for e in at.error]
    assert not (artifacts / "studies" / "all-fixed.pids").exists()  # no worker was started


def test_start_worker_runs_in_the_background(tiny_dataset: Path, demo) -> None:
    """A worker on a study that already holds its trials: launched detached, it finishes at once."""
    artifacts, _ = demo
    at = open_page(tiny_dataset, artifacts)
    at.number_input(key="search_more_trials").set_value(4)
    at.button(key="search_add_worker").click().run()
    assert not at.exception, [e.value for e in at.exception]
    pids = (artifacts / "studies" / "demo.pids").read_text().split()
    assert len(pids) == 1
    wait_exit(int(pids[0]))
    report = last_json_line(artifacts / "studies" / "demo.log")
    assert report["n_trials_complete"] == 3 and report["n_trials_pruned"] == 1 and report["worker"]["complete"] == 0
    assert report["best_value"] == 0.9


def test_a_best_run_trained_elsewhere_says_where_and_trains_here_under_its_id(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from core.config import RunConfig
    from core.training.identity import prepare
    from ui.resources import _worker

    here = tmp_path / "artifacts-here"
    study = make_study(tiny_dataset, tmp_path / "artifacts-elsewhere")
    params = {"optimizer": "adam", "lr": 1e-2, "dropout": 0.1}
    base = study.user_attrs["scenelab"]["base_config"]
    cfg = RunConfig.from_dict({**base, **params})
    run_id = prepare(cfg, tiny_dataset).run_id
    study.add_trial(create_trial(params=params, distributions=DIST, value=0.95, user_attrs={
        "test_accuracy": 0.91, "run_id": run_id, "config": cfg.to_dict(), "host": "machine-b",
        "artifacts": "/srv/machine-b/artifacts", "worker": {"label": "machine-b:4242"},
    }))  # fmt: skip
    # the page of this machine (another artifacts folder) reads the study from the shared storage
    storage = f"sqlite:///{tmp_path / 'artifacts-elsewhere' / 'studies' / 'studies.db'}"
    at = open_page(tiny_dataset, here, search_storage=storage)
    assert "Best trial 5" in texts(at)
    (where,) = [i.value for i in at.info if "Trained on" in i.value]
    assert "**machine-b** (artifacts /srv/machine-b/artifacts)" in where and "not in this machine's artifacts" in where
    at.button(key="search_train_here").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["search_jobs"] == [run_id]  # the same run id: the id is the config's hash
    worker = _worker(str(here))
    deadline = time.monotonic() + 180
    while worker.get(run_id).active:
        assert time.monotonic() < deadline, "the run never finished"
        time.sleep(0.3)
    assert worker.get(run_id).status == "done", worker.get(run_id).error
    at.run()
    assert "Its run is in this machine's artifacts" in texts(at)
    assert [b for b in at.button if b.key == "search_train_here"] == []


def test_new_study_takes_test_time_flip_from_the_sidebar(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from core.search import processes
    from core.search.summaries import load_study, study_settings

    launched: list[list[str]] = []
    monkeypatch.setattr(processes, "launch_worker", lambda argv, artifacts, name: launched.append(argv) or 4242)
    artifacts = tmp_path / "a"
    for tta in (True, False):
        at = open_page(tiny_dataset, artifacts, tta=tta)
        at.selectbox(key="search_study_pick").set_value("+ New search…").run()
        assert f"test-time flip **{'on' if tta else 'off'}**" in texts(at)
        at.text_input(key="search_new_name").input(f"tta-{tta}")
        at.button(key="search_start").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        stored = study_settings(load_study(f"sqlite:///{artifacts / 'studies' / 'studies.db'}", f"tta-{tta}"))
        assert stored["base_config"]["tta"] is tta
        assert launched[-1][launched[-1].index("--tta") + 1] == str(tta).lower()
