"""The best model in a budget: test accuracy against minutes of ``python -m core best``, on the full and small sets.

For each set (the full training set, and the study's small set of 50 images per class) the search starts from an
empty artifacts folder (decoding, prefix activations and every run on the clock) and works for ``--minutes``
(``core.search.best.run_best``: the winner chosen on validation alone, test read once). The curve is read
afterwards from the same study: at each checkpoint, the winner that the selection (``core.search.best.choose``,
validation only) would have picked from the runs finished by then, and that winner's test accuracy (an
ensemble's from its members' stored test probabilities, averaged, as its model computes them).

    python -m bench.best [--tiny] [--minutes 30] [--sets full,small] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import common

CHECKPOINTS = (1, 2, 5, 10, 15, 20, 25, 30, 45, 60)
TARGETS = {"full": 0.960, "small": 0.93}


def _test_accuracy(run_ids: tuple[str, ...], store: Any) -> float:
    """A chosen run's or ensemble's test accuracy (read only after the choice)."""
    from core.training.ensemble import mean_probs

    records = [store.load_run(r) for r in run_ids]
    probs = mean_probs(records, "probs")
    return round(float(np.mean(probs.argmax(1) == records[0].predictions()["y_true"])), 4)


def curve(result: dict[str, Any], artifacts: Path, minutes: float) -> list[dict[str, Any]]:
    """The winner at each checkpoint (chosen on validation among the runs finished by then) and its test accuracy."""
    from core.search.best import candidates, choose
    from core.search.storage import open_storage, resolve_storage_url
    from core.search.summaries import load_study
    from core.store.folders import Store

    store = Store(artifacts)
    study = load_study(open_storage(resolve_storage_url(None, str(artifacts))), result["study"])
    pool = candidates(study, store)
    points = [m for m in CHECKPOINTS if m < minutes] + [max(minutes, max((c.finished_s for c in pool), default=0) / 60)]
    out = []
    for m in points:
        seen = [c for c in pool if c.finished_s <= m * 60 + 1e-6]
        if not seen:
            continue
        choice = choose(seen)
        out.append({"minutes": round(m, 2), "runs": len(seen), "members": len(choice.run_ids),
                    "val_accuracy": round(choice.val_accuracy, 4), "test_accuracy": _test_accuracy(choice.run_ids, store)})  # fmt: skip
    return out


def verify(result: dict[str, Any], data: Path, artifacts: Path, workdir: Path) -> dict[str, Any]:
    """Off the clock: the winner exported (``.keras``) and loaded by plain Keras, scored on the test images; and each
    of its runs trained again from its stored recipe (same seed) in an empty store, scored on test."""
    import keras

    from core.config import RunConfig
    from core.data.arrays import decode_dataset, scan_dataset
    from core.store.folders import Store
    from core.training.runs import export_model
    from core.training.train import train

    store = Store(artifacts)
    record = store.load_run(result["run_id"])
    dest = workdir / f"{result['run_id']}.keras"
    export_model(record, dest)
    ds = decode_dataset(scan_dataset(data), int(record.config["run"]["image_size"]), store.datasets_dir)
    probs = keras.saving.load_model(dest).predict(ds.x_test.astype("float32"), verbose=0, batch_size=64)
    again = [train(RunConfig.from_dict(cfg), data, Store(workdir / "again")) for cfg in result["recipe"]]
    stored = [store.load_run(r).metrics["test_accuracy"] for r in result["members"]]
    return {"exported_test_accuracy": round(float(np.mean(probs.argmax(1) == ds.y_test)), 4),
            "reproduced_run_ids_equal": [a.run_id for a in again] == list(result["members"]),
            "reproduced_test_accuracies": [a.record.metrics["test_accuracy"] for a in again],
            "stored_test_accuracies": stored}  # fmt: skip


def one_set(
    name: str, data: Path, minutes: float, backbone: str, workdir: Path, log: list[dict[str, Any]]
) -> dict[str, Any]:
    from core.config import entry_config
    from core.search.best import Request, run_best
    from core.study.plan import SMALL

    artifacts = workdir / f"artifacts-{name}"
    base = entry_config(backbone=backbone, train_per_class=SMALL if name == "small" else None).validate()
    with common.measured(log, name) as meter:
        result = run_best(Request(data=str(data), minutes=minutes, base=base, artifacts=str(artifacts)))
    points = curve(result, artifacts, minutes)
    checks = verify(result, data, artifacts, workdir)
    keep = ("run_id", "kind", "members", "val_accuracy", "test_accuracy", "recipe", "minutes", "trials", "runs")
    return {"set": name, **{k: result[k] for k in keep}, "train_per_class": base.train_per_class,
            "curve": points, **checks, "target": TARGETS[name], "met": (result["test_accuracy"] or 0) >= TARGETS[name],
            "wall_s": meter.get("seconds"), "own_cores": meter.get("own_cores"), "others_cores": meter.get("others_cores")}  # fmt: skip


# -- the report (bench/report.py's Section "best") ---------------------------------------------------------------
SET_LABELS = {"full": "full set", "small": "small set (50 per class)"}


def target_rows(f: dict[str, Any]) -> list[list[Any]]:
    """BENCHMARKS.md's targets table: each set's winner, chosen on validation, against its test target."""
    return [[f"best model in {f['minutes']:g} min, {SET_LABELS[r['set']]}: test accuracy (chosen on validation)",
             f"{f['dataset']}, {f['backbone']}", f"{r['test_accuracy']}", f"≥ {r['target']}", r["met"]]
            for r in f["sets"]]  # fmt: skip


def section(f: dict[str, Any], md_table: Any, load_line: Any) -> str:
    """The curve (test accuracy of the winner chosen on validation after each many minutes) and each set's winner."""
    from core.search.best import recipe_text

    lines = [
        "## The best model in a budget (bench/best.py)",
        "",
        f"`python -m core best --minutes {f['minutes']:g}` on {f['dataset']} with {f['backbone']} (ImageNet weights), "
        "each set from an empty artifacts folder (decoding, prefix activations and every run on the clock). The curve "
        "is read from the same study afterwards: after each many minutes of search, the run or ensemble that the "
        "selection (validation only) would have picked from the runs finished by then, and its test accuracy.",
    ]
    for r in f["sets"]:
        rows = [
            [pt["minutes"], pt["runs"], pt["members"], pt["val_accuracy"], pt["test_accuracy"]] for pt in r["curve"]
        ]
        kind = f"an ensemble of {len(r['members'])} runs" if r["kind"] == "ensemble" else "one run"
        lines += [
            "",
            f"**{SET_LABELS[r['set']]}**: {r['trials']} trials, {r['runs']} stored runs in {r['minutes']} minutes of "
            f"search ({r['wall_s']:.0f} s wall with the choice; this process used {r['own_cores']} cores, others "
            f"{r['others_cores']}). Winner: {kind} (`{r['run_id']}`), validation {r['val_accuracy']}, test "
            f"**{r['test_accuracy']}** (target ≥ {r['target']}: {'met' if r['met'] else 'not met'}); "
            f"{recipe_text(r['recipe'])}.",
            "",
            md_table(["minutes", "runs finished", "members", "validation acc", "test acc"], rows),
        ]
        if "exported_test_accuracy" in r:
            same = "the same run ids" if r["reproduced_run_ids_equal"] else "**other run ids**"
            lines += ["", f"Off the clock: exported as `.keras` and loaded by plain Keras, test {r['exported_test_accuracy']}; "
                      f"trained again from the stored recipe (same seed, empty store): {same}, test "
                      f"{r['reproduced_test_accuracies']} (stored {r['stored_test_accuracies']})."]  # fmt: skip
    return "\n".join([*lines, "", load_line(f)])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of search per set")
    p.add_argument("--sets", default="full,small", help="full, small or both")
    p.add_argument("--backbone", default="efficientnet_lite0")
    args = p.parse_args()
    common.quiet()
    sets = [s for s in args.sets.split(",") if s]
    minutes = 0.3 if args.tiny else args.minutes
    log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-best-") as tmp:
        data = common.resolve_data(args, Path(tmp))
        common.wait_for_quiet(args.quiet_wait)
        results = [one_set(s, data, minutes, args.backbone, Path(tmp), log) for s in sets]
    rows = [[r["set"], pt["minutes"], pt["runs"], pt["members"], pt["val_accuracy"], pt["test_accuracy"]]
            for r in results for pt in r["curve"]]  # fmt: skip
    figures = {"dataset": common.dataset_label(data), "backbone": args.backbone, "minutes": minutes, "sets": results}
    common.emit("best", figures, ["set", "minutes", "runs", "members", "val acc", "test acc"], rows, log, args.tiny)


if __name__ == "__main__":
    main()
