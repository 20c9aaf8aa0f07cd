"""The study reproduced as a whole: every row of its table trained (cheapest first) and read back as one table.

``plan(base)`` lists the rows (``core.studyplan``) and the task-5 search; ``table`` reads what is stored
(runs and the search study) without training anything; ``estimate`` says what the missing rows will
cost on this machine from measured throughput; ``reproduce`` trains what is missing, in order, then
completes the search. The Study page and ``python -m core reproduce`` share all of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import reference as ref
from core.config import RunConfig, stable_hash
from core.errors import SceneLabError
from core.identity import Prepared, prepare
from core.search.study import TUNE_DEFAULTS, StudyRequest
from core.store import RunRecord, Store
from core.studyplan import DEFAULT_GRID_SAMPLE, Row, study_rows
from core.throughput import run_cost

logger = logging.getLogger(__name__)

DEFAULT_TRIALS = 30
SEARCH_SECONDS_PER_TRIAL = 4.0  # heads on cached features, 3 seeds each (BENCHMARKS.md)
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class RowResult:
    """One row of the reproduced table: the study's figure beside ours."""

    task: str
    setting: str
    study: float | None
    ours: float | None  # test accuracy of the row's run
    val: float | None
    run_id: str | None
    seconds: float | None
    cached: bool  # every run of the row is stored
    page: str
    done: int = 0  # runs of the row stored
    runs: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def search_request(base: RunConfig, data_root: str, artifacts: str, trials: int = DEFAULT_TRIALS) -> StudyRequest:
    """Task 5: a search named after the backbone, weights, image size and seed, with tune's defaults."""
    cfg = base.replace(phase="head", epochs=TUNE_DEFAULTS["epochs"], tta=True,
                       augment=base.augment.__class__(hflip=True))  # fmt: skip
    data = str(Path(data_root).expanduser().resolve())
    name = f"study-{cfg.backbone}-{cfg.image_size}px-{stable_hash({'b': cfg.to_dict(), 'd': data}, 8)}"
    explicit = {"backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size, "seed": cfg.seed}
    return StudyRequest(study=name, cfg=cfg, explicit=explicit, data=data, trials=trials, artifacts=artifacts)


def plan(base: RunConfig, grid_sample: int = DEFAULT_GRID_SAMPLE) -> list[Row]:
    """The study's rows for ``base`` (the backbone, weights, image size, seed and flip of the user's choice)."""
    return study_rows(base, grid_sample, seed=base.seed)


def _stored(cfg: RunConfig, data_root: str, store: Store) -> tuple[str | None, RunRecord | None]:
    try:
        prep = prepare(cfg, data_root)
    except SceneLabError:
        return None, None
    record = prep.stored(store)
    return (record.run_id if record else prep.run_id), record


def row_result(row: Row, data_root: str, store: Store) -> RowResult:
    found = [_stored(c, data_root, store) for c in row.configs]
    run_id, record = found[0]
    m = record.metrics if record is not None else {}
    return RowResult(
        row.task, row.setting, row.study, m.get("test_accuracy"), m.get("val_accuracy"), run_id, m.get("seconds"),
        all(r is not None for _, r in found), row.page, sum(r is not None for _, r in found), len(found),
    )


def search_result(req: StudyRequest) -> RowResult:
    """Task 5's row from the search study's storage (nothing trained)."""
    from core.search.storage import open_storage
    from core.search.summaries import summary

    row = RowResult("5", f"hyperparameter search, {req.trials} trials", ref.SWEEP["best_accuracy"], None, None, None,
                    None, False, "search", 0, req.trials or DEFAULT_TRIALS)  # fmt: skip
    try:
        import optuna

        study = optuna.load_study(study_name=req.study, storage=open_storage(req.storage_url))
    except (KeyError, SceneLabError):
        return row
    figures = summary(study)
    row.done = figures["n_trials_complete"] + figures["n_trials_pruned"]
    row.cached = row.done >= row.runs
    row.ours, row.val, row.run_id = figures["best_test_accuracy"], figures["best_value"], figures["best_run_id"]
    durations = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False) if t.duration is not None]
    row.seconds = round(sum(durations), 1) if durations else None
    return row


def table(base: RunConfig, data_root: str, store: Store, *, trials: int = DEFAULT_TRIALS,
          grid_sample: int = DEFAULT_GRID_SAMPLE) -> list[RowResult]:  # fmt: skip
    """Every row as it stands in the store and the search storage."""
    rows = [row_result(r, data_root, store) for r in plan(base, grid_sample)]
    rows.append(search_result(search_request(base, data_root, str(store.root), trials)))
    return rows


def missing_runs(base: RunConfig, data_root: str, store: Store, grid_sample: int = DEFAULT_GRID_SAMPLE) -> list[Prepared]:
    """The runs not stored yet, each once, cheapest first (so cached rows fill in at once)."""
    seen: dict[str, Prepared] = {}
    for row in plan(base, grid_sample):
        for cfg in row.configs:
            try:
                prep = prepare(cfg, data_root)
            except SceneLabError:
                continue
            if prep.run_id not in seen and prep.stored(store) is None:
                seen[prep.run_id] = prep
    return sorted(seen.values(), key=lambda p: _order(p, store))


def _order(prep: Prepared, store: Store) -> tuple[int, int, float]:
    """Heads on cached features first, the whole network's cut first (its pass caches every cut's features),
    then augmented heads, then runs that train the backbone; cheapest first within each."""
    cfg = prep.cfg
    kind = 2 if cfg.phase != "head" else (0 if cfg.uses_feature_cache else 1)
    return kind, cfg.remove_blocks if kind == 0 else 0, run_cost(prep, store).seconds


def estimate(base: RunConfig, data_root: str, store: Store, *, trials: int = DEFAULT_TRIALS,
             grid_sample: int = DEFAULT_GRID_SAMPLE) -> float:  # fmt: skip
    """Seconds the missing rows will take on this machine (measured throughput of the backbone at this size);
    a feature cache that several runs share is counted once."""
    total, computed = 0.0, set()
    for prep in missing_runs(base, data_root, store, grid_sample):
        cost = run_cost(prep, store)
        shared = cost.feature_key in computed
        total += cost.seconds - (cost.feature_seconds if shared else 0.0)
        if cost.feature_key:
            computed.add(cost.feature_key)
    done = search_result(search_request(base, data_root, str(store.root), trials)).done
    return total + max(0, trials - done) * SEARCH_SECONDS_PER_TRIAL


def reproduce(
    base: RunConfig, data_root: str, store: Store, *, trials: int = DEFAULT_TRIALS,
    grid_sample: int = DEFAULT_GRID_SAMPLE, progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train every missing run (cheapest first), then complete the search; return the table and seconds."""
    from core.search.study import run_study
    from core.train import train

    t0 = time.monotonic()
    todo = missing_runs(base, data_root, store, grid_sample)
    for i, prep in enumerate(todo):
        if should_stop is not None and should_stop():
            break
        if progress is not None:
            progress({"event": "run", "done": i, "total": len(todo), "config": prep.cfg.to_dict()})
        t_run = time.monotonic()
        result = train(prep.cfg, data_root, store, should_stop=should_stop)
        logger.info("run %d of %d: %s in %.1f s (test %.3f)", i + 1, len(todo), result.run_id, time.monotonic() - t_run,
                    result.record.metrics.get("test_accuracy") or 0.0)  # fmt: skip
    if trials and not (should_stop is not None and should_stop()):
        if progress is not None:
            progress({"event": "search", "done": len(todo), "total": len(todo)})
        run_study(search_request(base, data_root, str(store.root), trials))
    rows = table(base, data_root, store, trials=trials, grid_sample=grid_sample)
    return {"rows": [r.as_dict() for r in rows], "seconds": round(time.monotonic() - t0, 1), "trained": len(todo)}


def json_rows(rows: list[RowResult]) -> list[dict[str, Any]]:
    """The CLI's rows: task, setting, study, ours, val, run_id, seconds, cached."""
    keys = ("task", "setting", "study", "ours", "val", "run_id", "seconds", "cached")
    return [{k: getattr(r, k) for k in keys} for r in rows]


def report_context(base: RunConfig, data_root: str) -> dict[str, Any]:
    return {"dataset": Path(data_root).name, "backbone": base.backbone, "weights": base.weights,
            "image_size": base.image_size, "seed": base.seed, "tta": base.tta}  # fmt: skip
