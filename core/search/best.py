"""The best model this machine can make on a dataset in a budget of minutes, chosen on validation alone.

``python -m core best``: an Optuna study (``core.search.study``'s machinery: resumable, on any storage) over
what matters when the last blocks of an ImageNet backbone are fine-tuned on the cached activations of its
frozen prefix (``freeze_blocks``, ``core.training.phases.suffix_on_prefix``): the fine-tuned depth, the image
size, the learning rate and its schedule, the epochs, dropout, flip augmentation and test-time flip. Every
trial trains with the same seed, so every run holds the same validation images and their probabilities
(``predictions.npz``: ``val_probs``), and the average of the best few runs at one image size (an ensemble)
can be scored on validation too. The winner is the run or ensemble with the highest validation accuracy
(ties: the lower validation log-loss); only then is its test accuracy read, once.

The selection (:func:`choose`) sees validation probabilities and labels only (:class:`Candidate`); a test
checks that changing every stored test figure does not change it. The winner is stored: a run, or an ensemble
record (``core.training.ensemble``), and the record of the search under ``<artifacts>/best/`` that the Study
page reads (:func:`best_records`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from core.config import AUGMENT_SETTINGS, RUN_SETTINGS, RunConfig, stable_hash
from core.errors import ConfigError
from core.fields import check_value
from core.search.objective import Objective
from core.search.samplers import make_pruner, make_sampler
from core.search.space import Space, suggest
from core.search.storage import open_storage, redact, resolve_storage_url
from core.search.study import SETTINGS_VERSION, create_or_resume
from core.search.workers import run_worker
from core.store.atomic import atomic_write_json
from core.store.folders import RunRecord, Store

logger = logging.getLogger(__name__)

#: What every trial shares: the suffix after a frozen prefix fine-tuned with its new head, Adam, batches of 32.
BEST_BASE: dict[str, Any] = {"phase": "full", "optimizer": "adam", "batch_size": 32}
#: The search space. ``trained_blocks`` is the fine-tuned depth (``freeze_blocks`` = the backbone's blocks minus
#: it); ``aug_hflip`` is the flip augmentation; the rest are run settings (``core.config``).
BEST_SPACE: dict[str, dict[str, Any]] = {
    "image_size": {"type": "categorical", "choices": [128, 160, 192, 224]},
    "trained_blocks": {"type": "categorical", "choices": [1, 2]},
    "lr": {"type": "float", "low": 1e-4, "high": 2e-3, "log": True},
    "epochs": {"type": "int", "low": 6, "high": 20},
    "reduce_lr_patience": {"type": "categorical", "choices": [0, 2]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "aug_hflip": {"type": "categorical", "choices": [False, True]},
    "tta": {"type": "categorical", "choices": [False, True]},
}
#: The first trials of a new search: the recipe measured at 0.958 test on mit_split_64 (bench/time_to_accuracy.py:
#: the last block at 160 px, Adam 3e-4, 10 epochs, dropout 0.3), with test-time flip, at 160 and 224 px.
BEST_STARTS: tuple[dict[str, Any], ...] = tuple(
    {"image_size": size, "trained_blocks": 1, "lr": 3e-4, "epochs": 10, "reduce_lr_patience": 0, "dropout": 0.3,
     "aug_hflip": False, "tta": True}
    for size in (160, 224)
)  # fmt: skip
MAX_MEMBERS = 5  # an ensemble averages at most this many runs
TRIALS_CAP = 10_000  # the budget in minutes, not a count, ends a search
BEST_DIR = "best"  # <artifacts>/best/<key>.json: the record of each search


def _spec_values(spec: dict[str, Any]) -> list[Any]:
    return list(spec["choices"]) if spec["type"] == "categorical" else [spec["low"], spec["high"]]


def check_best_space(space: dict[str, dict[str, Any]] = BEST_SPACE) -> Space:
    """The space, every choice and bound checked against its setting's declaration; one sentence if not."""
    for name, spec in space.items():
        for value in _spec_values(spec):
            if name.startswith("aug_"):
                check_value(name[4:], AUGMENT_SETTINGS[name[4:]], value, "aug-")
            elif name == "trained_blocks":
                if not (isinstance(value, int) and 1 <= value <= 3):
                    raise ConfigError(f"The best search's fine-tuned depth must be 1 to 3 blocks; received {value!r}.")
            else:
                check_value(name, RUN_SETTINGS[name], value)
    return {k: dict(v) for k, v in space.items()}


def config_of(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The run a trial's parameters ask for (``trained_blocks`` as ``freeze_blocks``, ``aug_*`` as augmentation)."""
    from core.models.backbones import get_backbone

    values = dict(params)
    aug = {k[4:]: values.pop(k) for k in list(values) if k.startswith("aug_")}
    trained = values.pop("trained_blocks", None)
    if trained is not None:
        values["freeze_blocks"] = max(0, get_backbone(base.backbone).blocks - base.remove_blocks - int(trained))
    return base.replace(augment=dataclasses.replace(base.augment, **aug), **values).validate()


class BestObjective(Objective):
    """The search's objective, with the best search's own parameters mapped onto a run's config."""

    def config_for(self, trial: optuna.trial.BaseTrial) -> RunConfig:
        return config_of(self.base, suggest(trial, self.space))


@dataclass(frozen=True)
class Request:
    """What ``python -m core best`` was asked."""

    data: str
    minutes: float
    base: RunConfig
    artifacts: str
    storage: str | None = None
    trials: int | None = None  # stop after this many finished trials too (default: only the minutes end it)
    space: dict[str, dict[str, Any]] | None = None  # narrows BEST_SPACE (tests); its first trials then are none

    @property
    def key(self) -> str:
        """Names the study and the record: one per dataset, backbone, weights, training set and seed."""
        from core.data.scan import scan_dataset

        base = self.base
        ident = [scan_dataset(self.data).fingerprint, base.backbone, base.weights, base.train_per_class, base.seed]
        small = f"-{base.train_per_class}pc" if base.train_per_class else ""
        return f"best{small}-{stable_hash(ident, 10)}"


def base_config(base: RunConfig) -> RunConfig:
    return base.replace(**BEST_BASE).validate()


def _settings(req: Request, space: Space) -> dict[str, Any]:
    from core.data.scan import scan_dataset

    return {
        "version": SETTINGS_VERSION, "kind": "best", "space": space, "fixed": dict(BEST_BASE),
        "base_config": base_config(req.base).to_dict(), "data_root": str(Path(req.data).resolve()),
        "data_fingerprint": scan_dataset(req.data).fingerprint, "sampler": "tpe", "pruner": "median",
        "seed": req.base.seed, "repeats": 1, "n_trials": TRIALS_CAP, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip


def _log_trial(t: FrozenTrial) -> None:
    """A trial's state and validation figure (never its test figure: that is read once, at the end)."""
    value = f" val {t.value:.4f}" if t.value is not None else ""
    logger.info("best trial %d %s%s %s", t.number, t.state.name, value, t.params)


def search(req: Request) -> optuna.Study:
    """Work on the request's study for its minutes (resumed where an earlier call stopped)."""
    if not req.minutes > 0:
        raise ConfigError(f"--minutes must be a positive number; received {req.minutes:g}.")
    if req.trials is not None and req.trials < 1:
        raise ConfigError(f"--trials must be at least 1; received {req.trials}.")
    space = check_best_space(req.space if req.space is not None else BEST_SPACE)
    url = resolve_storage_url(req.storage, req.artifacts)
    study, _ = create_or_resume(open_storage(url, heartbeat=True), req.key, settings=_settings(req, space))
    study.sampler = make_sampler("tpe", req.base.seed)
    study.pruner = make_pruner("median")
    if not study.get_trials(deepcopy=False) and req.space is None:
        for start in BEST_STARTS:
            study.enqueue_trial(start)
    store = Store(req.artifacts)
    objective = BestObjective(base_config(req.base), space, req.data, store)
    logger.info("best search %s for %g minutes (storage %s)", req.key, req.minutes, redact(url))
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) + (
        req.trials or TRIALS_CAP
    )
    run_worker(study, objective, n, timeout=req.minutes * 60.0, on_trial=_log_trial)
    return study


# -- choosing on validation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """What the selection may know of a run: its validation probabilities and labels, image size, finish time."""

    run_id: str
    val_probs: np.ndarray
    val_true: np.ndarray
    image_size: int
    finished_s: float  # seconds of search when the trial finished


@dataclass(frozen=True)
class Choice:
    """The selection's answer: one run, or an ensemble of runs, with its validation figures."""

    run_ids: tuple[str, ...]
    val_accuracy: float
    val_loss: float

    @property
    def is_ensemble(self) -> bool:
        return len(self.run_ids) > 1


def _score(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(validation accuracy, validation log-loss) of probabilities."""
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return float(np.mean(probs.argmax(1) == y)), float(-np.mean(np.log(picked)))


def _better(a: Choice, b: Choice | None) -> bool:
    return b is None or (a.val_accuracy, -a.val_loss) > (b.val_accuracy, -b.val_loss)


def choose(candidates: list[Candidate], max_members: int = MAX_MEMBERS) -> Choice:
    """The best run on validation, or the mean of the best few runs at its image size when that scores higher
    (accuracy, then log-loss); reads validation figures only."""
    if not candidates:
        raise ConfigError("The best search has no finished run to choose from yet; give it more minutes.")
    scored = sorted(((_score(c.val_probs, c.val_true), c) for c in candidates), key=lambda sc: (-sc[0][0], sc[0][1]))
    (acc, loss), top = scored[0]
    best = Choice((top.run_id,), acc, loss)
    same = [c for _, c in scored if c.image_size == top.image_size]
    for k in range(2, min(max_members, len(same)) + 1):
        members = same[:k]
        acc, loss = _score(np.mean([c.val_probs for c in members], axis=0), top.val_true)
        option = Choice(tuple(c.run_id for c in members), acc, loss)
        if _better(option, best):
            best = option
    return best


def candidates(study: optuna.Study, store: Store) -> list[Candidate]:
    """The study's finished trials whose runs hold validation probabilities, with when each finished."""
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)),
                  key=lambda t: t.datetime_complete or t.datetime_start)  # fmt: skip
    out, elapsed = [], 0.0
    for t in done:
        if t.datetime_start is not None and t.datetime_complete is not None:
            elapsed += (t.datetime_complete - t.datetime_start).total_seconds()
        run_id = t.user_attrs.get("run_id")
        record = store.load_run(run_id) if t.state == TrialState.COMPLETE and run_id else None
        preds = (record.predictions() or {}) if record is not None else {}
        if "val_probs" in preds:
            out.append(Candidate(record.run_id, np.asarray(preds["val_probs"]), np.asarray(preds["val_true"]),
                                 int(record.config["run"]["image_size"]), elapsed))  # fmt: skip
    return out


def search_seconds(study: optuna.Study) -> float:
    """The search's cost: the wall time of its trials, over every call that worked on it."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
               if t.datetime_start is not None and t.datetime_complete is not None)  # fmt: skip


# -- the winner ----------------------------------------------------------------------------------------
def store_choice(choice: Choice, store: Store, meta: dict[str, Any] | None = None) -> RunRecord:
    """The winner as a stored record: its run, or an ensemble record of its runs."""
    from core.training.ensemble import save_ensemble

    records = [store.load_run(r) for r in choice.run_ids]
    missing = [r for r, rec in zip(choice.run_ids, records, strict=True) if rec is None]
    if missing:
        raise ConfigError(f"Run {missing[0]} chosen by the best search is no longer stored; run the search again.")
    if not choice.is_ensemble:
        return records[0]  # type: ignore[return-value]
    return save_ensemble(store, records, meta=meta)  # type: ignore[arg-type]


def recipe(record: RunRecord) -> list[dict[str, Any]]:
    """The run settings of the winner (of each member of an ensemble)."""
    runs = record.config.get("ensemble", {}).get("runs") if record.members else None
    return list(runs) if runs else [record.config["run"]]


def recipe_text(runs: list[dict[str, Any]]) -> str:
    """A winner's recipe in words: "efficientnet_lite0 at 160 px, last 1 block fine-tuned, Adam 3.0e-04, 10 epochs,
    dropout 0.30, test-time flip" (an ensemble: "mean of N runs: " and each run's)."""
    from core.models.backbones import get_backbone

    def one(run: dict[str, Any]) -> str:
        trained = (
            get_backbone(run["backbone"]).blocks - int(run.get("remove_blocks", 0)) - int(run.get("freeze_blocks", 0))
        )
        parts = [f"{run['backbone']} at {run['image_size']} px", f"last {trained} block{'s' * (trained != 1)} fine-tuned",
                 f"{str(run['optimizer']).capitalize()} {float(run['lr']):.1e}", f"{run['epochs']} epochs",
                 f"dropout {float(run['dropout']):.2f}"]  # fmt: skip
        if run.get("reduce_lr_patience"):
            parts.append(f"reduce-LR after {run['reduce_lr_patience']}")
        if (run.get("augment") or {}).get("hflip"):
            parts.append("flips")
        if run.get("tta"):
            parts.append("test-time flip")
        return ", ".join(parts)

    if len(runs) == 1:
        return one(runs[0])
    return f"mean of {len(runs)} runs: " + "; ".join(one(r) for r in runs)


def run_best(req: Request) -> dict[str, Any]:
    """Search for ``req.minutes``, choose on validation, store the winner; its test accuracy is read here, once."""
    t0 = time.monotonic()
    study = search(req)
    store = Store(req.artifacts)
    pool = candidates(study, store)
    choice = choose(pool)
    record = store_choice(choice, store, meta={"best_search": req.key})
    out = {
        "key": req.key, "run_id": record.run_id, "kind": "ensemble" if choice.is_ensemble else "run",
        "members": list(choice.run_ids), "val_accuracy": round(choice.val_accuracy, 4),
        "val_loss": round(choice.val_loss, 4), "test_accuracy": record.metrics.get("test_accuracy"),
        "recipe": recipe(record), "recipe_text": recipe_text(recipe(record)), "minutes": round(search_seconds(study) / 60.0, 2),
        "minutes_this_call": round((time.monotonic() - t0) / 60.0, 2), "trials": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))),
        "runs": len(pool), "study": req.key, "storage": redact(resolve_storage_url(req.storage, req.artifacts)),
        "data": str(Path(req.data).resolve()), "data_fingerprint": record.config.get("dataset", {}).get("fingerprint"),
        "backbone": req.base.backbone, "train_per_class": req.base.train_per_class, "seed": req.base.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    atomic_write_json(_record_dir(store) / f"{req.key}.json", out)
    return out


def _record_dir(store: Store) -> Path:
    path = store.root / BEST_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def best_records(store: Store) -> list[dict[str, Any]]:
    """Every stored best search's record (what the Study page shows), newest first; unreadable ones skipped."""
    folder = store.root / BEST_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("run_id"):
            out.append(data)
    return sorted(out, key=lambda d: str(d.get("created", "")), reverse=True)
