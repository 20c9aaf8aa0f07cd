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
    "train_step": {"results", "best", "nominal_fp32_peak_gflops", "measured_ceiling_gflops", "threads"},
    "bundled": {"unpack_s", "second_call_ms", "images", "targets"},
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


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bench_tiny_prints_json(name):
    figures, stdout = run_tiny(name)
    assert figures["bench"] == name and figures["tiny"] is True
    missing = (COMMON_KEYS | EXPECTED[name]) - set(figures)
    assert not missing, missing
    assert figures["machine"]["cores"] >= 1
    assert "others_cores_mean" in figures["load"]
    assert len(stdout.strip().splitlines()) >= 3  # a table before the JSON line
    if name == "pipeline":
        (size,) = figures["sizes"].values()
        assert size["study_images_per_s"] > 0 and size["scenelab_images_per_s"] > 0


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
    from core.store import Store
    from core.train import train
    from core.warm import WARM

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
    from core.runs import load_classifier
    from core.store import Store
    from core.train import find_run, train

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
    from core.data import decode_dataset, scan_dataset

    ds = decode_dataset(scan_dataset(tiny_dataset), 32, store.datasets_dir)
    probs = load_classifier(partial.record).predict(ds.x_test.astype("float32"), verbose=0)
    np.testing.assert_allclose(probs, partial.record.predictions()["probs"], atol=1e-4)
    with pytest.raises(ConfigError, match="--freeze-blocks"):
        train(cfg.replace(freeze_blocks=2), tiny_dataset, store)  # 2 blocks left after removing 2: one must train


def test_augmentation_is_one_affine_pass_and_deterministic():
    import numpy as np

    from core.augment import build_augmenter, preview
    from core.config import AugmentConfig

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 24, 24, 3)).astype(np.uint8)
    study = AugmentConfig(rotation=20, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2, hflip=True)
    assert [layer.name for layer in build_augmenter(study).layers] == ["aug_affine"]
    a, b = preview(images, study, seed=3), preview(images, study, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, images)
    flipped = preview(images, AugmentConfig(hflip=True), seed=1)
    assert all(np.array_equal(f, i) or np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True))
