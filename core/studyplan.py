"""The study's experiments as run configs: what each row of its table is, on any backbone and image size.

``study_rows(base)`` turns the sidebar's (or the CLI's) backbone, weights, image size, seed and test-time
flip into the runs that reproduce each row of the study's table (``core.reference``), cheapest first; the
Study page, the task pages and ``python -m core reproduce`` all read it, so they name the same runs.
Tasks 3 and 4 run on the small set, as the study did: augmentation and the learning-curve tools were its
cure for task 2's overfitting.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import reference as ref
from core.config import AugmentConfig, RunConfig

SMALL = ref.SMALL_DATA["per_class"]
GRID_FACTORS = tuple(ref.AUGMENTATION_GRID)  # rotation, width/height shift, shear, zoom, hflip, vflip
STUDY_BEST_AUG = AugmentConfig(hflip=True, zoom=ref.AUGMENTATION_BEST["zoom"])
DEFAULT_GRID_SAMPLE = 8
#: the study's task 0: the head on the frozen backbone, then the whole network at a tenth of the rate
FINETUNE = {"phase": "head+full", "full_epochs": 2}


def grid_config(on: Iterable[str]) -> AugmentConfig:
    """The grid point with ``on``'s factors at the study's values and the others off."""
    on = set(on)
    return AugmentConfig(**{f: v for f, v in ref.AUGMENTATION_GRID.items() if f in on})


def factors_of(aug: AugmentConfig | Mapping[str, Any]) -> set[str]:
    values = aug if isinstance(aug, Mapping) else vars(aug)
    return {f for f in GRID_FACTORS if values.get(f)}


def augmentation_grid(sample: int | None = None, seed: int = 0) -> list[AugmentConfig]:
    """The study's grid (7 on/off factors: 128 points), or a seeded sample of ``sample`` points that always
    holds the baseline (nothing on) and the study's best (flip + zoom 0.2)."""
    points = [grid_config(c) for k in range(len(GRID_FACTORS) + 1) for c in itertools.combinations(GRID_FACTORS, k)]
    if sample is None or sample >= len(points):
        return points
    fixed = [AugmentConfig(), STUDY_BEST_AUG]
    rest = [p for p in points if p not in fixed]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rest), size=max(0, sample - len(fixed)), replace=False)
    return fixed + [rest[i] for i in sorted(chosen)]


@dataclass
class Effect:
    factor: str
    effect: float  # mean test accuracy with the factor on minus with it off
    spread: float  # 1.96 standard errors of that difference
    n_on: int
    n_off: int


def main_effects(results: list[tuple[AugmentConfig | Mapping[str, Any], float]]) -> list[Effect]:
    """What each grid factor contributes on average over the runs, with the spread of that average."""
    out = []
    for f in GRID_FACTORS:
        on = np.array([acc for aug, acc in results if f in factors_of(aug)])
        off = np.array([acc for aug, acc in results if f not in factors_of(aug)])
        if len(on) == 0 or len(off) == 0:
            continue
        se = np.sqrt((on.var(ddof=1) / len(on) if len(on) > 1 else 0.0) + (off.var(ddof=1) / len(off) if len(off) > 1 else 0.0))
        out.append(Effect(f, float(on.mean() - off.mean()), float(1.96 * se), len(on), len(off)))
    return sorted(out, key=lambda e: -e.effect)


@dataclass
class Row:
    """One row of the study's table and the runs of ours that answer it."""

    task: str  # "0".."5"
    setting: str
    study: float | None  # the study's figure (test accuracy selected on test), or None
    configs: list[RunConfig] = field(default_factory=list)  # the runs (the row's figure is the first's)
    page: str = ""  # the page that shows it (ui.catalog key)
    study_train: float | None = None


def regularisation_configs(base: RunConfig) -> list[RunConfig]:
    """Task 4 on the small set with the study's best augmentation: each tool alone, then all together."""
    small = base.replace(train_per_class=SMALL, augment=STUDY_BEST_AUG)
    es = {"early_stopping_patience": 3, "reduce_lr_patience": 2}
    return [
        small.replace(dropout=0.5, **es),  # the study's best: dropout 0.5 with early stopping and reduce-LR
        small.replace(dropout=0.5),
        small.replace(batch_norm=True),
        small.replace(early_stopping_patience=3),
        small.replace(reduce_lr_patience=2),
        small.replace(dropout=0.5, batch_norm=True, **es),
    ]


def study_rows(base: RunConfig, grid_sample: int = DEFAULT_GRID_SAMPLE, seed: int = 0) -> list[Row]:
    """The study's table as rows of runs for ``base``'s backbone, weights, image size, seed and flip."""
    head = base.replace(phase="head")
    rows = [
        Row("0", "head, then the whole network", ref.FINETUNE["val_accuracy"], [base.replace(**FINETUNE)],
            "finetune", ref.FINETUNE["train_accuracy"]),
        Row("0", "head only (backbone frozen)", None, [head], "finetune"),
    ]
    for dense in (False, True):
        table = ref.TRUNCATION_DENSE if dense else ref.TRUNCATION
        for k in range(4):
            if dense and k == 0:
                continue
            label = f"{ref.TRUNCATION_LABELS[k]}{' + Dense(1024)' if dense else ''}"
            rows.append(Row("1", label, table[k][1], [head.replace(remove_blocks=k, dense_1024=dense)], "truncate"))
    rows.append(Row("2", f"{SMALL} images per class", ref.SMALL_DATA["accuracy"], [head.replace(train_per_class=SMALL)],
                    "small_data"))  # fmt: skip
    rows.append(Row("2", "the full training set", None, [head], "small_data"))
    grid = [head.replace(train_per_class=SMALL, augment=a) for a in augmentation_grid(grid_sample, seed)]
    best = head.replace(train_per_class=SMALL, augment=STUDY_BEST_AUG)
    rows.append(Row("3", f"{ref.AUGMENTATION_BEST['setting']} (+ a grid sample of {len(grid)})",
                    ref.AUGMENTATION_BEST["accuracy"], [best, *[g for g in grid if g != best]], "augmentation"))  # fmt: skip
    reg = regularisation_configs(head)
    rows.append(Row("4", ref.REGULARISATION_BEST["setting"], ref.REGULARISATION_BEST["accuracy"], reg, "regularisation"))
    return rows
