"""Each benchmark runs in --tiny mode and prints one valid JSON line with its figures (no timed assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

COMMON_KEYS = {"bench", "tiny", "date", "dataset", "load", "machine", "command"}
EXPECTED = {
    "pipeline": {"sizes", "ratio", "target_ratio", "augmentation", "batch_size"},
    "best": {"backbone", "minutes", "sets"},
    "train_step": {"results", "best", "nominal_fp32_peak_gflops", "measured_ceiling_gflops", "threads"},
    "bundled": {"unpack_s", "second_call_ms", "images", "targets"},
    "scale": {"sizes", "results", "growth", "size_ratio", "image_size", "targets", "met"},
    "aug_finetune": {"arms", "ratio", "ratio_cpu", "repeats", "target_ratio", "met", "freeze_blocks", "epochs"},
    "time_to_accuracy": {"scenelab", "study", "ratio", "target_accuracy", "accuracy_within_budget", "image_size"},
    "latency": {
        "show_cached_run_s",
        "head_retrain_warm_s",
        "preview_redraw_s",
        "feature_maps_warm_s",
        "repeat_arch_first_step_s",
        "repeat_arch_first_step_no_warm_cache_s",
        "targets",
    },
}


def run_tiny(name: str, timeout: float = 600) -> tuple[dict, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last), proc.stdout


def check_pipeline(f: dict) -> None:
    assert list(f["sizes"]) == ["32"] and f["batch_size"] == 8  # what --tiny asks for
    (size,) = f["sizes"].values()
    for arm in ("scenelab_", "keras_chain_", "parallel_"):  # each ratio is its arm's images/s over the study's
        ratio = size["ratio" if arm == "scenelab_" else f"{arm}ratio"]
        assert ratio == pytest.approx(size[f"{arm}images_per_s"] / size["study_images_per_s"], abs=0.01), arm
    assert f["ratio"] == size["ratio"] and f["target_ratio"] == 3.0
    assert size["scenelab_decode_once_s"] > 0 and size["study_first_batch_s"] > 0


def check_train_step(f: dict) -> None:
    results = f["results"]
    assert [(r["precision"], r["image_size"], r["remove_blocks"]) for r in results] == [
        ("float32", 32, 3), ("mixed_bfloat16", 32, 3)]  # fmt: skip
    for r in results:  # GFLOP/s is images/s times the counted GFLOP per image; shares of the two peaks
        assert r["achieved_gflops"] == pytest.approx(r["images_per_s"] * r["train_gflop_per_image"], rel=0.02, abs=0.2)
        assert r["fraction_of_nominal_peak"] == pytest.approx(
            r["achieved_gflops"] / f["nominal_fp32_peak_gflops"], abs=2e-3
        )
        assert r["train_gflop_per_image"] > 2 * r["forward_gflop_per_image"] > 0  # backward costs about twice forward
        assert r["steps"] >= 1
    best = max(results, key=lambda r: r["achieved_gflops"])
    assert (f["best"]["precision"], f["best"]["achieved_gflops"]) == (best["precision"], best["achieved_gflops"])
    assert f["measured_ceiling_gflops"]["float32"] > 0 and f["measured_ceiling_gflops"]["bfloat16"] > 0


def check_bundled(f: dict) -> None:
    assert f["images"] == 1881 + 807  # the bundled MIT_split, train and test
    assert f["second_call_ms"] <= f["second_call_max_ms"] and f["second_call_ms"] < f["rescan_ms"]
    assert f["second_call_ms"] / 1000 < f["unpack_s"]  # the import record is read, not the zip unpacked again
    assert f["targets"]["unpack_s"] == 10.0


def check_time_to_accuracy(f: dict) -> None:
    arms = [*f["scenelab"], f["study"]]
    assert all(0.0 <= arm["test_accuracy"] <= 1.0 for arm in arms)
    for arm in f["scenelab"]:
        assert arm["feature_seconds"] < arm["train_seconds_in_core"] <= arm["seconds"]
        assert arm["timeline"][-1] == [arm["seconds"], arm["test_accuracy"]]
    assert f["scenelab_best"] in [arm["arm"] for arm in f["scenelab"]]
    assert list(f["accuracy_within_budget"]) == [f"{b:g}" for b in f["budgets_seconds"]]
    assert (f["ratio"] is None) == (f["study_seconds_to_target"] is None or f["scenelab_seconds_to_target"] is None)


def check_latency(f: dict) -> None:
    for warm, cold in (("show_cached_run_s", "first_head_run_s"), ("head_retrain_warm_s", "head_retrain_cold_s"),
                       ("preview_redraw_s", "preview_first_s"), ("feature_maps_warm_s", "feature_maps_cold_s"),
                       ("grad_cam_warm_s", "grad_cam_cold_s"), ("repeat_arch_first_step_s", "first_step_new_arch_s"),
                       ("projection_pca_cached_s", "projection_pca_cold_s"),
                       ("projection_tsne_cached_s", "projection_tsne_cold_s")):  # fmt: skip
        assert f[warm] < f[cold], (warm, f[warm], cold, f[cold])  # the cached or warm path is the faster one
    assert f["feature_pass_traced_images_per_s"] > f["feature_pass_traced_first_images_per_s"]  # tracing paid once
    assert f["head_retrain_warm_model"] is True
    assert f["met"] == {k: f[k] <= target for k, target in f["targets"].items()}


def check_aug_finetune(f: dict) -> None:
    assert set(f["arms"]) == {"plain", "augmented", "copies"} and f["ratio"] > 0
    assert all(arm["epochs_run"] == f["epochs"] for arm in f["arms"].values())
    plain, augmented, copies = f["arms"]["plain"], f["arms"]["augmented"], f["arms"]["copies"]
    assert f["ratio"] == pytest.approx(augmented["train_s"] / plain["train_s"], abs=0.02)
    assert f["met"] == (f["ratio"] <= f["target_ratio"])
    assert f["ratio_copies"] == pytest.approx(copies["train_s"] / plain["train_s"], abs=0.02)
    assert f["met_copies"] == (f["ratio_copies"] <= f["target_ratio"])
    assert f["copies"] == 1 and "--aug-copies 1" in copies["what"]
    for arm in f["arms"].values():  # every arm's accuracy with its interval, from its runs
        runs = [r["test_accuracy"] for r in arm["runs"]]
        assert arm["test_mean"]["mean"] == pytest.approx(sum(runs) / len(runs), abs=1e-4)
        assert arm["test_mean"]["low"] <= arm["test_mean"]["mean"] <= arm["test_mean"]["high"]
    d = f["copies_minus_augmented"]
    assert d["diff"] == pytest.approx(copies["test_accuracy"] - augmented["test_accuracy"], abs=1e-4)
    assert d["low"] < d["diff"] < d["high"]


def check_scale(f: dict) -> None:
    assert f["sizes"] == [60, 240] and f["image_size"] == 32 and f["size_ratio"] == 4.0  # what --tiny asks for
    runs = f["results"]["candidate"]
    assert set(runs) == {"60", "240"} and all("error" not in r for r in runs.values()), runs
    assert all(r["seconds"] > 0 and 0.1 < r["peak_rss_gib"] < 8 and 0 <= r["test_accuracy"] <= 1 for r in runs.values())
    assert runs["240"]["decoded_cache_gib"] >= runs["60"]["decoded_cache_gib"]
    assert f["growth"] == pytest.approx(runs["240"]["seconds"] / runs["60"]["seconds"], abs=0.01)
    assert f["met"]["peak_rss"] == (runs["240"]["peak_rss_gib"] <= f["targets"]["peak_rss_50k_gib"])


def check_best(f: dict) -> None:
    assert [r["set"] for r in f["sets"]] == ["full", "small"]
    for r in f["sets"]:
        winner = pytest.approx(r["test_accuracy"], abs=1e-4)
        assert r["curve"][-1]["test_accuracy"] == winner  # the curve ends at the winner
        assert r["exported_test_accuracy"] == winner and r["reproduced_run_ids_equal"]
        assert r["reproduced_test_accuracies"] == r["stored_test_accuracies"]
        assert r["met"] == (r["test_accuracy"] >= r["target"])


CHECKS = {"pipeline": check_pipeline, "scale": check_scale, "train_step": check_train_step, "bundled": check_bundled,
          "time_to_accuracy": check_time_to_accuracy, "latency": check_latency,
          "aug_finetune": check_aug_finetune, "best": check_best}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bench_tiny_prints_json(name):
    figures, stdout = run_tiny(name)
    assert figures["bench"] == name and figures["tiny"] is True
    missing = (COMMON_KEYS | EXPECTED[name]) - set(figures)
    assert not missing, missing
    assert figures["machine"]["cores"] >= 1 and figures["machine"]["cpu"]  # the report names the machine from it
    assert 0 <= figures["load"]["others_cores_mean"] <= figures["load"]["others_cores_max"]
    assert len(stdout.strip().splitlines()) >= 3  # a table before the JSON line
    CHECKS.get(name, lambda f: None)(figures)


# -- the report ---------------------------------------------------------------------------------------------------
def test_benchmarks_md_is_the_reports_output():
    """BENCHMARKS.md is exactly what ``python -m bench.report bench/results`` prints: no figure typed by hand."""
    proc = subprocess.run([sys.executable, "-m", "bench.report", "bench/results"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (REPO / "BENCHMARKS.md").read_text(), (
        "regenerate: python -m bench.report bench/results > BENCHMARKS.md"
    )


def test_the_report_names_each_sections_machine_from_its_results(tmp_path):
    from bench.report import SECTIONS, report

    for name in ("pipeline", "bundled"):
        figures = json.loads((REPO / "bench" / "results" / f"{name}.json").read_text().strip().splitlines()[-1])
        figures["machine"] = {**figures["machine"], "cpu": f"Test CPU of {name}", "cpu_family_model": "1/2"}
        (tmp_path / f"{name}.json").write_text(json.dumps(figures) + "\n")
    text = report(tmp_path)
    assert "The sections ran on 2 machines" in text
    titles = {s.name: s.title for s in SECTIONS}
    for name in ("pipeline", "bundled"):
        assert f"Test CPU of {name} (family/model 1/2), " in text and f"Sections: {titles[name]}." in text
        assert f"Ran on Test CPU of {name} (family/model 1/2)" in text
    for claim in ("Zen", "AMX", "Xeon", "EPYC"):  # only what a results file says
        assert claim not in text


def test_the_notes_name_modules_and_names_that_exist():
    import importlib
    import re

    notes = (REPO / "bench" / "results" / "NOTES.md").read_text()
    for path in set(re.findall(r"`((?:core|bench|tests)/[\w/]+\.py)", notes)):
        assert (REPO / path).is_file(), path
    for dotted in set(re.findall(r"`(core(?:\.\w+)+)", notes)):
        module, _, attr = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), dotted


@pytest.mark.browser
def test_browser_bench_tiny_prints_json():
    """bench/browser.py drives the app in Chromium on generated images: every step has a figure."""
    from tests.browserkit import need_browser

    need_browser()
    figures, stdout = run_tiny("browser", timeout=1200)
    assert figures["bench"] == "browser" and figures["tiny"] is True
    missing = (COMMON_KEYS | {"first_load_s", "pages_cold_s", "pages_warm_s", "page6_cold_s", "page6_warm_s",
                              "map_cold_s", "map_cached_s", "preview_s", "targets", "met", "run"}) - set(figures)  # fmt: skip
    assert not missing, missing
    from ui.catalog import PAGES

    assert set(figures["pages_warm_s"]) == set(figures["pages_cold_s"]) == {p.label for p in PAGES}
    assert set(figures["page6_cold_s"]) == {"gradcam", "gradcam++", "scorecam", "occlusion"}
    assert set(figures["map_cold_s"]) == {"pca", "tsne"} and len(figures["preview_s"]) == 3
    assert all(r["seconds"] >= 0 for r in figures["steps"]) and figures["run"]["run_id"]
    assert "first load" in stdout


# -- the speedups the benchmarks measure keep results exact ---------------------------------------------
TINY_CFG = dict(
    backbone="densenet121", weights="none", remove_blocks=2, image_size=32, epochs=2, batch_size=8, val_fraction=0.25
)
VOLATILE = {"seconds", "feature_seconds", "feature_cache_hit", "warm_model"}


def _stable(record):
    return {k: v for k, v in record.metrics.items() if k not in VOLATILE}


@pytest.mark.parametrize("phase, freeze", [("head", 0), ("full", 1)])
def test_warm_model_reuse_gives_identical_results(tiny_dataset, tmp_path, phase, freeze):
    import numpy as np

    from core.config import RunConfig
    from core.models.warm import WARM
    from core.store.folders import Store
    from core.training.train import train

    cfg = RunConfig(phase=phase, dropout=0.2, **TINY_CFG)
    WARM.clear()
    cold = train(cfg.replace(freeze_blocks=freeze), tiny_dataset, Store(tmp_path / "a"))
    warm = train(cfg.replace(freeze_blocks=freeze), tiny_dataset, Store(tmp_path / "b"))  # same run again, model warm
    assert cold.record.metrics["warm_model"] is False and warm.record.metrics["warm_model"] is True
    assert _stable(warm.record) == _stable(cold.record)
    assert warm.record.history == cold.record.history
    np.testing.assert_array_equal(warm.record.predictions()["probs"], cold.record.predictions()["probs"])
    other_seed = train(cfg.replace(seed=5, freeze_blocks=freeze), tiny_dataset, Store(tmp_path / "c"))
    WARM.clear()
    cold_seed = train(cfg.replace(seed=5, freeze_blocks=freeze), tiny_dataset, Store(tmp_path / "d"))
    assert other_seed.record.metrics["warm_model"] is True
    assert _stable(other_seed.record) == _stable(cold_seed.record)


def test_partial_fine_tuning_on_cached_prefix(tiny_dataset, tmp_path):
    import numpy as np

    from core.config import RunConfig
    from core.errors import ConfigError
    from core.store.folders import Store
    from core.training.runs import load_classifier
    from core.training.train import find_run, train

    store = Store(tmp_path / "a")
    cfg = RunConfig(phase="full", **TINY_CFG)
    partial = train(cfg.replace(freeze_blocks=1), tiny_dataset, store)
    whole = train(cfg, tiny_dataset, store)
    m = partial.record.metrics
    assert m["freeze_blocks"] == 1 and partial.run_id != whole.run_id
    assert 0 < m["params_trainable"] < whole.record.metrics["params_trainable"]
    assert list(store.features_dir.glob("prefix-*.npz"))
    assert find_run(cfg.replace(freeze_blocks=1), tiny_dataset, store).run_id == partial.run_id
    assert train(cfg.replace(freeze_blocks=1), tiny_dataset, store).cached
    # on a head-only run the setting changes nothing
    head = cfg.replace(phase="head")
    assert find_run(head.replace(freeze_blocks=1), tiny_dataset, store) is None
    assert train(head, tiny_dataset, store).run_id == train(head.replace(freeze_blocks=1), tiny_dataset, store).run_id
    from core.data.arrays import decode_dataset, scan_dataset

    ds = decode_dataset(scan_dataset(tiny_dataset), 32, store.datasets_dir)
    probs = load_classifier(partial.record).predict(ds.x_test.astype("float32"), verbose=0)
    np.testing.assert_allclose(probs, partial.record.predictions()["probs"], atol=1e-4)
    with pytest.raises(ConfigError, match="--freeze-blocks"):
        train(cfg.replace(freeze_blocks=2), tiny_dataset, store)  # 2 blocks left after removing 2: one must train


def test_augmentation_is_one_affine_pass_and_deterministic():
    import numpy as np

    from core.config import AugmentConfig
    from core.data.augment import build_augmenter, preview

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 24, 24, 3)).astype(np.uint8)
    study = AugmentConfig(rotation=20, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2, hflip=True)
    assert [layer.name for layer in build_augmenter(study).layers] == ["aug_affine"]
    a, b = preview(images, study, seed=3), preview(images, study, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, images)
    flipped = preview(images, AugmentConfig(hflip=True), seed=1)
    assert all(np.array_equal(f, i) or np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True))
