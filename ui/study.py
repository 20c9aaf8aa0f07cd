"""The Study page's parts: the table, the links to each row's page, and the reproduction as a background task.

The reproduction runs in the app's process (``core.tasks.Task``), so it survives page changes and browser
reloads: it queues every missing run on the app's one training worker (cheapest first, so rows fill in as
they finish), then runs the task-5 search as a background ``core tune`` process, and can be cancelled
(finished rows are kept).
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.config import RunConfig
from core.errors import SceneLabError
from core.search import processes
from core.store.folders import Store
from core.study import reproduce
from core.study.plan import MODE_LABELS, MODES, Row
from core.tasks import TaskCancelled
from core.training import throughput
from core.worker import isolate_keras_sessions
from ui.resources import dataset_report, get_task, get_worker, start_task
from ui.settings import is_admin, user_name

TASK = "reproduce-the-study"
#: seeds per row the page asks for by default: what fits an hour on a 2-core laptop (mit_split_64, Lite0,
#: 128 px): quick rows are heads on cached features (seconds each); a faithful row fine-tunes for a minute or more
DEFAULT_REPEATS = {"quick": 3, "faithful": 1}


def _stamp(store: Store) -> tuple[int, ...]:
    """What changes when a run or a search trial lands (the runs folder, the studies folder's files)."""
    out: list[int] = []
    for folder in (Path(store.runs_dir), Path(store.root) / "studies"):
        try:
            st_ = folder.stat()
            out += [st_.st_mtime_ns, st_.st_nlink]
            out += [p.stat().st_mtime_ns for p in sorted(folder.glob("*.db*"))]
        except OSError:
            out += [0, 0]
    return tuple(out)


@st.cache_data(max_entries=32, show_spinner=False)
def _table(base: dict[str, Any], data_root: str, artifacts: str, how: reproduce.Plan,
           stamp: tuple[int, ...]) -> list[reproduce.RowResult]:  # fmt: skip
    info = dataset_report(data_root, show_error=False)  # the page's scan (cached a minute), not one more
    return reproduce.table(RunConfig.from_dict(base), data_root, Store(artifacts), how=how, info=info)


def cached_table(base: RunConfig, data_root: str, store: Store, how: reproduce.Plan) -> list[reproduce.RowResult]:
    """The mode's table, read again only when a run or a trial has landed (a page rerun costs nothing else)."""
    return _table(base.to_dict(), str(data_root), str(store.root), how, _stamp(store))


@st.cache_data(max_entries=32, show_spinner=False)
def _estimate(base: dict[str, Any], data_root: str, artifacts: str, how: reproduce.Plan,
              stamp: tuple[int, ...]) -> tuple[float, bool] | None:  # fmt: skip
    return known_estimate(RunConfig.from_dict(base), data_root, Store(artifacts), how)


def cached_estimate(base: RunConfig, data_root: str, store: Store, how: reproduce.Plan) -> tuple[float, bool] | None:
    """(seconds, measured) of the mode's missing runs, or None until this machine's speed is known."""
    measured = throughput.known(base.backbone, base.image_size, Path(store.root)) is not None
    return _estimate(base.to_dict(), str(data_root), str(store.root), how, (*_stamp(store), measured))


def differences(base: RunConfig, source: str, image_size: int) -> str:
    """The "What differs from the study" box: the data, the backbone, the selection, and per task what each
    mode trains (frozen or fine-tuned, epochs, frozen prefix)."""
    from core.models.backbones import get_backbone
    from core.study.plan import FAITHFUL, FINETUNE, finetuned

    spec = get_backbone(base.backbone)
    tuned = finetuned(base.replace(phase="head"))
    head_epochs, full_epochs = base.epochs, FAITHFUL["full_epochs"]
    return "\n".join([
        f"- **Data:** {source}, resized to {image_size} px (the study: the 256 px originals).",
        f"- **Backbone:** {spec.label} (the study: DenseNet121), ImageNet weights.",
        "- **Selection:** the study picked its models on its test folder; here early stopping and the search look "
        "only at a validation split carved from the training folder, and test accuracy is the figure.",
        "- **Epochs:** the study trained for up to 300 epochs on a GPU; here each head trains "
        f"{head_epochs} epochs on cached features, and faithful rows then fine-tune {full_epochs} epochs.",
        f"- **Backbone frozen (quick):** tasks 1-5 train a new head only; task 0 fine-tunes every layer for "
        f"{FINETUNE['full_epochs']} epochs after the head.",
        f"- **Fine-tuned (faithful):** every row trains the head, then fine-tunes the network's last "
        f"{spec.block_word} at {FAITHFUL['full_lr']:g} (Adam): the first {tuned.freeze_blocks} of {spec.blocks} "
        f"{spec.block_word}s stay frozen, their output computed once and cached (the study fine-tuned every layer; "
        "on a CPU that would take hours). Cut networks (task 1) fine-tune their own last remaining block.",
        "- **Tasks 2-4** train on the small set (50 images per class), as the study did; task 5 searches the "
        "optimizer, learning rate, weight decay, momentum, dropout, batch size and batch norm (faithful: also "
        "the fine-tuned depth) with Optuna instead of a W&B random sweep.",
    ])  # fmt: skip


def row_link(row: Row, cfg: RunConfig | None) -> str:
    """The row's page with its settings in the URL (``ui.links`` restores them); none that the page fixes
    (page 4 trains on the study's best augmentation, which its "Best augmentation" toggle stands for)."""
    if cfg is None or row.page == "search":
        return f"/{row.page}"
    values = cfg.to_dict()
    params = {k: v for k, v in values.items() if k not in ("backbone", "weights", "image_size", "seed", "tta", "augment")
              and v != RunConfig().to_dict()[k]}  # fmt: skip
    from core.study.plan import STUDY_BEST_AUG

    if not (row.page == "regularisation" and cfg.augment == STUDY_BEST_AUG):  # page 4's toggle, on by default
        params.update({k: v for k, v in values["augment"].items() if v})
    params.update({"backbone": cfg.backbone, "weights": cfg.weights, "size": cfg.image_size, "seed": cfg.seed,
                   "tta": int(cfg.tta)})  # fmt: skip
    text = {k: ("none" if v is None else int(v) if isinstance(v, bool) else v) for k, v in params.items()}
    return f"/{row.page}?{urllib.parse.urlencode(text)}"


def _figure(r: reproduce.RowResult | None) -> str:
    """``0.916 (0.897–0.935)``: the row's mean test accuracy and its 95% interval; what is missing otherwise."""
    if r is None:
        return "–"
    if r.reason:
        return "cannot train here"
    if r.ours is None:
        return f"{r.done} of {r.runs} runs" if r.done else "not trained yet"
    text = f"{r.ours:.3f}"
    if r.low is not None and r.high is not None:
        text += f" ({r.low:.3f}–{r.high:.3f})"
    if r.n > 1:
        text += f" · {r.n} seeds"
    return text if r.cached else f"{text} · {r.done}/{r.runs} runs"


def best_model_frame(store: Store, fingerprints: set[str]) -> pd.DataFrame:
    """The study's best figures beside the best models ``python -m core best`` stored for this dataset (read from
    their records under ``<artifacts>/best/``: nothing trains here), the newest of each training set."""
    from core.search.best import best_records, recipe_text
    from core.study import reference as ref

    small = max(ref.SMALL_DATA["accuracy"], ref.AUGMENTATION_BEST["accuracy"], ref.REGULARISATION_BEST["accuracy"])
    rows: list[dict[str, Any]] = [
        {"model": "the study's best", "training set": "full", "test accuracy": f"{ref.TRUNCATION_300_EPOCHS:.4f}",
         "recipe": f"{ref.STUDY_MODEL}, 300 epochs on a GPU ({ref.SELECTION_NOTE})", "cost": "–", "run": "–"},
        {"model": "the study's best", "training set": f"small ({ref.SMALL_DATA['per_class']} per class)",
         "test accuracy": f"{small:.4f}", "recipe": f"{ref.STUDY_MODEL} ({ref.SELECTION_NOTE})", "cost": "–", "run": "–"},
    ]  # fmt: skip
    seen: set[Any] = set()
    for rec in best_records(store):  # newest first
        per_class = rec.get("train_per_class")
        if rec.get("data_fingerprint") not in fingerprints or per_class in seen:
            continue
        seen.add(per_class)
        kind = f"ensemble of {len(rec.get('members', []))}" if rec.get("kind") == "ensemble" else "one run"
        rows.append({"model": f"Best model ({kind}, chosen on validation)",
                     "training set": f"small ({per_class} per class)" if per_class else "full",
                     "test accuracy": f"{rec['test_accuracy']:.4f} (validation {rec.get('val_accuracy', float('nan')):.4f})",
                     "recipe": recipe_text(rec["recipe"]) if rec.get("recipe") else "", "cost": f"{rec.get('minutes', 0):.1f} min of search",
                     "run": rec["run_id"]})  # fmt: skip
    return pd.DataFrame(rows)


def table_frame(by_mode: dict[str, list[reproduce.RowResult]], rows: list[Row]) -> pd.DataFrame:
    """One line per row of the study: its figure, then each mode's (frozen, fine-tuned) with its interval."""
    keyed = {m: {r.key: r for r in results} for m, results in by_mode.items()}
    first = next(iter(by_mode.values()))
    out = []
    for r in first:
        row = next((x for x in rows if x.key == r.key), None)
        line: dict[str, Any] = {"task": r.task, "setting": r.setting, "the study": r.study}
        for mode in MODES:
            line[MODE_LABELS[mode]] = _figure(keyed.get(mode, {}).get(r.key))
        ids = [keyed[m][r.key].run_id for m in MODES if r.key in keyed.get(m, {}) and keyed[m][r.key].run_id]
        line["runs"] = " · ".join(dict.fromkeys(ids)) or "–"
        line["page"] = row_link(row, row.configs[0] if row and row.configs else None) if row else "/search"
        reasons = [keyed[m][r.key].reason for m in MODES if r.key in keyed.get(m, {}) and keyed[m][r.key].reason]
        line["why not"] = reasons[0] if reasons else ""
        out.append(line)
    return pd.DataFrame(out)


def claims_frame(by_mode: dict[str, list[reproduce.RowResult]]) -> pd.DataFrame:
    """The study's conclusions, one line each, with each mode's verdict, difference and interval."""
    per_mode = {m: reproduce.claims(results) for m, results in by_mode.items()}
    first = next(iter(per_mode.values()))
    out = []
    for i, c in enumerate(first):
        line = {"the study's conclusion": c.claim, "compared": c.measure}
        for mode, claims in per_mode.items():
            k = claims[i]
            line[MODE_LABELS[mode]] = k.verdict if k.diff is None else (
                f"{k.verdict}: {fmt_signed(k.diff)} ({fmt_signed(k.low)} to {fmt_signed(k.high)})")  # fmt: skip
        out.append(line)
    return pd.DataFrame(out)


def fmt_signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}".replace("-", "−")


def training_where(task: Any) -> str:
    """Where the reproduction's runs train now and how many wait, for its progress line ("" when unknown)."""
    progress = getattr(task, "progress", None) or {}
    where, queued = progress.get("where") or [], progress.get("queued") or 0
    text = f" · training on {', '.join(where)}" if where else ""
    return text + (f" · {queued} queued" if queued else "")


def progress_counts(results: list[reproduce.RowResult]) -> tuple[int, int, int, int]:
    """(runs stored, runs in the plan, search trials finished, trials asked): each run counted once, as the
    table's rows share runs (task 1's uncut network is task 0's run, task 2's full set too)."""
    every = {rid for r in results if r.key != "t5-search" for rid in r.all_ids}
    stored = {rid for r in results if r.key != "t5-search" for rid in r.stored_ids}
    search = next((r for r in results if r.key == "t5-search"), None)
    return len(stored), len(every), (search.done if search else 0), (search.runs if search else 0)


def known_estimate(base: RunConfig, data_root: str, store: Store, how: reproduce.Plan) -> tuple[float, bool] | None:
    """The estimate when this machine's throughput for the backbone and size is known (else None: measuring
    takes seconds, which a page rerun must not spend; :func:`measure_speed` does it in the background)."""
    if not throughput.known(base.backbone, base.image_size, Path(store.root)) is not None:
        return None
    try:
        return reproduce.estimate_detail(base, data_root, store, how, info=dataset_report(data_root, show_error=False))
    except SceneLabError:
        return None


def _measure_name(base: RunConfig) -> str:
    return f"measure-{base.backbone}@{base.image_size}"


def measure_speed(base: RunConfig, store: Store) -> Any:
    """Measure this machine's speed for the backbone and size in a background task (seconds, once)."""
    root = Path(store.root)

    def measure(progress: Any, stop: Any) -> Any:
        # this thread builds models while Streamlit clears Keras' session after every page run: make clearing
        # thread-local first (the worker does the same when its thread starts)
        isolate_keras_sessions()
        return throughput.measure(base.backbone, base.image_size, root)

    return start_task(_measure_name(base), measure)


def measuring(base: RunConfig) -> Any:
    """The speed measurement's task view (None when none was started)."""
    task = get_task(_measure_name(base))
    return None if task is None else task.view()


def _wait_jobs(job_ids: list[str], total: int, progress: Any, should_stop: Any) -> None:
    worker = _captured_worker()
    while True:
        jobs = [worker.get(i) for i in job_ids]
        active = [j for j in jobs if j is not None and j.active]
        done = sum(1 for j in jobs if j is not None and j.status == "done")
        where = sorted({j.where for j in active if j.status == "running" and j.where})
        progress({"event": "runs", "done": done, "total": total, "where": where,
                  "queued": sum(1 for j in active if j.status == "queued")})  # fmt: skip
        if not active:
            return
        if should_stop():
            for j in active:
                worker.cancel(j.id)
            raise TaskCancelled("The reproduction was cancelled; finished rows are kept.")
        time.sleep(1.0)


_WORKER: dict[str, Any] = {}


def _captured_worker() -> Any:
    """The app's worker, captured when the task started (a background thread has no Streamlit session)."""
    return _WORKER["worker"]


def _token() -> str:
    """This browser session's token (who started the reproduction may cancel it)."""
    return st.session_state.setdefault("_study_token", uuid.uuid4().hex)


def start_reproduction(base: RunConfig, data_root: str, store: Store, how: reproduce.Plan) -> None:
    """Queue every missing run, cheapest first, then the search; a background task of the app."""
    _WORKER["worker"] = get_worker()
    _WORKER["started_by"] = {"token": _token(), "name": user_name(), "mode": how.mode}

    def run(progress: Any, should_stop: Any) -> dict[str, Any]:
        todo = reproduce.missing_runs(base, data_root, store, how=how)
        jobs = [_captured_worker().submit(p.cfg, data_root) for p in todo]
        _wait_jobs([j.id for j in jobs], len(jobs), progress, should_stop)
        if how.trials:
            req = reproduce.search_request(base, data_root, str(store.root), how.trials, how.mode, how.trained_blocks)
            if not processes.live_workers(req.artifacts_root, req.study):
                processes.start_worker(req)
            while processes.live_workers(req.artifacts_root, req.study):
                if should_stop():
                    processes.stop_workers(req.artifacts_root, req.study)
                    raise TaskCancelled("The reproduction was cancelled; finished rows are kept.")
                progress({"event": "search", "done": reproduce.search_result(req).done, "total": how.trials})
                time.sleep(2.0)
        return {"trained": len(jobs)}

    start_task(TASK, run)


def started_by() -> dict[str, Any]:
    return dict(_WORKER.get("started_by") or {})


def may_cancel() -> bool:
    """Who started the reproduction (this session, or the same name) and the owner may cancel it."""
    who = started_by()
    if who.get("token") == _token() or (who.get("name") and who.get("name") == user_name()):
        return True
    return is_admin() and bool(os.environ.get("SCENELAB_ADMIN"))


def reproduction_status() -> Any:
    task = get_task(TASK)
    return None if task is None else task.view()


def cancel_reproduction() -> None:
    task = get_task(TASK)
    if task is not None and may_cancel():
        task.cancel()
