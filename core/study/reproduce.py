"""The study reproduced as a whole: every row of its table trained (cheapest first) and read back as one table.

``plan(base)`` lists the rows (``core.study.plan``) and the task-5 search; ``table`` reads what is stored
(runs and the search study) without training anything; ``estimate`` says what the missing rows will
cost on this machine from measured throughput; ``reproduce`` trains what is missing, in order, then
completes the search. The Study page and ``python -m core reproduce`` share all of it.

A :class:`Plan` names the mode (``quick``: frozen backbone; ``faithful``: the study's fine-tuning, see
``core.study.plan``), the repeats (seeds per row), the fine-tuned depth, the grid sample and the search's
trials. Each row's figure is the mean over its seeds with a 95% interval (``core.study.claims``), and
``claims`` checks the study's conclusions on those figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig, stable_hash
from core.errors import SceneLabError
from core.search.request import TUNE_DEFAULTS, StudyRequest
from core.store.atomic import atomic_write_json
from core.store.folders import RunRecord, Store
from core.study import reference as ref
from core.study.claims import Claim, Estimate, study_claims
from core.study.claims import estimate as figure_estimate
from core.study.plan import (
    DEFAULT_GRID_SAMPLE,
    DEFAULT_TRAINED_BLOCKS,
    DEFAULT_TRIALS,
    Plan,
    Row,
    finetuned,
    study_rows,
)
from core.training.identity import Prepared, prepare
from core.training.throughput import run_cost

logger = logging.getLogger(__name__)

#: the faithful search's fine-tuning phase: fewer epochs than a row's 15, so 30 trials fit the time budget
SEARCH_FULL_EPOCHS = 8
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class RowResult:
    """One row of the reproduced table: the study's figure beside ours (the mean over the row's seeds)."""

    task: str
    setting: str
    study: float | None
    ours: float | None  # test accuracy of the row's run (mean over its seeds)
    val: float | None
    run_id: str | None
    seconds: float | None
    cached: bool  # every run of the row is stored
    page: str
    done: int = 0  # runs of the row stored
    runs: int = 1
    key: str = ""
    mode: str = "quick"
    low: float | None = None  # 95% interval of ``ours`` (seeds and test-set sampling)
    high: float | None = None
    n: int = 0  # seeds measured
    run_ids: list[str] = field(default_factory=list)  # every seed's run (the first is ``run_id``)
    tests: list[float] = field(default_factory=list)
    reason: str | None = None  # why the row cannot be trained here (one sentence)
    all_ids: list[str] = field(default_factory=list)  # every run of the row (its configs and repeats)
    stored_ids: list[str] = field(default_factory=list)
    figures: dict[str, Estimate | None] = field(default_factory=dict, repr=False)  # "test", "gap" for claims

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("figures")
        return out


def search_request(base: RunConfig, data_root: str, artifacts: str, trials: int = DEFAULT_TRIALS,
                   mode: str = "quick", trained_blocks: int = DEFAULT_TRAINED_BLOCKS) -> StudyRequest:  # fmt: skip
    """Task 5: a search named after the backbone, weights, image size, seed and mode, with tune's defaults.

    ``faithful`` searches the study's hyperparameters of fine-tuning: every trial trains the head, then the
    network (at a tenth of the trial's learning rate, as task 0), and the fine-tuned depth is searched too."""
    cfg = base.replace(phase="head", epochs=TUNE_DEFAULTS["epochs"], tta=True,
                       augment=base.augment.__class__(hflip=True))  # fmt: skip
    explicit: dict[str, Any] = {"backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size,
                                "seed": cfg.seed}  # fmt: skip
    space = None
    if mode == "faithful":
        tuned = finetuned(cfg, trained_blocks)
        cfg = tuned.replace(full_lr=None, full_epochs=SEARCH_FULL_EPOCHS)
        explicit.update(phase=cfg.phase, full_epochs=cfg.full_epochs)
        space = {"freeze_blocks": {"type": "categorical", "choices": sorted({max(0, tuned.freeze_blocks - 1),
                                                                             tuned.freeze_blocks})}}  # fmt: skip
    data = str(Path(data_root).expanduser().resolve())
    tag = "" if mode == "quick" else f"-{mode}"
    name = f"study{tag}-{cfg.backbone}-{cfg.image_size}px-{stable_hash({'b': cfg.to_dict(), 'd': data}, 8)}"
    req = StudyRequest(study=name, cfg=cfg, explicit=explicit, data=data, trials=trials, artifacts=artifacts)
    if space is not None:
        req.space_file = str(_space_file(artifacts, name, space))
    return req


def _space_file(artifacts: str, name: str, space: dict[str, Any]) -> Path:
    """The faithful search's space additions as a ``--space`` file (its workers may be other processes)."""
    from core.store.atomic import atomic_write_json

    path = Path(artifacts) / "studies" / f"{name}.space.json"
    if not path.exists():
        atomic_write_json(path, space)
    return path


def plan(base: RunConfig, grid_sample: int = DEFAULT_GRID_SAMPLE, how: Plan | None = None) -> list[Row]:
    """The study's rows for ``base`` (the backbone, weights, image size, seed and flip of the user's choice)."""
    how = how or Plan(grid_sample=grid_sample)
    return study_rows(base, how.grid_sample, seed=base.seed, mode=how.mode, repeats=how.repeats,
                      trained_blocks=how.trained_blocks)  # fmt: skip


def _stored(cfg: RunConfig, data_root: str, store: Store, info: Any = None) -> tuple[str | None, RunRecord | None]:
    prep = prepare(cfg, data_root, info)
    record = prep.stored(store)
    return (record.run_id if record else prep.run_id), record


def _scan(data_root: str) -> Any:
    """One scan of the dataset for every config of a table (a scan stats every image: 50 ms on MIT_split)."""
    from core.data.scan import scan_dataset

    try:
        return scan_dataset(data_root)
    except SceneLabError:
        return None  # each row then says why, in its own sentence


def _clip(x: float) -> float:
    """An accuracy's interval end, within 0..1."""
    return round(min(1.0, max(0.0, x)), 4)


def _gap(m: dict[str, Any]) -> float | None:
    train, val = m.get("train_accuracy"), m.get("val_accuracy")
    return None if train is None or val is None else train - val


def row_result(row: Row, data_root: str, store: Store, mode: str = "quick", info: Any = None) -> RowResult:
    """The row as it stands in the store: its first config's figure over every seed, and how much is stored."""
    result = RowResult(row.task, row.setting, row.study, None, None, None, None, False, row.page, 0,
                       len(row.configs) + len(row.repeats), row.key, mode)  # fmt: skip
    try:
        found = [_stored(c, data_root, store, info) for c in row.configs]
        seeds = [found[0], *(_stored(c, data_root, store, info) for c in row.repeats)]
    except SceneLabError as exc:
        result.reason = str(exc)
        return result
    result.all_ids = [rid for rid, _ in (*found, *seeds[1:]) if rid]
    result.stored_ids = [rid for rid, r in (*found, *seeds[1:]) if rid and r is not None]
    records = [r for _, r in seeds if r is not None]
    result.run_id = seeds[0][0]
    result.run_ids = [rid for rid, _ in seeds if rid]
    result.done = sum(r is not None for _, r in found) + sum(r is not None for _, r in seeds[1:])
    result.cached = result.done == result.runs
    if not records:
        return result
    metrics = [r.metrics for r in records]
    result.tests = [m["test_accuracy"] for m in metrics if m.get("test_accuracy") is not None]
    test = figure_estimate(result.tests, metrics[0].get("n_test"))
    vals = [m["val_accuracy"] for m in metrics if m.get("val_accuracy") is not None]
    gaps = [g for g in map(_gap, metrics) if g is not None]
    result.figures = {"test": test, "gap": figure_estimate(gaps, metrics[0].get("n_val"))}
    result.n = len(result.tests)
    if test is not None:
        result.ours, result.low, result.high = round(test.mean, 4), _clip(test.low), _clip(test.high)
    result.val = round(sum(vals) / len(vals), 4) if vals else None
    result.seconds = round(sum(float(m.get("seconds") or 0.0) for m in metrics) / len(metrics), 1)
    return result


def _storage_stamp(url: str, store: Store | None) -> list[Any] | None:
    """What a local storage's files (SQLite with its journal files, or an Optuna journal) and the runs folder
    look like now; None for a database server (its rows are always read)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
    elif "://" not in url:
        path = Path(url)
    else:
        return None
    try:
        files = sorted(path.parent.glob(path.name + "*"))
        stamp: list[Any] = [[f.name, f.stat().st_mtime_ns, f.stat().st_size] for f in files]
        if store is not None and store.runs_dir.is_dir():
            stamp.append(store.runs_dir.stat().st_mtime_ns)
    except OSError:
        return None
    return stamp if files else None


def search_result(req: StudyRequest, store: Store | None = None, mode: str = "quick") -> RowResult:
    """Task 5's row from the search study's storage (nothing trained). With a local storage the row is kept
    beside it until a trial lands (``studies/.rows/``): the Study page and ``reproduce`` then answer without
    opening the storage (a second and a half on 2 busy cores)."""
    stamp = _storage_stamp(req.storage_url, store)
    cached = None
    if stamp is not None:
        cached = Path(req.artifacts_root) / "studies" / ".rows" / f"{stable_hash([req.study, req.trials, mode])}.json"
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            kept = json.loads(cached.read_text())
            if kept["stamp"] == stamp:
                return _row_from_dict(kept["row"])
    row = _search_row(req, store, mode)
    if cached is not None:
        figures = {k: None if e is None else [e.mean, e.half, e.n] for k, e in row.figures.items()}
        with contextlib.suppress(SceneLabError, OSError):
            atomic_write_json(cached, {"stamp": stamp, "row": {**row.as_dict(), "figures": figures}})
    return row


def _row_from_dict(d: dict[str, Any]) -> RowResult:
    figures = {k: None if v is None else Estimate(*v) for k, v in d.pop("figures").items()}
    return RowResult(**d, figures=figures)


def _search_row(req: StudyRequest, store: Store | None, mode: str) -> RowResult:
    from core.search.storage import open_storage
    from core.search.summaries import summary

    row = RowResult("5", f"hyperparameter search, {req.trials} trials", ref.SWEEP["best_accuracy"], None, None, None,
                    None, False, "search", 0, req.trials or DEFAULT_TRIALS, "t5-search", mode)  # fmt: skip
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
    if row.ours is not None:
        best = figures.get("best_trial")
        attrs = next((t.user_attrs for t in study.get_trials(deepcopy=False) if t.number == best), {})
        row.tests = [float(x) for x in attrs.get("test_accuracies") or [row.ours]]
        record = store.load_run(row.run_id) if store is not None and row.run_id else None
        n_test = (record.metrics.get("n_test") if record is not None else None) or attrs.get("n_test")
        test = figure_estimate(row.tests, n_test)
        row.figures = {"test": test}
        row.run_ids, row.n = [row.run_id], len(row.tests)
        if test is not None and n_test:
            row.low, row.high = _clip(test.low), _clip(test.high)
    return row


def table(base: RunConfig, data_root: str, store: Store, *, trials: int = DEFAULT_TRIALS,
          grid_sample: int = DEFAULT_GRID_SAMPLE, how: Plan | None = None, info: Any = None) -> list[RowResult]:  # fmt: skip
    """Every row as it stands in the store and the search storage (``info``: the dataset's scan, if at hand)."""
    how = how or Plan(grid_sample=grid_sample, trials=trials)
    info = info if info is not None else _scan(data_root)
    rows = [row_result(r, data_root, store, how.mode, info) for r in plan(base, how=how)]
    if how.trials:
        req = search_request(base, data_root, str(store.root), how.trials, how.mode, how.trained_blocks)
        rows.append(search_result(req, store, how.mode))
    return rows


def claims(rows: list[RowResult]) -> list[Claim]:
    """The study's conclusions checked on ``rows`` (one mode's table)."""
    return study_claims({r.key: r.figures for r in rows})


def missing_runs(base: RunConfig, data_root: str, store: Store, grid_sample: int = DEFAULT_GRID_SAMPLE,
                 how: Plan | None = None, info: Any = None) -> list[Prepared]:  # fmt: skip
    """The runs not stored yet, each once, cheapest first (so cached rows fill in at once); a run that
    cannot be prepared here (weights missing offline, a cut the backbone does not have) raises its sentence."""
    seen: dict[str, Prepared] = {}
    info = info if info is not None else _scan(data_root)
    for row in plan(base, grid_sample, how):
        for cfg in (*row.configs, *row.repeats):
            prep = prepare(cfg, data_root, info)
            if prep.run_id not in seen and prep.stored(store) is None:
                seen[prep.run_id] = prep
    return sorted(seen.values(), key=lambda p: _order(p, store))


def _order(prep: Prepared, store: Store) -> tuple[int, int, int, float]:
    """Heads on cached features first, the whole network's cut first (its pass caches every cut's features),
    then augmented heads, then runs that train the backbone (by fine-tuned depth: one prefix pass serves
    every run at a depth); cheapest first within each."""
    cfg = prep.cfg
    kind = 2 if cfg.phase != "head" else (0 if cfg.uses_feature_cache else 1)
    return kind, cfg.remove_blocks if kind == 0 else 0, -cfg.freeze_blocks, run_cost(prep, store).seconds


def _trial_seconds(req: StudyRequest, data_root: str, store: Store, info: Any = None) -> tuple[float, bool]:
    """One search trial's cost from this machine's measured throughput (its run, times its seeds; pruning
    only shortens it) and whether that is measured here rather than rough."""
    from core.search.objective import resolve_repeats

    prep = prepare(req.cfg, data_root, info)
    cost = run_cost(prep, store)
    return (cost.seconds - cost.feature_seconds) * resolve_repeats(req.repeats, req.cfg), cost.measured


def estimate(base: RunConfig, data_root: str, store: Store, *, trials: int = DEFAULT_TRIALS,
             grid_sample: int = DEFAULT_GRID_SAMPLE, how: Plan | None = None) -> float:  # fmt: skip
    """Seconds the missing rows will take on this machine (measured throughput of the backbone at this size);
    a feature cache that several runs share is counted once."""
    return estimate_detail(base, data_root, store, how=how or Plan(grid_sample=grid_sample, trials=trials))[0]


def estimate_detail(base: RunConfig, data_root: str, store: Store, how: Plan, info: Any = None) -> tuple[float, bool]:
    """(seconds, measured): measured is False when part of it is a rough share, not this machine's own runs."""
    total, computed, measured = 0.0, set(), True
    for prep in missing_runs(base, data_root, store, how=how, info=info):
        cost = run_cost(prep, store)
        measured = measured and cost.measured
        shared = cost.feature_key in computed
        total += cost.seconds - (cost.feature_seconds if shared else 0.0)
        if cost.feature_key:
            computed.add(cost.feature_key)
    if how.trials:
        req = search_request(base, data_root, str(store.root), how.trials, how.mode, how.trained_blocks)
        done = search_result(req, None, how.mode).done
        trial, trial_measured = _trial_seconds(req, data_root, store, info)
        total += max(0, how.trials - done) * trial
        measured = measured and (trial_measured or done >= how.trials)
    return total, measured


def reproduce(
    base: RunConfig, data_root: str, store: Store, *, trials: int = DEFAULT_TRIALS,
    grid_sample: int = DEFAULT_GRID_SAMPLE, progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None, how: Plan | None = None,
) -> dict[str, Any]:
    """Train every missing run (cheapest first), then complete the search; return the table and seconds."""
    from core.search.study import run_study
    from core.training.train import train

    how = (how or Plan(grid_sample=grid_sample, trials=trials)).check()
    t0 = time.monotonic()
    todo = missing_runs(base, data_root, store, how=how)
    for i, prep in enumerate(todo):
        if should_stop is not None and should_stop():
            break
        if progress is not None:
            progress({"event": "run", "done": i, "total": len(todo), "config": prep.cfg.to_dict()})
        t_run = time.monotonic()
        result = train(prep.cfg, data_root, store, should_stop=should_stop)
        logger.info("run %d of %d: %s in %.1f s (test %.3f)", i + 1, len(todo), result.run_id, time.monotonic() - t_run,
                    result.record.metrics.get("test_accuracy") or 0.0)  # fmt: skip
    if how.trials and not (should_stop is not None and should_stop()):
        if progress is not None:
            progress({"event": "search", "done": len(todo), "total": len(todo)})
        run_study(search_request(base, data_root, str(store.root), how.trials, how.mode, how.trained_blocks))
    rows = table(base, data_root, store, how=how)
    return {"rows": [r.as_dict() for r in rows], "claims": [c.as_dict() for c in claims(rows)],
            "seconds": round(time.monotonic() - t0, 1), "trained": len(todo)}  # fmt: skip


def json_rows(rows: list[RowResult]) -> list[dict[str, Any]]:
    """The CLI's rows: task, setting, study, ours (mean), its 95% interval, val, run ids, seconds, cached."""
    keys = ("task", "setting", "key", "mode", "study", "ours", "low", "high", "n", "val", "run_id", "run_ids", "seconds",
            "cached", "reason")  # fmt: skip
    return [{k: getattr(r, k) for k in keys} for r in rows]


def report_context(base: RunConfig, data_root: str, how: Plan | None = None) -> dict[str, Any]:
    how = how or Plan()
    return {"dataset": Path(data_root).name, "backbone": base.backbone, "weights": base.weights,
            "image_size": base.image_size, "seed": base.seed, "tta": base.tta, "mode": how.mode,
            "repeats": how.repeats}  # fmt: skip
