"""core.tuning: the search space, the objective (FixedTrial), pruning, storages, workers and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core.cli import main as cli_main
from core.cli import tune_request
from core.config import RunConfig
from core.errors import ConfigError
from core.search import objective as objective_mod
from core.search import samplers as samplers_mod
from core.search import space as space_mod
from core.search import summaries as summaries_mod
from core.search import workers as workers_mod
from core.search.study import prepare_study

REPO = Path(__file__).resolve().parent.parent
TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=3, batch_size=8, val_fraction=0.25)
TINY_ARGS = [
    "--backbone", "densenet121", "--weights", "none", "--remove-blocks", "3", "--image-size", "32",
    "--epochs", "3", "--val-fraction", "0.25",
]  # fmt: skip
FIXED = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-4, "dropout": 0.1, "batch_size": 8, "batch_norm": False}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune_cmd(data: Path, study: str, storage: str, artifacts: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "core", "tune", "--data", str(data), "--study", study, "--storage", storage,
        "--artifacts", str(artifacts), *TINY_ARGS, *(extra if "--repeats" in extra else ("--repeats", "1", *extra)),
        "--json",
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# -- the search space ------------------------------------------------------------------------------------
def test_default_space_is_the_studys() -> None:
    space = space_mod.build_space()
    assert list(space) == ["optimizer", "lr", "weight_decay", "momentum", "dropout", "batch_size", "batch_norm"]
    assert space["optimizer"]["choices"] == ["sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam"]
    assert space["lr"] == {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}
    assert space["weight_decay"] == {"type": "float", "low": 1e-5, "high": 0.3, "log": True}
    assert space["momentum"]["if"] == {"optimizer": ["sgd", "rmsprop"]}
    assert space["batch_size"]["choices"] == [8, 16, 32, 64, 128]
    assert space["batch_norm"]["choices"] == [False, True]


def test_space_narrowing_fixing_and_conditions() -> None:
    fixed: dict = {"optimizer": "adam"}
    space = space_mod.build_space({"lr": {"low": 1e-4, "high": 1e-2}, "batch_size": [32, 64], "dropout": 0.5}, fixed)
    assert "optimizer" not in space and "momentum" not in space  # adam has no momentum to search
    assert space["lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert space["batch_size"]["choices"] == [32, 64]
    assert fixed == {"optimizer": "adam", "dropout": 0.5}
    # sgd fixed: momentum is searched unconditionally; a non-default parameter can be searched
    space = space_mod.build_space({"epochs": {"type": "int", "low": 5, "high": 20}}, {"optimizer": "sgd"})
    assert "if" not in space["momentum"] and space["epochs"]["type"] == "int"
    # momentum stays conditional when the optimizer is narrowed to choices that include sgd
    assert space_mod.build_space({"optimizer": ["sgd", "adam"]})["momentum"]["if"] == {"optimizer": ["sgd", "rmsprop"]}
    assert "momentum" not in space_mod.build_space({"optimizer": ["adam", "nadam"]})


@pytest.mark.parametrize(
    ("overrides", "fixed", "words"),
    [
        (None, dict.fromkeys(["optimizer", "lr", "weight_decay", "momentum", "dropout", "batch_size", "batch_norm"], 1), "Nothing is left to search"),
        ({"colour": [1, 2]}, None, "Unknown search parameter"),
        ({"lr": {"low": 1e-1, "high": 1e-3}}, None, "must not exceed"),
        ({"weight_decay": {"type": "float", "low": 0, "high": 1, "log": True}}, None, "log range"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, None, r"must be in \(0, 10\]; received 0"),
        ({"dropout": {"type": "bogus"}}, None, "unknown type"),
    ],
)
def test_bad_spaces_raise_one_sentence(overrides, fixed, words) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        space_mod.build_space(overrides, fixed)
    assert "\n" not in str(err.value)


def test_suggest_draws_momentum_only_for_sgd_and_rmsprop() -> None:
    space = space_mod.build_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(25):
        params = space_mod.suggest(study.ask(), space)
        assert ("momentum" in params) == (params["optimizer"] in ("sgd", "rmsprop"))
        assert 1e-5 <= params["lr"] <= 1e-1 and params["batch_size"] in (8, 16, 32, 64, 128)
        RunConfig().replace(**params).validate()


def test_per_trial_seed_sampler_is_reproducible_and_distinct() -> None:
    space = space_mod.build_space()

    def draw(n: int) -> list[dict]:
        study = optuna.create_study(sampler=samplers_mod.make_sampler("random", 7))
        return [space_mod.suggest(study.ask(), space) for _ in range(n)]

    first, second = draw(4), draw(4)
    assert first == second  # the same seed and trial numbers draw the same
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 4  # never the same draw twice


# -- the objective ------------------------------------------------------------------------------------------
def test_objective_with_fixed_trial(tiny_dataset: Path, store) -> None:
    objective = objective_mod.Objective(TINY, space_mod.build_space(), tiny_dataset, store)
    trial = optuna.trial.FixedTrial(FIXED)  # adam: no momentum is drawn
    value = objective(trial)
    assert 0.0 <= value <= 1.0
    run_id = trial.user_attrs["run_id"]
    record = store.load_run(run_id)
    assert record is not None and record.metrics["val_accuracy"] == value
    assert trial.user_attrs["test_accuracy"] == record.metrics["test_accuracy"]
    assert trial.user_attrs["cached"] is False and trial.user_attrs["seconds"] > 0
    assert record.config["run"]["optimizer"] == "adam" and record.config["run"]["lr"] == 1e-2
    # the same config again: served from the cache, same value
    again = optuna.trial.FixedTrial(FIXED)
    assert objective(again) == value and again.user_attrs["cached"] is True


def test_a_trial_run_names_its_study_for_the_runs_page(tiny_dataset: Path, store) -> None:
    objective = objective_mod.Objective(TINY, space_mod.build_space(), tiny_dataset, store)
    study = optuna.create_study(study_name="named", direction="maximize")
    study.enqueue_trial(FIXED)
    study.optimize(objective, n_trials=1)
    record = store.load_run(study.trials[0].user_attrs["run_id"])
    assert record is not None and record.config["search_study"] == "named"


def test_repeats_score_the_mean_of_other_seeds(tiny_dataset: Path, store) -> None:
    objective = objective_mod.Objective(TINY, space_mod.build_space(), tiny_dataset, store, repeats=2)
    trial = optuna.trial.FixedTrial(FIXED)
    value = objective(trial)
    vals, tests = trial.user_attrs["val_accuracies"], trial.user_attrs["test_accuracies"]
    assert len(vals) == 2 and value == pytest.approx(sum(vals) / 2)
    main = store.load_run(trial.user_attrs["run_id"])
    assert main.config["run"]["seed"] == TINY.seed and trial.user_attrs["test_accuracy"] == main.metrics["test_accuracy"]
    seeds = sorted(r.config["run"]["seed"] for r in store.list_runs())
    assert seeds == [TINY.seed, TINY.seed + objective_mod.REPEAT_SEED_STEP]  # each repeat is a stored run of its own
    assert tests[1] == next(r for r in store.list_runs() if r.run_id != main.run_id).metrics["test_accuracy"]


def test_resolve_repeats() -> None:
    assert objective_mod.resolve_repeats(None, TINY) == objective_mod.AUTO_REPEATS_CHEAP  # a head on cached features
    assert objective_mod.resolve_repeats("auto", TINY.replace(phase="full")) == 1
    assert objective_mod.resolve_repeats("auto", TINY.replace(augment=TINY.augment.__class__(zoom=0.1))) == 1
    assert objective_mod.resolve_repeats("4", TINY.replace(phase="full")) == 4
    for bad in ("0", "x", "21"):
        with pytest.raises(ConfigError, match="--repeats"):
            objective_mod.resolve_repeats(bad, TINY)


def test_pruning_stops_training_and_stores_nothing(tiny_dataset: Path, store) -> None:
    """ThresholdPruner(lower=1.01) prunes any trial once warm-up ends: deterministic."""
    fixed = {k: v for k, v in FIXED.items() if k != "lr"}
    space = space_mod.build_space({"lr": {"low": 1e-3, "high": 2e-3}}, fixed)
    assert list(space) == ["lr"]
    objective = objective_mod.Objective(TINY.replace(**fixed), space, tiny_dataset, store)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01, n_warmup_steps=2))
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED
    assert sorted(t.intermediate_values) == [1, 2]  # stopped after epoch 2 of 3
    assert "pruned after epoch 2 by the ThresholdPruner" in t.user_attrs["prune_reason"]
    assert store.list_runs() == []  # the cancelled run was not stored
    # a never-pruning pruner completes the same config; then a cached run is pruned by replaying its curve
    study2 = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.0))
    study2.enqueue_trial(t.params)
    study2.optimize(objective, n_trials=1)
    assert study2.trials[0].state == TrialState.COMPLETE and len(study2.trials[0].intermediate_values) == 3
    study.enqueue_trial(t.params)
    study.optimize(objective, n_trials=1)
    assert study.trials[1].state == TrialState.PRUNED and study.trials[1].intermediate_values == {
        k: v for k, v in study2.trials[0].intermediate_values.items() if k <= 2
    }


def test_failing_trial_is_marked_with_its_reason_and_the_study_goes_on(tiny_dataset: Path, store) -> None:
    fixed = dict(FIXED)
    space = space_mod.build_space({"freeze_blocks": [1, 0]}, fixed)
    assert list(space) == ["freeze_blocks"]
    objective = objective_mod.Objective(TINY.replace(phase="full", **fixed), space, tiny_dataset, store)
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    study.enqueue_trial({"freeze_blocks": 1})  # valid alone, but the cut network keeps one block only: the run fails
    study.enqueue_trial({"freeze_blocks": 0})
    mine = workers_mod.run_worker(study, objective, 1)
    failed, done = study.trials
    assert failed.state == TrialState.FAIL and "Frozen first blocks" in failed.user_attrs["fail_reason"]
    assert done.state == TrialState.COMPLETE
    assert mine == {"complete": 1, "pruned": 0, "failed": 1, "surplus": 0}


def test_worker_gives_up_after_failures_in_a_row() -> None:
    study = optuna.create_study(direction="maximize")

    def broken(trial: optuna.Trial) -> float:
        trial.set_user_attr("fail_reason", "the disk is full.")
        raise RuntimeError("boom")

    with pytest.raises(workers_mod.SearchStopped, match="3 trials in a row failed; the last one because: the disk is full."):
        workers_mod.run_worker(study, broken, 5, max_failures=3)


def test_frames_importances_and_best_config(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize", study_name="f")
    assert summaries_mod.importances(study) == {} and summaries_mod.best_config(study) is None
    settings = {"space": space_mod.build_space(), "base_config": TINY.to_dict(), "n_trials": 4}
    study.set_user_attr(summaries_mod.SETTINGS_ATTR, settings)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True), "dropout": optuna.distributions.FloatDistribution(0, 0.9)}
    for i, (lr, dropout, value) in enumerate([(1e-3, 0.1, 0.8), (1e-2, 0.5, 0.9), (1e-4, 0.2, 0.6)]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "dropout": dropout}, distributions=dist, value=value,
                intermediate_values={1: value - 0.1, 2: value}, user_attrs={"test_accuracy": value - 0.05, "run_id": f"r{i}"},
            )
        )  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"lr": 1e-5, "dropout": 0.0}, distributions=dist, intermediate_values={1: 0.2}))
    df = summaries_mod.trials_frame(study)
    assert list(df["state"]) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert {"number", "value", "test_accuracy", "lr", "dropout", "duration_s", "run_id"} <= set(df.columns)
    inter = summaries_mod.intermediate_frame(study)
    assert len(inter) == 7 and set(inter["state"]) == {"COMPLETE", "PRUNED"}
    assert summaries_mod.importances(study) == {}  # 3 trials: fewer than the 10 importances are drawn from
    assert set(summaries_mod.importances(study, min_trials=3)) == {"lr", "dropout"}
    cfg = summaries_mod.best_config(study)
    assert cfg["lr"] == 1e-2 and cfg["dropout"] == 0.5 and cfg["image_size"] == 32
    s = summaries_mod.summary(study)
    assert (s["n_trials_complete"], s["n_trials_pruned"], s["best_value"], s["best_run_id"]) == (3, 1, 0.9, "r1")
    assert [r["study"] for r in summaries_mod.list_studies(f"sqlite:///{tmp_path / 'x.db'}")] == ["f"]
    with pytest.raises(ConfigError, match="There is no study named 'nope'.*known studies: f"):
        summaries_mod.load_study(f"sqlite:///{tmp_path / 'x.db'}", "nope")


# -- the CLI: bad input (in-process: no TensorFlow is imported before these fail) -----------------------------
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--storage", "postgresql://nobody@127.0.0.1:1/x"], "storage postgresql://nobody@127.0.0.1:1/x"),
        (["--storage", "/no/such/folder/s.db"], "does not exist"),
        (["--storage", "notaurl"], "neither a URL"),
        (["--optimizer", "adam", "--lr", "0.01", "--weight-decay", "0.001", "--dropout", "0", "--batch-size", "8", "--batch-norm", "false"], "Nothing is left to search"),
        (["--sampler", "grid"], "invalid choice"),
        (["--trials", "0"], "at least 1"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(extra, words, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    argv = ["tune", "--data", str(tiny_dataset), "--study", "bad", "--artifacts", str(tmp_path), *TINY_ARGS, *extra]
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("scenelab: ") and words in err, err


def test_cli_storage_without_its_driver_says_so(tiny_dataset: Path, tmp_path: Path) -> None:
    """psycopg (requirements.txt) serves postgresql:// URLs; psycopg2 is not installed, so a URL asking for
    it meets the missing-driver path for real."""
    pytest.importorskip("sqlalchemy")
    try:
        import psycopg2  # noqa: F401

        pytest.skip("psycopg2 is installed here")
    except ImportError:
        pass
    proc = subprocess.run(
        tune_cmd(tiny_dataset, "pg", "postgresql+psycopg2://nobody@127.0.0.1:1/x", tmp_path),
        capture_output=True, text=True, env=env(), cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "not installed" in proc.stderr, proc.stderr
    assert "pip install psycopg2-binary" in proc.stderr


def test_joining_with_a_conflicting_option_is_refused(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", "--data", str(tiny_dataset), "--study", "c", "--storage", url, "--artifacts", str(tmp_path)]
    from core.cli import build_parser

    prepare_study(tune_request(build_parser().parse_args([*args, *TINY_ARGS, "--optimizer", "adam"])))
    for extra, words in (
        (["--epochs", "9"], "created with epochs=3, not 9"),
        (["--lr", "0.1"], "searches lr"),
        (["--sampler", "random"], "uses the tpe sampler"),
        (["--repeats", "2"], "trains each trial 3 time(s), not 2"),
    ):
        assert cli_main([*args, *extra]) == 2
        assert words in capsys.readouterr().err
    # joining with no options adopts the stored ones
    study, settings, data = prepare_study(tune_request(build_parser().parse_args(["tune", "--study", "c", "--storage", url])))
    assert settings["base_config"]["optimizer"] == "adam" and "optimizer" not in settings["space"]
    assert settings["repeats"] == objective_mod.AUTO_REPEATS_CHEAP  # auto: its trials train heads on cached features
    assert Path(data) == tiny_dataset.resolve() and settings["base_config"]["image_size"] == 32
