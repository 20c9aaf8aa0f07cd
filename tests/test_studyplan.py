"""The study's plan in both modes (no training): quick keeps its runs, faithful fine-tunes every row, repeats
add seeds, and the search of each mode is its own study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import RunConfig
from core.errors import ConfigError
from core.models.backbones import get_backbone
from core.study import reproduce
from core.study.plan import FAITHFUL, FINETUNE, SEED_STEP, finetuned, study_rows

BASE = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=32)
KEYS = ["t0-finetune", "t0-head", "t1-cut0", "t1-cut1", "t1-cut2", "t1-cut3", "t1-cut1-dense", "t1-cut2-dense",
        "t1-cut3-dense", "t2-small", "t2-full", "t3-best", "t4-best"]  # fmt: skip


def test_quick_mode_trains_the_runs_it_always_did() -> None:
    rows = study_rows(BASE, 4)
    assert [r.key for r in rows] == KEYS
    assert rows[0].configs == [BASE.replace(**FINETUNE)]
    for row in rows[1:]:
        assert all(c.phase == "head" and c.freeze_blocks == 0 for c in row.configs), row.key
        assert row.repeats == []


def test_faithful_mode_fine_tunes_every_row_but_the_frozen_one() -> None:
    blocks = get_backbone(BASE.backbone).blocks
    rows = {r.key: r for r in study_rows(BASE, 4, mode="faithful")}
    assert list(rows) == KEYS
    assert rows["t0-head"].configs == [BASE.replace(phase="head")]
    for key, row in rows.items():
        if key == "t0-head":
            continue
        for cfg in row.configs:
            assert cfg.phase == "head+full" and cfg.full_epochs == FAITHFUL["full_epochs"], key
            # the last block of what remains after a cut trains; the rest is a frozen prefix
            assert cfg.freeze_blocks == max(0, blocks - cfg.remove_blocks - 1), key
    assert rows["t1-cut0"].configs == rows["t0-finetune"].configs == rows["t2-full"].configs  # one run, three rows
    assert rows["t3-best"].configs[0].train_per_class == 50 and rows["t3-best"].configs[0].augment.hflip
    assert rows["t4-best"].configs[0].dropout == 0.5 and rows["t4-best"].configs[0].early_stopping_patience


def test_the_fine_tuned_depth_is_a_setting() -> None:
    blocks = get_backbone(BASE.backbone).blocks
    assert finetuned(BASE, 2).freeze_blocks == blocks - 2
    assert finetuned(BASE.replace(remove_blocks=3), 1).freeze_blocks == 0  # one block left: nothing frozen


def test_repeats_add_the_first_config_with_other_seeds() -> None:
    rows = study_rows(BASE.replace(seed=7), 4, mode="faithful", repeats=3)
    for row in rows:
        assert [c.seed for c in row.repeats] == [7 + SEED_STEP, 7 + 2 * SEED_STEP]
        assert all(c.replace(seed=7) == row.configs[0] for c in row.repeats)


def test_each_mode_searches_in_its_own_study(tmp_path: Path, tiny_dataset: Path) -> None:
    quick = reproduce.search_request(BASE, str(tiny_dataset), str(tmp_path), 5)
    faithful = reproduce.search_request(BASE, str(tiny_dataset), str(tmp_path), 5, "faithful")
    assert quick.study != faithful.study and quick.space_file is None
    assert faithful.cfg.phase == "head+full" and faithful.cfg.full_lr is None  # a tenth of the trial's rate
    space = json.loads(Path(faithful.space_file).read_text())
    blocks = get_backbone(BASE.backbone).blocks
    assert space == {"freeze_blocks": {"type": "categorical", "choices": [blocks - 2, blocks - 1]}}
    from core.search.study import tune_argv

    argv = tune_argv(faithful)
    assert argv[argv.index("--phase") + 1] == "head+full" and argv[argv.index("--space") + 1] == faithful.space_file


@pytest.mark.parametrize(("plan", "words"), [
    (reproduce.Plan(mode="slow"), "--mode"), (reproduce.Plan(repeats=0), "--repeats"),
    (reproduce.Plan(trained_blocks=4), "--trained-blocks"), (reproduce.Plan(grid_sample=1), "--grid-sample"),
    (reproduce.Plan(trials=-1), "--trials"),
])  # fmt: skip
def test_a_bad_plan_is_one_sentence(plan: reproduce.Plan, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("-", r"\-")):
        plan.check()


def test_the_table_of_an_empty_store_counts_each_run_once(tmp_path: Path, tiny_dataset: Path) -> None:
    from core.store.folders import Store
    from ui.study import progress_counts

    how = reproduce.Plan(mode="faithful", repeats=2, grid_sample=2, trials=3)
    rows = reproduce.table(BASE, str(tiny_dataset), Store(tmp_path), how=how)
    stored, total, done, trials = progress_counts(rows)
    unique = {p.run_id for p in reproduce.missing_runs(BASE, str(tiny_dataset), Store(tmp_path), how=how)}
    assert (stored, total, done, trials) == (0, len(unique), 0, 3)
    assert all(r.ours is None and r.reason is None for r in rows)
