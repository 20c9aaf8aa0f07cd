"""``python -m core best``: the space, the choice on validation alone, the stored winner (run or ensemble),
its reproduction from the stored recipe and its export, on tiny generated data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import entry_config
from core.errors import ConfigError
from core.paths import REPO
from core.search import best
from core.search.best import BEST_SPACE, BEST_STARTS, Candidate, Request, check_best_space, choose

#: a narrowed space for tiny images (the default draws 128-224 px): still every kind of parameter
TINY_SPACE = {
    "image_size": {"type": "categorical", "choices": [32]},
    "trained_blocks": {"type": "categorical", "choices": [1, 2]},
    "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
    "epochs": {"type": "int", "low": 1, "high": 3},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "aug_hflip": {"type": "categorical", "choices": [False, True]},
    "tta": {"type": "categorical", "choices": [False, True]},
}


def test_the_space_and_its_first_trials_are_valid_settings():
    space = check_best_space()
    assert set(space) == set(BEST_SPACE)
    for start in BEST_STARTS:  # the enqueued first trials lie inside the space
        assert set(start) == set(BEST_SPACE)
        for name, value in start.items():
            spec = BEST_SPACE[name]
            assert value in spec["choices"] if spec["type"] == "categorical" else spec["low"] <= value <= spec["high"]
    for name, bad in (("image_size", [16]), ("lr", None), ("aug_hflip", ["yes"]), ("trained_blocks", [5])):
        spec = (
            {"type": "categorical", "choices": bad} if bad is not None else {"type": "float", "low": -1.0, "high": 1.0}
        )
        with pytest.raises(ConfigError):
            check_best_space({name: spec})


def _candidate(run_id: str, probs: list[list[float]], y: list[int], size: int = 160) -> Candidate:
    return Candidate(run_id, np.asarray(probs, dtype="float64"), np.asarray(y), size, 0.0)


def test_choose_takes_an_ensemble_only_when_it_wins_on_validation():
    y = [0, 1, 2, 0]
    a = _candidate("a", [[0.6, 0.4, 0], [0.1, 0.9, 0], [0.6, 0, 0.4], [0.9, 0.1, 0]], y)  # 3/4
    b = _candidate("b", [[0.4, 0.6, 0], [0.2, 0.8, 0], [0, 0.1, 0.9], [0.8, 0.2, 0]], y)  # 3/4, the mean: 4/4
    c = _candidate("c", [[0.4, 0.6, 0], [0.2, 0.8, 0], [0, 0.1, 0.9], [0.8, 0.2, 0]], y, size=224)  # other size
    choice = choose([a, b])
    assert set(choice.run_ids) == {"a", "b"} and choice.val_accuracy == 1.0
    assert choose([a, c]).run_ids in (("a",), ("c",))  # runs at two sizes are never averaged
    worse = _candidate("w", [[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], y)
    assert choose([b, worse]).run_ids == ("b",)  # averaging with a bad run loses: the run alone wins
    with pytest.raises(ConfigError):
        choose([])


@pytest.fixture(scope="module")
def searched(tiny_dataset, tmp_path_factory):
    """Two trials of a narrowed best search on the tiny dataset, and its answer."""
    from core.search.storage import resolve_storage_url
    from core.search.summaries import load_study

    artifacts = tmp_path_factory.mktemp("best-artifacts")
    req = Request(data=str(tiny_dataset), minutes=30, base=entry_config(), artifacts=str(artifacts), trials=2,
                  space=TINY_SPACE)  # fmt: skip
    out = best.run_best(req)
    study = load_study(resolve_storage_url(None, req.artifacts), req.key)
    return req, study, best.Store(req.artifacts), out


class _ValOnly(dict):
    """A run's predictions where reading a test figure fails the test."""

    def __getitem__(self, key):
        if key in ("probs", "y_true", "paths"):
            raise AssertionError(f"the selection read the test figure {key!r}")
        return super().__getitem__(key)


def test_the_choice_never_reads_test_figures(searched, monkeypatch):
    req, study, store, out = searched
    pool = best.candidates(study, store)
    assert len(pool) == 2
    before = choose(pool)
    assert before.run_ids == tuple(out["members"])  # what run_best stored is what the choice gives
    # make every stored test figure adversarial: the runs not chosen perfect on test, the chosen ones always wrong
    kept = {}
    try:
        for c in pool:
            record = store.load_run(c.run_id)
            kept[record.path] = (
                (record.path / "predictions.npz").read_bytes(),
                (record.path / "metrics.json").read_text(),
            )
            preds = dict(np.load(record.path / "predictions.npz"))
            good = c.run_id not in before.run_ids
            preds["probs"] = np.eye(preds["probs"].shape[1], dtype="float32")[
                (preds["y_true"] + (0 if good else 1)) % 3
            ]
            np.savez(record.path / "predictions.npz", **preds)
            metrics = {**record.metrics, "test_accuracy": 1.0 if good else 0.0}
            (record.path / "metrics.json").write_text(json.dumps(metrics))
        original = best.RunRecord.predictions
        with monkeypatch.context() as m:
            m.setattr(best.RunRecord, "predictions", lambda self: _ValOnly(original(self) or {}))
            after = choose(best.candidates(study, store))
    finally:  # the next test reads the true figures
        for path, (preds_bytes, metrics_text) in kept.items():
            (path / "predictions.npz").write_bytes(preds_bytes)
            (path / "metrics.json").write_text(metrics_text)
    assert after == before


def test_the_winner_is_reproduced_from_its_recipe_and_exports_to_plain_keras(searched, tmp_path):
    import keras

    from core.config import RunConfig
    from core.data.arrays import decode_dataset, scan_dataset
    from core.store.folders import Store
    from core.training.ensemble import explained_record, save_ensemble
    from core.training.runs import export_model, load_classifier, summary_row
    from core.training.train import train

    req, study, store, out = searched
    record = store.load_run(out["run_id"])
    assert out["test_accuracy"] == record.metrics["test_accuracy"] and out["minutes"] > 0
    assert best.best_records(store)[0]["run_id"] == out["run_id"]
    # the recipe with the same seed trains the same model again (a fresh store: nothing cached)
    for run_id, cfg in list(zip(out["members"], out["recipe"], strict=True))[:1]:
        again = train(RunConfig.from_dict(cfg), req.data, Store(tmp_path / "again"))
        assert not again.cached and again.run_id == run_id
        np.testing.assert_allclose(again.record.predictions()["probs"], store.load_run(run_id).predictions()["probs"],
                                   atol=1e-5)  # fmt: skip
    # an ensemble of the two best runs, whether or not it won here: one Keras model, loaded by plain Keras
    pool = sorted(best.candidates(study, store), key=lambda c: -np.mean(c.val_probs.argmax(1) == c.val_true))
    same = [c for c in pool if c.image_size == pool[0].image_size][:2]
    ensemble = save_ensemble(store, [store.load_run(c.run_id) for c in same])
    for rec in (record, ensemble):
        dest = tmp_path / f"{rec.run_id}.keras"
        export_model(rec, dest)
        model = keras.saving.load_model(dest)
        size = int(rec.config["run"]["image_size"])
        ds = decode_dataset(scan_dataset(req.data), size, store.datasets_dir)
        probs = model.predict(ds.x_test.astype("float32"), verbose=0)
        assert float(np.mean(probs.argmax(1) == ds.y_test)) == pytest.approx(rec.metrics["test_accuracy"], abs=1e-4)
        np.testing.assert_allclose(probs, rec.predictions()["probs"], atol=1e-4)
    assert ensemble.members == [c.run_id for c in same] and summary_row(ensemble)["run_id"] == ensemble.run_id
    assert explained_record(ensemble, store).run_id == same[0].run_id  # page 6 explains its first member
    assert load_classifier(ensemble).name == "ensemble"
    from core.explain.heatmaps import inspector_for

    assert inspector_for(ensemble).has_head  # page 6 and `explain --run` take an ensemble (its first run's network)


def test_the_study_page_shows_the_best_model_beside_the_studys(searched):
    from core.data.scan import scan_dataset
    from ui.study import best_model_frame

    req, study, store, out = searched
    frame = best_model_frame(store, {scan_dataset(req.data).fingerprint})
    row = frame[frame["run"] == out["run_id"]].iloc[0]  # read from the stored record: nothing trains
    assert row["test accuracy"].startswith(f"{out['test_accuracy']:.4f}") and "min of search" in row["cost"]
    assert "at 32 px" in row["recipe"] and row["model"].startswith("Best model")
    assert list(frame["model"][:2]) == ["the study's best"] * 2
    assert len(best_model_frame(store, {"another dataset"})) == 2


def test_best_command_prints_the_test_accuracy_once_at_the_end(tiny_dataset, tmp_path, capsys):
    from core.cli import main

    code = main(["best", "--data", str(tiny_dataset), "--minutes", "5", "--trials", "1", "--artifacts",
                 str(tmp_path / "a"), "--json"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["kind"] == "run" and out["recipe"][0]["image_size"] == BEST_STARTS[0]["image_size"]
    trial_lines = [line for line in captured.err.splitlines() if "best trial" in line]
    assert all("test" not in line for line in trial_lines)  # the trials' log lines show validation figures only
    assert main(["best", "--data", str(tiny_dataset), "--minutes", "0", "--artifacts", str(tmp_path / "a")]) == 2


def test_the_runs_page_lists_and_shows_an_ensemble(searched, tiny_dataset):
    from streamlit.testing.v1 import AppTest

    from core.training.ensemble import save_ensemble
    from tests.apphelpers import texts

    req, study, store, out = searched
    pool = best.candidates(study, store)
    same = [c for c in pool if c.image_size == pool[0].image_size][:2]
    ensemble = save_ensemble(store, [store.load_run(c.run_id) for c in same])
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    at.session_state["data_root"] = str(tiny_dataset)
    at.session_state["artifacts"] = req.artifacts
    at.session_state["runs_selected"] = [ensemble.run_id]
    at.switch_page("pages/runs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    names = list(at.dataframe[0].value["name"]) if at.dataframe else []
    shown = texts(at)
    assert any(str(n).startswith("Best model, mean of 2 runs") for n in names) or "mean of 2 runs" in shown
    assert "has no learning curve of its own" in shown
