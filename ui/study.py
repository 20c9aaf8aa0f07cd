"""The Study page's parts: the table, the links to each row's page, and the reproduction as a background task.

The reproduction runs in the app's process (``core.tasks.Task``), so it survives page changes and browser
reloads: it queues every missing run on the app's one training worker (cheapest first, so rows fill in as
they finish), then runs the task-5 search as a background ``core tune`` process, and can be cancelled
(finished rows are kept).
"""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import reproduce
from core.config import RunConfig
from core.search import processes
from core.store import Store
from core.studyplan import Row
from core.tasks import TaskCancelled
from core.throughput import _cache as throughput_cache
from ui.resources import get_task, get_worker, start_task

TASK = "reproduce-the-study"


def row_link(row: Row, cfg: RunConfig | None) -> str:
    """The row's page with its settings in the URL (``ui.links`` restores them); none that the page fixes
    (page 4 trains on the study's best augmentation, which its "Best augmentation" toggle stands for)."""
    if cfg is None or row.page == "search":
        return f"/{row.page}"
    values = cfg.to_dict()
    params = {k: v for k, v in values.items() if k not in ("backbone", "weights", "image_size", "seed", "tta", "augment")
              and v != RunConfig().to_dict()[k]}  # fmt: skip
    from core.studyplan import STUDY_BEST_AUG

    if not (row.page == "regularisation" and cfg.augment == STUDY_BEST_AUG):  # page 4's toggle, on by default
        params.update({k: v for k, v in values["augment"].items() if v})
    params.update({"backbone": cfg.backbone, "weights": cfg.weights, "size": cfg.image_size, "seed": cfg.seed,
                   "tta": int(cfg.tta)})  # fmt: skip
    text = {k: ("none" if v is None else int(v) if isinstance(v, bool) else v) for k, v in params.items()}
    return f"/{row.page}?{urllib.parse.urlencode(text)}"


def table_frame(results: list[reproduce.RowResult], rows: list[Row]) -> pd.DataFrame:
    out = []
    for r in results:
        row = next((x for x in rows if x.task == r.task and x.setting == r.setting), None)
        status = "stored" if r.cached else (f"{r.done} of {r.runs}" if r.done else "not trained yet")
        out.append({
            "task": r.task, "setting": r.setting, "the study": r.study, "ours (test)": r.ours, "ours (validation)": r.val,
            "status": status, "seconds": r.seconds, "run": r.run_id,
            "page": row_link(row, row.configs[0] if row and row.configs else None) if row else "/search",
        })  # fmt: skip
    return pd.DataFrame(out)


def known_estimate(base: RunConfig, data_root: str, store: Store, trials: int, grid: int) -> float | None:
    """The estimate when this machine's throughput for the backbone and size is known (else None: measuring
    takes seconds, which the landing page must not spend unasked)."""
    try:
        import json

        known = json.loads(throughput_cache(Path(store.root)).read_text())
    except (OSError, ValueError):
        return None
    if f"{base.backbone}@{base.image_size}" not in known:
        return None
    return reproduce.estimate(base, data_root, store, trials=trials, grid_sample=grid)


def _wait_jobs(job_ids: list[str], total: int, progress: Any, should_stop: Any) -> None:
    worker = _captured_worker()
    while True:
        jobs = [worker.get(i) for i in job_ids]
        active = [j for j in jobs if j is not None and j.active]
        done = sum(1 for j in jobs if j is not None and j.status == "done")
        progress({"event": "runs", "done": done, "total": total})
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


def _search_argv(req: Any) -> list[str]:
    cfg = req.cfg
    return ["--study", req.study, "--data", str(req.data), "--trials", str(req.trials), "--artifacts", req.artifacts_root,
            "--backbone", cfg.backbone, "--weights", cfg.weights, "--image-size", str(cfg.image_size), "--seed",
            str(cfg.seed), "--json"]  # fmt: skip


def start_reproduction(base: RunConfig, data_root: str, store: Store, trials: int, grid: int) -> None:
    """Queue every missing run, cheapest first, then the search; a background task of the app."""
    _WORKER["worker"] = get_worker()

    def run(progress: Any, should_stop: Any) -> dict[str, Any]:
        todo = reproduce.missing_runs(base, data_root, store, grid)
        jobs = [_captured_worker().submit(p.cfg, data_root) for p in todo]
        _wait_jobs([j.id for j in jobs], len(jobs), progress, should_stop)
        if trials:
            req = reproduce.search_request(base, data_root, str(store.root), trials)
            if not processes.live_workers(req.artifacts_root, req.study):
                processes.start_worker(_search_argv(req), req.artifacts_root, req.study)
            while processes.live_workers(req.artifacts_root, req.study):
                if should_stop():
                    processes.stop_workers(req.artifacts_root, req.study)
                    raise TaskCancelled("The reproduction was cancelled; finished rows are kept.")
                progress({"event": "search", "done": reproduce.search_result(req).done, "total": trials})
                time.sleep(2.0)
        return {"trained": len(jobs)}

    start_task(TASK, run)


def reproduction_status() -> Any:
    task = get_task(TASK)
    return None if task is None else task.view()


def cancel_reproduction() -> None:
    task = get_task(TASK)
    if task is not None:
        task.cancel()
    st.session_state["_study_cancelled"] = True
