"""What each ``python -m core`` command does, given its parsed options (``core.cli`` parses them).

Every runner takes the parsed namespace and returns the JSON-able dict the CLI prints. Heavy modules
(TensorFlow, Optuna) are imported inside the runners, so a bad option is answered before they load.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.config import AUGMENT_SETTINGS, ENTRY_DEFAULTS, RUN_SETTINGS, AugmentConfig, RunConfig, entry_config
from core.errors import ConfigError
from core.paths import default_artifacts
from core.search.request import TUNE_DEFAULTS, StudyRequest

logger = logging.getLogger("core")


def config_from_values(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from option values keyed by field (``aug_<field>`` for augmentation); validated. A setting
    not given takes the entry points' default (``core.config.ENTRY_DEFAULTS``), as in the app."""
    run = {k: v for k, v in values.items() if k in RUN_SETTINGS}
    aug = {k[4:]: v for k, v in values.items() if k.startswith("aug_") and k[4:] in AUGMENT_SETTINGS}
    return entry_config(augment=AugmentConfig(**aug), **run).validate()


def run_values(args: Any) -> dict[str, Any]:
    keys = set(RUN_SETTINGS) | {f"aug_{k}" for k in AUGMENT_SETTINGS}
    return {k: v for k, v in vars(args).items() if k in keys}


def tune_request(args: Any) -> StudyRequest:
    """The study a parsed ``tune`` command asks for (its explicit train options fix parameters)."""
    explicit = run_values(args)
    cfg = config_from_values({**TUNE_DEFAULTS, **explicit})
    return StudyRequest(
        study=args.study,
        cfg=cfg,
        explicit=explicit,
        data=args.data,
        trials=args.trials,
        storage=args.storage,
        timeout=args.timeout,
        sampler=args.sampler,
        pruner=args.pruner,
        space_file=args.space,
        repeats=args.repeats,
        artifacts=args.artifacts,
    )


def _number(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when an event left it out (or sent something else)."""
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return "-"


class _ProgressPrinter:
    """Progress of ``train`` on stderr: every status and epoch; counts (decoding, features, prefix activations)
    at most one line a second per kind, and the last. Every key is read with a default: the training paths send
    several shapes of event (the per-epoch augmentation banks once sent "features" without "elapsed", which ended
    a finished training in a traceback), and a progress line must never fail the run it reports on."""

    WORDS = {"scan": "reading the dataset's files", "decode": "decoding images", "features": "backbone features", "prefix": "prefix activations"}

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.last: dict[str, float] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "status":
            logger.info("%s", event.get("message", ""))
        elif kind == "epoch":
            row = event.get("row") or {}
            logger.info(
                "%s epoch %s/%s  loss %s  acc %s  val_loss %s  val_acc %s  lr %s",
                event.get("phase", "?"),
                event.get("epoch", "?"),
                event.get("epochs", "?"),
                *(_number(row.get(k), spec) for k, spec in
                  (("loss", ".4f"), ("accuracy", ".4f"), ("val_loss", ".4f"), ("val_accuracy", ".4f"), ("lr", ".2g"))),
            )  # fmt: skip
        elif kind in self.WORDS:
            self._count(kind, event)

    def _count(self, kind: str, event: dict[str, Any]) -> None:
        try:
            done, total = int(event.get("done")), int(event.get("total"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        now = time.monotonic()
        if done < total and now - self.last.get(kind, -1e9) < self.every_s:
            return
        self.last[kind] = now
        elapsed = event.get("elapsed")
        rate = f", {done / float(elapsed):.0f}/s" if isinstance(elapsed, (int, float)) and elapsed > 0 else ""
        logger.info("%s %d/%d (%s s%s)", self.WORDS[kind], done, total, _number(elapsed, ".1f"), rate)


def _describe(args: Any) -> dict[str, Any]:
    if args.classes < 2:
        raise ConfigError(f"Classes (--classes) must be at least 2 for a classifier; received {args.classes}.")
    RunConfig(backbone=args.backbone, remove_blocks=args.remove_blocks, image_size=args.image_size).validate()
    from core.models.backbones import get_backbone
    from core.models.counts import describe_cached

    get_backbone(args.backbone).cut_layer(args.remove_blocks)
    return describe_cached(
        args.artifacts or default_artifacts(),
        args.backbone,
        args.remove_blocks,
        classes=args.classes,
        dense_1024=args.dense_1024,
        batch_norm=args.batch_norm,
        image_size=args.image_size,
    )


def _train(args: Any) -> dict[str, Any]:
    cfg = config_from_values(run_values(args))  # bad settings: one sentence before TensorFlow loads
    from core.cluster import cluster_address
    from core.data.bundled import default_dataset
    from core.store.folders import Store
    from core.training.train import train

    address = cluster_address(args.cluster)  # a bad address: one sentence before the dataset is read
    artifacts = args.artifacts or default_artifacts()
    data = args.data or default_dataset(artifacts)
    if address is not None:
        return _train_on_cluster(cfg, data, Store(artifacts), address, args.force)
    return train(cfg, data, Store(artifacts), progress=_ProgressPrinter(), force=args.force).summary()


def _train_on_cluster(cfg: RunConfig, data: Any, store: Any, address: str, force: bool) -> dict[str, Any]:
    """``train --cluster``: the run trained by a Dask worker, its progress printed here, installed in ``store``."""
    import time

    from core.cluster import ClusterExecutor
    from core.errors import SceneLabError

    executor = ClusterExecutor(store, address)
    printer = _ProgressPrinter()
    try:
        job = executor.submit(cfg, data, force=force)
        seen, where, epochs = 0, "", None
        while True:
            view = job.view()
            if view.where and view.where != where:
                where = view.where
                logger.info("training on the Dask worker %s", where)
            epochs = view.progress.get("epochs") or epochs or cfg.epochs
            for row in view.history[seen:]:  # when done: the stored run's history, the rest of it
                printer({"event": "epoch", "row": row, "phase": view.progress.get("phase"),
                                   "epoch": int(row.get("epoch", 0)), "epochs": epochs})  # fmt: skip
            seen = len(view.history)
            if not view.active:
                break
            time.sleep(0.2)
        if job.status != "done" or job.result is None:
            raise SceneLabError(job.error or "The run was cancelled on the cluster; nothing was saved.")
        return {**job.result.summary(), "trained_on": job.where or "cached here"}
    finally:
        executor.close()


def _download(args: Any) -> dict[str, Any]:
    from core.data.download import download_data

    counts = download_data(args.to, args.zip, seed=args.seed)
    return {"to": str(Path(args.to).resolve()), "counts": counts}


def _tune(args: Any) -> dict[str, Any]:
    import optuna

    from core.search.study import run_study

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tf.function retracing notes, one per trial
    return run_study(tune_request(args))


def _export(args: Any) -> dict[str, Any]:
    import re

    from core.errors import ConfigError, StoreError
    from core.store.folders import Store
    from core.training.export import check_destination
    from core.training.runs import export_model

    store = Store(args.artifacts or default_artifacts())
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.run_id):  # a name inside runs/, never a path
        raise ConfigError(f"{args.run_id!r} is not a run id; give the folder name of a run in {store.runs_dir}.")
    check_destination(args.to)
    record = store.load_run(args.run_id)
    if record is None:
        raise StoreError(
            f"No finished run {args.run_id} in {store.runs_dir}; check the id (and --artifacts), or train the run first."
        )
    result = export_model(record, args.to)
    return {"run_id": record.run_id, **result.summary()}


def _import_data(args: Any) -> dict[str, Any]:
    from core.data.archive import default_upload_root, import_zip
    from core.errors import ConfigError

    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed must be 0 to {2**32 - 1}; received {args.seed}.")
    dest = Path(args.to) if args.to else default_upload_root() / Path(args.zip).stem
    result = import_zip(args.zip, dest, test_fraction=args.test_fraction, seed=args.seed)
    return {
        "to": str(result.dest),
        "counts": result.counts,
        "images": sum(sum(per.values()) for per in result.counts.values()),
        "was_split": result.was_split,
        "test_fraction": args.test_fraction if result.was_split else None,
        "seed": args.seed if result.was_split else None,
        "test_share": result.test_share,
        "skipped": [{"path": s.path, "reason": s.reason} for s in result.skipped],
    }


def _reproduce(args: Any) -> dict[str, Any]:
    from core.study.plan import Plan

    how = Plan(mode=args.mode, repeats=args.repeats, trained_blocks=args.trained_blocks, grid_sample=args.grid_sample,
               trials=args.trials).check()  # before TensorFlow is imported: a bad option is one line  # fmt: skip
    base = config_from_values(run_values(args))
    from core.data.bundled import default_dataset
    from core.store.folders import Store
    from core.study import reproduce
    from core.study.report import write_report

    store = Store(args.artifacts or default_artifacts())
    data = str(args.data or default_dataset(store.root))
    if args.estimate:
        seconds, measured = reproduce.estimate_detail(base, data, store, how)
        missing = reproduce.missing_runs(base, data, store, how=how)
        return {"estimated_seconds": round(seconds), "measured": measured, "runs_missing": len(missing),
                "mode": how.mode, "repeats": how.repeats}  # fmt: skip
    on_cluster = _reproduce_on_cluster(args.cluster, base, data, store, how)
    done = reproduce.reproduce(base, data, store, how=how)  # on a cluster: only the search is left
    done["trained"] += on_cluster["trained"]
    done["seconds"] = round(done["seconds"] + on_cluster["seconds"], 1)
    rows = reproduce.table(base, data, store, how=how)
    claims = [c.as_dict() for c in reproduce.claims(rows)]
    out: dict[str, Any] = {"mode": how.mode, "repeats": how.repeats, "rows": reproduce.json_rows(rows),
                           "claims": claims, "seconds": done["seconds"], "trained": done["trained"]}  # fmt: skip
    if args.report:
        context = reproduce.report_context(base, data, how)
        out["report"] = str(write_report(args.report, [r.as_dict() for r in rows], context, done["seconds"],
                                         done["trained"], claims=claims))  # fmt: skip
    return out


def _reproduce_on_cluster(cluster: str | None, base: RunConfig, data: str, store: Any, how: Any) -> dict[str, Any]:
    """``reproduce --cluster``: every missing run submitted at once to the Dask cluster and installed here."""
    import time

    from core.cluster import ClusterExecutor, cluster_address, train_all
    from core.study import reproduce

    address = cluster_address(cluster)
    if address is None:
        return {"trained": 0, "seconds": 0.0}
    t0 = time.monotonic()
    todo = reproduce.missing_runs(base, data, store, how=how)
    executor = ClusterExecutor(store, address)
    try:
        logger.info("%d run(s) to train on the Dask cluster at %s", len(todo), address)
        trained = train_all(executor, [p.cfg for p in todo], data)
    finally:
        executor.close()
    return {"trained": trained, "seconds": time.monotonic() - t0}


def _stored_run(store: Any, run_id: str) -> Any:
    from core.errors import StoreError

    record = store.load_run(run_id)
    if record is None:
        raise StoreError(f"Run {run_id} was not found in {store.runs_dir}; give the id of a stored run (--artifacts).")
    return record


def _explain(args: Any) -> dict[str, Any]:
    from core.explain.heatmaps import explain_image
    from core.store.folders import Store

    store = Store(args.artifacts or default_artifacts())
    record = _stored_run(store, args.run) if args.run else None
    return explain_image(
        args.image,
        args.out,
        run=record,
        backbone=args.backbone or (None if record else ENTRY_DEFAULTS["backbone"]),
        weights=args.weights,
        image_size=args.image_size or (None if record else ENTRY_DEFAULTS["image_size"]),
        block=args.block,
        method=args.method,
        class_name=args.class_name,
    )


def _project(args: Any) -> dict[str, Any]:
    from core.explain.projection import project, write_csv
    from core.store.folders import Store

    store = Store(args.artifacts or default_artifacts())
    record = _stored_run(store, args.run) if args.run else None
    run_cfg = RunConfig.from_dict(record.config["run"]) if record is not None else None
    start = run_cfg or entry_config()
    backbone = args.backbone or start.backbone
    weights = args.weights or start.weights
    size = args.image_size or start.image_size
    from core.data.bundled import default_dataset

    data = args.data or default_dataset(store.root)
    proj = project(
        data,
        backbone=backbone,
        weights=weights,
        image_size=size,
        store=store,
        run=record,
        method=args.method,
        seed=args.seed,
    )
    return {"out": str(write_csv(proj, args.out).resolve()), **proj.summary()}


def _runs(args: Any) -> dict[str, Any]:
    from core.store.folders import Store
    from core.training.runs import summary_row

    store = Store(args.artifacts or default_artifacts())
    rows = sorted((summary_row(r) for r in store.list_runs()), key=lambda r: str(r.get("created") or ""), reverse=True)
    if not args.json:  # a table a person reads; --json gives every column
        for r in rows:
            print(f"{r['run_id']}  {r.get('dataset') or '-':<16} {r.get('backbone') or '-':<18} {r.get('image_size')!s:>4}px "
                  f"{r.get('phase') or '-':<9} val {_number(r.get('val_accuracy'), '.3f')}  "
                  f"test {_number(r.get('test_accuracy'), '.3f')}  {r.get('created') or ''}")  # fmt: skip
        return {"runs": len(rows), "artifacts": str(store.root)}
    return {"runs": rows, "count": len(rows), "artifacts": str(store.root)}


def _best(args: Any) -> dict[str, Any]:
    from core.study.plan import SMALL

    base = entry_config(backbone=args.backbone, weights=args.weights, seed=args.seed,
                        train_per_class=SMALL if args.small else None).validate()  # fmt: skip
    import optuna

    from core.data.bundled import default_dataset
    from core.search.best import Request, run_best

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    artifacts = str(args.artifacts or default_artifacts())
    data = str(args.data or default_dataset(artifacts))
    return run_best(Request(data=data, minutes=args.minutes, base=base, artifacts=artifacts, storage=args.storage,
                            trials=args.trials))  # fmt: skip


COMMANDS = {
    "describe": _describe, "train": _train, "download-data": _download, "tune": _tune, "export": _export,
    "import-data": _import_data, "reproduce": _reproduce, "explain": _explain, "project": _project, "runs": _runs,
    "best": _best,
}  # fmt: skip
