"""Search throughput: trials per minute with 1 and 2 workers on SQLite and on PostgreSQL, and what the storage
costs per trial.

Every arm is a fresh study (random sampler, so trial *n* draws the same config in every arm; no pruning, so
every trial trains its full epochs; one seed per trial) worked on by 1 or 2 real ``python -m core tune``
processes. The backbone features are computed once beforehand and shared by every arm (heads on cached
features), while each arm has its own empty runs folder, so no trial is served from another arm's cache.

* ``trials_per_min``: the asked trials over the time from the first trial's start to the last one's end
  (read from the storage); ``wall_s`` adds the workers' start-up (TensorFlow import, study creation).
* ``cores_used``: CPU seconds the workers used per wall second. One worker already keeps more than one
  core busy (TensorFlow's kernels use every core), so a second worker on a 2-core machine can only fill
  what the first leaves idle: that, not the storage, bounds the speed-up.
* ``overhead_ms_per_trial``: the same storage calls a real trial makes (parameters, 13 user attributes, a
  report and a pruning check per epoch, the worker's counts and dead-trial checks) with no training, per
  storage, in this process; against in-memory storage it is the price of sharing a study.

    python -m bench.search [--tiny] [--trials 12] [--epochs 15] [--image-size 128]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

PG_SCRIPT = common.REPO / ".ci" / "postgres.sh"
WHY = (
    "Two workers on 2 cores are not twice as fast. TensorFlow runs each worker's kernels on every core, so one "
    "worker already keeps `cores_used` cores busy, and a second one mostly takes turns with the first on the same "
    "cores: it gains only where the first leaves a core idle (Python between the steps, building and compiling each "
    "trial's model, the storage's round trips). Other processes on a shared machine (`others_cores`) take their "
    "share as well. The storage is not the bottleneck: its calls cost `overhead_ms_per_trial` per trial, a few "
    "percent of a trial's training."
)


# -- a throwaway PostgreSQL server (as tests/pg.py starts one) -----------------------------------------------
def pg_start(folder: str) -> str | None:
    """The admin URL of a server started in ``folder``, or None when PostgreSQL's binaries are missing."""
    if subprocess.run(["bash", str(PG_SCRIPT), "bindir"], capture_output=True).returncode != 0:
        return None
    proc = subprocess.run(["bash", str(PG_SCRIPT), "start", folder], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise SystemExit(f"PostgreSQL did not start: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


def pg_database(admin_url: str, name: str) -> str:
    import sqlalchemy
    from sqlalchemy.engine import make_url

    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


# -- one arm: K workers on a fresh study -------------------------------------------------------------------
def tune_args(data: str, args: Any, storage: str, root: Path, trials: int) -> list[str]:
    model = (["--backbone", "densenet121", "--weights", "none", "--remove-blocks", "3", "--image-size", "32"] if args.tiny
             else ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", str(args.image_size)])  # fmt: skip
    return [sys.executable, "-m", "core", "tune", "--data", data, "--study", "bench", "--storage", storage,
            "--artifacts", str(root), *model, "--phase", "head", "--epochs", str(args.epochs), "--repeats", "1",
            "--sampler", "random", "--pruner", "none", "--trials", str(trials), "--json"]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(common.REPO), "CUDA_VISIBLE_DEVICES": ""}


def fresh_root(warm: Path, root: Path) -> Path:
    """An artifacts folder with no runs that shares the warm one's features, decoded images and weights."""
    root.mkdir(parents=True)
    for name in ("features", "datasets", "weights"):
        if (warm / name).exists():
            (root / name).symlink_to(warm / name)
    return root


def run_arm(label: str, workers: int, cmd: list[str], storage: str, log: list[dict[str, Any]]) -> dict[str, Any]:
    with common.measured(log, label) as m:
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=common.REPO)
                 for _ in range(workers)]  # fmt: skip
        outs = [p.communicate(timeout=7200) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"{label}: a worker failed: {err.strip()[-1500:]}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    from optuna.trial import TrialState

    from core.search.summaries import load_study

    trials = [t for t in load_study(storage, "bench").get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {
        "workers": workers,
        "trials": len(trials),
        "trials_per_min": round(60 * len(trials) / span, 2),
        "wall_s": m["seconds"],
        "span_s": round(span, 1),
        "mean_trial_s": round(sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials) / len(trials), 2),
        "cores_used": m["own_cores"],
        "others_cores": m["others_cores"],
        "surplus": sum(r["worker"]["surplus"] for r in reports),
        "per_worker": [r["worker"]["complete"] for r in reports],
    }


# -- the storage's own cost per trial ------------------------------------------------------------------------
def storage_overhead(url: str | None, n: int, epochs: int) -> float:
    """Milliseconds per trial of a worker doing a real trial's storage calls and no training."""
    import optuna

    from core.search.space import build_space, suggest
    from core.search.storage import open_storage
    from core.search.workers import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage() if url is None else open_storage(url, heartbeat=True)
    study = optuna.create_study(storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    space = build_space()

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr("config", {"image_size": 128, **params})
        trial.set_user_attr("artifacts", "/srv/artifacts")
        for epoch in range(1, epochs + 1):
            trial.report(0.5 + epoch / 100, epoch)
            trial.should_prune()
        for key in ("metrics", "val_accuracy", "run_id", "test_accuracy", "train_accuracy", "epochs_run", "cached",
                    "train_seconds", "seconds"):  # fmt: skip
            trial.set_user_attr(key, 0.5)
        return 0.5

    run_worker(study, objective, 2)  # tables, connections, caches
    t0 = time.perf_counter()
    run_worker(study, objective, n + 2)
    return round(1000 * (time.perf_counter() - t0) / n, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12, help="trials per arm")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = p.parse_args(argv)
    common.quiet()
    if args.tiny:
        args.trials, args.epochs = 2, 2
    log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        data = str(common.resolve_data(args, work))
        pg_folder = tempfile.mkdtemp(prefix="scenelab-pg-")  # not under tmp: the postgres user must enter it
        try:
            admin = None if (args.no_postgres or args.tiny) else pg_start(pg_folder)
            warm = work / "warm"
            if not args.tiny:  # the features, computed once for every arm (tiny ones are computed in no time)
                subprocess.run(tune_args(data, args, f"sqlite:///{work / 'warm.db'}", warm, 1), check=True, env=env(),
                               cwd=common.REPO, capture_output=True)  # fmt: skip
            common.wait_for_quiet(args.quiet_wait)
            arms: dict[str, dict[str, Any]] = {}
            storages = {"sqlite": lambda k: f"sqlite:///{work / f'arm{k}.db'}"}
            if admin:
                storages["postgresql"] = lambda k: pg_database(admin, f"bench_{k}")
            for kind, make in storages.items():
                for workers in (1, 2):
                    url = make(f"{kind}_{workers}")
                    root = fresh_root(warm, work / f"{kind}-{workers}")
                    arms[f"{kind}/{workers}"] = run_arm(f"{kind}/{workers}", workers, tune_args(data, args, url, root, args.trials), url, log)
            n_fake = 10 if args.tiny else 100
            overhead = {"memory": storage_overhead(None, n_fake, args.epochs),
                        "sqlite": storage_overhead(f"sqlite:///{work / 'overhead.db'}", n_fake, args.epochs)}  # fmt: skip
            if admin:
                overhead["postgresql"] = storage_overhead(pg_database(admin, "bench_overhead"), n_fake, args.epochs)
        finally:
            subprocess.run(["bash", str(PG_SCRIPT), "stop", pg_folder], capture_output=True)
    speedup = {k: round(arms[f"{k}/2"]["trials_per_min"] / arms[f"{k}/1"]["trials_per_min"], 2) for k in storages}
    rows = [[name, a["workers"], a["trials"], a["trials_per_min"], a["mean_trial_s"], a["wall_s"], a["cores_used"],
             a["surplus"], overhead.get(name.split("/")[0])] for name, a in arms.items()]  # fmt: skip
    figures = {
        "dataset": common.dataset_label(Path(data)),
        "backbone": "densenet121 (3 blocks removed, random weights)" if args.tiny else "efficientnet_lite0 (ImageNet)",
        "image_size": 32 if args.tiny else args.image_size,
        "epochs": args.epochs,
        "trials": args.trials,
        "arms": arms,
        "speedup_2_workers": speedup,
        "overhead_ms_per_trial": overhead,
        "why": WHY,
    }
    headers = ["storage/workers", "workers", "trials", "trials/min", "s/trial", "wall s", "cores used", "surplus", "storage ms/trial"]
    return common.emit("search", figures, headers, rows, log, args.tiny)


if __name__ == "__main__":
    main()
