"""Training on a Dask cluster: each job's overhead against the local worker, and the quick reproduction on one
worker process against two (parallel efficiency), with what a class of 20 would wait.

Overhead: after one warm-up run on each side (features cached, TensorFlow imported), ``--jobs`` heads on cached
features (seeds 101...) are asked one after the other of the local worker (``core.worker.Worker``) and of a
``ClusterExecutor`` on a ``distributed.LocalCluster`` of one worker process; per job, the wall time from submit to
done minus the run's own training seconds is what the executor adds (median reported). Reproduction: the quick
mode's missing runs (``--grid-sample``, no search) submitted at once (``core.cluster.train_all``) to a fresh
LocalCluster of one, then of two, worker processes of one thread each (TensorFlow imported in each worker before
timing; every cache cold), each into its own stores. Parallel efficiency = T(1) / (2 T(2)).

    python -m bench.cluster [--tiny] [--data DIR] [--image-size 64] [--grid-sample 2] [--jobs 8] [--runs N]
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import common

CLASS = 20


def _children_cpu_s() -> float:
    """CPU seconds of this process's children (the cluster's scheduler-side nannies' worker processes)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


@contextmanager
def _measured(log: list[dict[str, Any]], label: str) -> Iterator[dict[str, Any]]:
    """``common.measured``, with the worker processes' CPU counted as this benchmark's (they are its children:
    ``CpuMeter`` alone would count them as other processes' load)."""
    before = _children_cpu_s()
    with common.measured(log, label) as out:
        yield out
    workers = max(0.0, _children_cpu_s() - before) / max(1e-9, out["seconds"])
    out["own_cores"] = round(out["own_cores"] + workers, 2)
    out["others_cores"] = round(max(0.0, out["others_cores"] - workers), 2)


def _cluster(workers: int, folder: Path) -> Any:
    from distributed import LocalCluster

    env = {"SCENELAB_WORKER_ARTIFACTS": str(folder), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=env)


def _warm(executor: Any) -> None:
    """TensorFlow and SceneLab's training imported in every worker process (not part of what is timed)."""
    executor.client().run(lambda: __import__("core.training.train"))


def _one_by_one(executor: Any, cfgs: list[Any], data: Path) -> list[dict[str, float]]:
    out = []
    for cfg in cfgs:
        t0 = time.perf_counter()
        job = executor.wait(executor.submit(cfg, data).id)
        wall = time.perf_counter() - t0
        assert job is not None and job.status == "done", job and job.error
        out.append({"wall_s": wall, "run_s": float(job.result.record.metrics["seconds"])})
    return out


def _overhead(base: Any, data: Path, tmp: Path, jobs: int, log: list[dict[str, Any]]) -> dict[str, Any]:
    from core.cluster import ClusterExecutor
    from core.store.folders import Store
    from core.worker import Worker

    cfgs = [base.replace(seed=101 + i) for i in range(jobs)]
    local = Worker(Store(tmp / "overhead-local"))
    _one_by_one(local, [base], data)  # warm-up: features cached, the head's graph traced
    with _measured(log, f"local worker: {jobs} jobs one by one"):
        here = _one_by_one(local, cfgs, data)
    with _cluster(1, tmp / "overhead-worker") as lc:
        executor = ClusterExecutor(Store(tmp / "overhead-remote"), lc.scheduler_address)
        _warm(executor)
        _one_by_one(executor, [base], data)
        with _measured(log, f"cluster, 1 worker: {jobs} jobs one by one"):
            there = _one_by_one(executor, cfgs, data)
        executor.close()
    added = [r["wall_s"] - r["run_s"] for r in there]
    local_added = [r["wall_s"] - r["run_s"] for r in here]
    return {
        "jobs": jobs,
        "local_job_s": round(statistics.median(r["wall_s"] for r in here), 3),
        "cluster_job_s": round(statistics.median(r["wall_s"] for r in there), 3),
        "local_added_ms": round(statistics.median(local_added) * 1000, 1),
        "cluster_added_ms": round(statistics.median(added) * 1000, 1),
        "overhead_ms": round((statistics.median(added) - statistics.median(local_added)) * 1000, 1),
    }


def _reproduce(workers: int, base: Any, data: Path, tmp: Path, how: Any, runs: int | None,
               log: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    from core.cluster import ClusterExecutor, train_all
    from core.store.folders import Store
    from core.study.reproduce import missing_runs

    store = Store(tmp / f"reproduce-{workers}")
    todo = missing_runs(base, str(data), store, how=how)[:runs]
    with _cluster(workers, tmp / f"reproduce-workers-{workers}") as lc:
        executor = ClusterExecutor(store, lc.scheduler_address)
        _warm(executor)
        with _measured(log, f"reproduction, {workers} worker process(es)") as m:
            trained = train_all(executor, [p.cfg for p in todo], str(data))
        executor.close()
    seconds = [float(r.metrics["seconds"]) for r in store.list_runs()]
    return {"workers": workers, "runs": len(todo), "trained": trained, "wall_s": m["seconds"],
            "run_seconds_sum": round(sum(seconds), 1), "cores_used": m["own_cores"]}  # fmt: skip


def _class_wait(mean_run_s: float, overhead_s: float, two_worker_run_s: float) -> list[list[Any]]:
    """What the last of 20 students waits for one run each, derived from the measured figures."""
    rows: list[list[Any]] = [["this 2-core machine, 1 worker process", 1, round(CLASS * mean_run_s, 1)],
                             ["this 2-core machine, 2 worker processes", 2, round(CLASS * two_worker_run_s, 1)]]  # fmt: skip
    for n in (5, 10, 20):
        rows.append(
            [
                f"{n} machines like this one, 1 worker each",
                n,
                round(math.ceil(CLASS / n) * (mean_run_s + overhead_s), 1),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--grid-sample", type=int, default=2, help="points of the augmentation grid in the reproduction")
    p.add_argument("--jobs", type=int, default=8, help="jobs timed one by one for the overhead")
    p.add_argument("--runs", type=int, default=None, help="only the first N missing runs of the reproduction")
    args = p.parse_args(argv)
    common.quiet()
    from core.config import RunConfig
    from core.study.plan import Plan

    seen = common.wait_for_quiet(args.quiet_wait)
    log: list[dict[str, Any]] = []
    size, jobs, runs = (32, 3, args.runs or 4) if args.tiny else (args.image_size, args.jobs, args.runs)
    base = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=size)
    how = Plan(trials=0, grid_sample=args.grid_sample).check()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        data = common.resolve_data(args, Path(tmp))
        overhead = _overhead(base, data, Path(tmp), jobs, log)
        arms = {n: _reproduce(n, base, data, Path(tmp), how, runs, log) for n in (1, 2)}
    one, two = arms[1], arms[2]
    speedup = one["wall_s"] / max(1e-9, two["wall_s"])
    mean_run = one["wall_s"] / max(1, one["runs"])
    class_rows = _class_wait(mean_run, max(0.0, overhead["overhead_ms"]) / 1000, two["wall_s"] / max(1, two["runs"]))
    figures = {"dataset": common.dataset_label(Path(data)), "backbone": base.backbone, "image_size": size,
               "grid_sample": args.grid_sample, "overhead": overhead, "arms": {str(k): v for k, v in arms.items()},
               "speedup_2_workers": round(speedup, 2), "parallel_efficiency": round(speedup / 2, 2),
               "mean_run_s": round(mean_run, 2), "class_size": CLASS,
               "class_wait_s": {r[0]: r[2] for r in class_rows}, "others_cores_before": seen}  # fmt: skip
    rows = [
        ["per job, local worker (median wall)", overhead["local_job_s"], ""],
        ["per job, cluster of 1 (median wall)", overhead["cluster_job_s"], ""],
        ["cluster's added cost per job", overhead["overhead_ms"] / 1000, "submit, scheduler, run sent home"],
        [f"reproduction ({one['runs']} runs), 1 worker", one["wall_s"], ""],
        [f"reproduction ({two['runs']} runs), 2 workers", two["wall_s"], f"efficiency {speedup / 2:.2f}"],
        *[[f"class of {CLASS}: {r[0]}", r[2], "derived"] for r in class_rows],
    ]
    return common.emit("cluster", figures, ("step", "seconds", "note"), rows, log, args.tiny)


if __name__ == "__main__":
    main()
