"""The study's experiments as run configs: what each row of its table is, on any backbone and image size.

``study_rows(base)`` turns the sidebar's (or the CLI's) backbone, weights, image size, seed and test-time
flip into the runs that reproduce each row of the study's table (``core.study.reference``), cheapest first; the
Study page, the task pages and ``python -m core reproduce`` all read it, so they name the same runs.
Tasks 3 and 4 run on the small set, as the study did: augmentation and the learning-curve tools were its
cure for task 2's overfitting.

Two modes, both named on the Study page. ``quick`` (the first SceneLab had) trains a new head on the
frozen backbone for tasks 1-5 and fine-tunes the whole network for 2 epochs in task 0: minutes, but the
conclusions are a frozen backbone's. ``faithful`` follows the study's method: every row trains the head,
then fine-tunes the network; on a CPU that is the last ``trained_blocks`` blocks of what remains after a
cut, trained on cached activations of the frozen prefix (one pass serves every row at that depth, and
augmented rows get per-epoch banks of prefix activations). ``repeats`` runs each row's headline config
with other seeds (``seed + 1000 r``, as the search's repeats) so that a figure carries its spread.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import AugmentConfig, RunConfig
from core.errors import ConfigError
from core.study import reference as ref

SMALL = ref.SMALL_DATA["per_class"]
GRID_FACTORS = tuple(ref.AUGMENTATION_GRID)  # rotation, width/height shift, shear, zoom, hflip, vflip
STUDY_BEST_AUG = AugmentConfig(hflip=True, zoom=ref.AUGMENTATION_BEST["zoom"])
DEFAULT_GRID_SAMPLE = 8
#: the study's task 0: the head on the frozen backbone, then the whole network at a tenth of the rate
FINETUNE = {"phase": "head+full", "full_epochs": 2}
MODES = ("quick", "faithful")
MODE_LABELS = {"quick": "backbone frozen", "faithful": "fine-tuned"}
#: the faithful recipe's second phase: the unfrozen blocks fine-tuned for 15 epochs with Adam at 3e-4 after the
#: head (measured on mit_split_64, Lite0, 128 px, the small set: 0.917 test against 0.889 for the head alone)
FAITHFUL = {"phase": "head+full", "full_epochs": 15, "full_lr": 3e-4}
DEFAULT_TRAINED_BLOCKS = 1
SEED_STEP = 1000  # repeat r of a row uses seed + 1000 r (the search's repeats do the same)


def finetuned(cfg: RunConfig, trained_blocks: int = DEFAULT_TRAINED_BLOCKS) -> RunConfig:
    """``cfg`` trained as the study did: head, then the network fine-tuned, its last ``trained_blocks`` blocks
    (of those left after a cut) trainable and the rest a frozen prefix (0 frozen when nothing else is left)."""
    from core.models.backbones import get_backbone  # Keras: only when a plan is made, not to check a command's options

    blocks = get_backbone(cfg.backbone).blocks
    freeze = max(0, blocks - cfg.remove_blocks - max(1, trained_blocks))
    return cfg.replace(**FAITHFUL, freeze_blocks=freeze)


DEFAULT_TRIALS = 30


@dataclass(frozen=True)
class Plan:
    """What a reproduction trains: the mode, seeds per row, fine-tuned depth, grid sample and search trials."""

    mode: str = "quick"
    repeats: int = 1
    trained_blocks: int = DEFAULT_TRAINED_BLOCKS
    grid_sample: int = DEFAULT_GRID_SAMPLE
    trials: int = DEFAULT_TRIALS

    def check(self) -> Plan:
        """Raise :class:`ConfigError` with one sentence for the first bad value; return self."""
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}; received {self.mode!r}.")
        if not 1 <= self.repeats <= 10:
            raise ConfigError(f"--repeats must be 1 to 10 seeds per row; received {self.repeats}.")
        if not 1 <= self.trained_blocks <= 3:
            raise ConfigError(f"--trained-blocks must be 1 to 3; received {self.trained_blocks}.")
        if not 2 <= self.grid_sample <= 128:
            raise ConfigError(f"--grid-sample must be 2 to 128 grid points; received {self.grid_sample}.")
        if not 0 <= self.trials <= 500:
            raise ConfigError(f"--trials must be 0 to 500 (0 leaves the search out); received {self.trials}.")
        return self


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    return [seed + SEED_STEP * r for r in range(max(1, repeats))]


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
    key: str = ""  # stable name of the row in every mode ("t1-cut2-dense"): claims and the page join on it
    repeats: list[RunConfig] = field(default_factory=list)  # the first config again with other seeds


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


def study_rows(base: RunConfig, grid_sample: int = DEFAULT_GRID_SAMPLE, seed: int = 0, *, mode: str = "quick",
               repeats: int = 1, trained_blocks: int = DEFAULT_TRAINED_BLOCKS) -> list[Row]:  # fmt: skip
    """The study's table as rows of runs for ``base``'s backbone, weights, image size, seed and flip.

    ``quick`` keeps the run ids it always had; ``faithful`` fine-tunes every row but task 0's frozen one."""
    if mode not in MODES:
        raise ValueError(f"Unknown reproduction mode {mode!r}; expected one of {', '.join(MODES)}.")
    head = base.replace(phase="head")
    tune = (lambda c: finetuned(c, trained_blocks)) if mode == "faithful" else (lambda c: c)
    first = base.replace(**FINETUNE) if mode == "quick" else tune(head)
    rows = [
        Row("0", "head, then the network fine-tuned", ref.FINETUNE["val_accuracy"], [first], "finetune",
            ref.FINETUNE["train_accuracy"], key="t0-finetune"),
        Row("0", "head only (backbone frozen)", None, [head], "finetune", key="t0-head"),
    ]
    for dense in (False, True):
        table = ref.TRUNCATION_DENSE if dense else ref.TRUNCATION
        for k in range(4):
            if dense and k == 0:
                continue
            label = f"{ref.TRUNCATION_LABELS[k]}{' + Dense(1024)' if dense else ''}"
            rows.append(Row("1", label, table[k][1], [tune(head.replace(remove_blocks=k, dense_1024=dense))], "truncate",
                            key=f"t1-cut{k}{'-dense' if dense else ''}"))  # fmt: skip
    small = head.replace(train_per_class=SMALL)
    rows.append(Row("2", f"{SMALL} images per class", ref.SMALL_DATA["accuracy"], [tune(small)], "small_data",
                    key="t2-small"))  # fmt: skip
    rows.append(Row("2", "the full training set", None, [tune(head)], "small_data", key="t2-full"))
    grid = [tune(small.replace(augment=a)) for a in augmentation_grid(grid_sample, seed)]
    best = tune(small.replace(augment=STUDY_BEST_AUG))
    rows.append(Row("3", f"{ref.AUGMENTATION_BEST['setting']} (+ a grid sample of {len(grid)})",
                    ref.AUGMENTATION_BEST["accuracy"], [best, *[g for g in grid if g != best]], "augmentation",
                    key="t3-best"))  # fmt: skip
    reg = [tune(c) for c in regularisation_configs(head)]
    rows.append(Row("4", ref.REGULARISATION_BEST["setting"], ref.REGULARISATION_BEST["accuracy"], reg, "regularisation",
                    key="t4-best"))  # fmt: skip
    for row in rows:
        row.repeats = [row.configs[0].replace(seed=s) for s in repeat_seeds(row.configs[0].seed, repeats)[1:]]
    return rows
