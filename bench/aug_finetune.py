"""Partial fine-tuning with augmentation against the same run without it: what augmentation costs (issue 20).

Fine-tuning the blocks after a frozen prefix (``--phase full --freeze-blocks K``) trains on the prefix's cached
activations. With augmentation it used to run every training step through the whole network (3.8x the time);
now each epoch's augmented images go through the frozen prefix once, in large inference batches
(``core.training.augbank.EpochBanks``), and the suffix trains on those banks. Target: at most 1.5x the run without
augmentation.

Each arm is one ``core.training.train.train`` run in a fresh Python process with a fresh, empty artifacts folder, so
decoding, the cached prefix pass, tracing and evaluation are all on the clock (the converted Lite0 weights in
~/.keras/models may stay); the arms alternate ``--repeats`` times and their medians are compared, in wall time
and in CPU time (the process's, which the load of other processes on a shared machine disturbs less). Defaults: the study's small set (50 images per class), EfficientNet-Lite0 with
ImageNet weights at 128 px, the deepest freeze its registry allows (all blocks but the last), 15 epochs of
Adam 3e-4, without and with the study's best augmentation (horizontal flip + zoom 0.2). ``--old-path`` adds
the former implementation (augmented images through the whole network every step) as a third arm.

    python -m bench.aug_finetune [--tiny] [--image-size 128] [--epochs 15] [--repeats 3] [--old-path]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T0 = time.monotonic()  # a child's clock starts before TensorFlow is imported

from bench import common  # noqa: E402

BACKBONE = "efficientnet_lite0"
AUGMENTED = {"hflip": True, "zoom": 0.2}
TARGET_RATIO = 1.5
ARMS = {
    "plain": "no augmentation: the suffix on the cached prefix activations",
    "augmented": "flip + zoom 0.2: the suffix on per-epoch banks of the prefix's activations of augmented images",
    "augmented_old": "flip + zoom 0.2, former path: augmented images through the whole network every step",
    "copies": "flip + zoom 0.2 on {copies} augmented copies cycled over the epochs (the named shortcut "
              "`--aug-copies {copies}`): {copies} banks instead of one per epoch",
}
COPIES = 5  # the named shortcut's arm: each of 5 copies seen 3 times in 15 epochs


# -- one arm (a child process) ------------------------------------------------------------------------------------
def _old_path() -> None:
    """The implementation before issue 20 (augmented partial fine-tuning through the whole network every step)."""
    from core.data.augment import build_augmenter
    from core.training import phases

    new = phases.suffix_on_prefix

    def suffix_on_prefix(run: Any) -> None:
        if run.cfg.augment.is_identity():
            return new(run)
        return phases.full_on_images(run, build_augmenter(run.cfg.augment, run.cfg.seed))

    phases.suffix_on_prefix = suffix_on_prefix


def run_arm(arm: str, data: str, settings: dict[str, Any]) -> dict[str, Any]:
    common.quiet()
    from core.config import AugmentConfig, RunConfig
    from core.store.folders import Store
    from core.training.train import train

    if arm == "augmented_old":
        _old_path()
    augment = AugmentConfig() if arm == "plain" else AugmentConfig(**AUGMENTED)
    settings = dict(settings)
    copies = settings.pop("copies", COPIES)
    cfg = RunConfig(backbone=BACKBONE, weights="imagenet", phase="full", optimizer="adam", augment=augment, **settings)
    if arm == "copies":
        cfg = cfg.replace(aug_copies=copies)
    marks: dict[str, float] = {}

    def progress(event: dict[str, Any]) -> None:  # when each stage ended, for where the time goes
        now = time.monotonic() - t_train
        if event.get("event") == "status":
            marks.setdefault(str(event.get("message")), now)
        elif event.get("event") == "prefix" and "augmenting the training images" in marks:
            marks["first bank"] = now

    with tempfile.TemporaryDirectory(prefix="bench-augft-") as tmp:
        t_train, cpu0 = time.monotonic(), time.process_time()
        m = train(cfg, data, Store(tmp), progress=progress).record.metrics
        train_s, train_cpu_s = time.monotonic() - t_train, time.process_time() - cpu0
    return {
        "arm": arm,
        "what": ARMS[arm].format(copies=copies),
        "seed": cfg.seed,
        "n_test": m.get("n_test"),
        "wall_s": round(time.monotonic() - T0, 1),
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
        "test_accuracy": m["test_accuracy"],
        "val_accuracy": m["val_accuracy"],
        "prefix_pass_s": m["feature_seconds"],
        "epochs_run": m["epochs_run"],
        "stages_s": _stages(marks, m["feature_seconds"], train_s),
    }


def _stages(marks: dict[str, float], prefix_s: float, train_s: float) -> dict[str, float]:
    """Seconds of each stage of a run: decoding and building, the cached prefix pass, (augmented arm) the first
    epoch's bank with the frozen graph's conversion, the epochs (with every later bank), evaluating and saving."""
    tuning, evaluating = marks.get("fine-tuning the network", 0.0), marks.get("evaluating", train_s)
    start = marks.get("first bank", tuning + prefix_s)
    out = {"decode_build": tuning, "cached_prefix_pass": prefix_s, "first_bank": start - tuning - prefix_s,
           "epochs": evaluating - start, "evaluate_save": train_s - evaluating}  # fmt: skip
    return {k: round(v, 1) for k, v in out.items()}


# -- the parent -----------------------------------------------------------------------------------------------------
def _child(arm: str, data: str, settings: dict[str, Any], log: list[dict[str, Any]]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.aug_finetune", "--arm", arm, "--data", data, "--settings", json.dumps(settings)]
    with common.measured(log, arm) as timed:
        proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True, timeout=3600, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"{arm} failed (exit {proc.returncode}): " + " | ".join(tail))
    out = json.loads(lines[-1])
    out["others_cores"] = timed.get("others_cores")
    return out


def _repeated(
    arms: list[str], repeats: int, data: str, settings: dict[str, Any], log: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each arm ``repeats`` times, alternating (plain, augmented, copies, plain, ...; the former path once, last),
    so a change in the other processes' load falls on all; repeat ``i`` of every arm trains with seed ``i`` (another
    validation split, small set and initial weights), so the arms' accuracies come with their spread over seeds.
    Per arm its median run by training time, with the median CPU time, every run's figures and the mean test
    accuracy with its 95% interval (``core.study.claims.estimate``: seeds and test-set sampling)."""
    from core.study.claims import estimate

    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    alternating = [a for a in arms if a != "augmented_old"]
    for i in range(repeats):
        for arm in alternating:
            runs[arm].append(_child(arm, data, {**settings, "seed": i}, log))
    if "augmented_old" in arms:
        runs["augmented_old"].append(_child("augmented_old", data, {**settings, "seed": 0}, log))
    out = {}
    for arm, done in runs.items():
        ranked = sorted(done, key=lambda r: r["train_s"])
        median = dict(ranked[len(ranked) // 2])
        median["train_cpu_s"] = sorted(r["train_cpu_s"] for r in done)[len(done) // 2]
        median["runs"] = [{k: r.get(k) for k in ("seed", "train_s", "train_cpu_s", "others_cores", "test_accuracy")}
                          for r in done]  # fmt: skip
        est = estimate([r["test_accuracy"] for r in done], done[0].get("n_test"))
        median["test_mean"] = None if est is None else {"mean": round(est.mean, 4), "low": round(est.low, 4),
                                                        "high": round(est.high, 4), "seeds": est.n}  # fmt: skip
        out[arm] = median
    return out


def _paired(results: dict[str, dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """Test accuracy of arm ``a`` minus arm ``b``, seed by seed, with its 95% interval (the spread of the paired
    differences over the seeds, and both arms' test-set sampling)."""
    from core.study.claims import difference, estimate

    if a not in results or b not in results:
        return None
    by_seed = {r["seed"]: r["test_accuracy"] for r in results[b]["runs"]}
    diffs = [r["test_accuracy"] - by_seed[r["seed"]] for r in results[a]["runs"] if r["seed"] in by_seed]
    n_test = results[a].get("n_test")
    spread = estimate(diffs, None)
    sampling = difference(estimate([results[a]["test_mean"]["mean"]], n_test), estimate([results[b]["test_mean"]["mean"]], n_test))
    if spread is None:
        return None
    half = (spread.half**2 + sampling.half**2) ** 0.5
    return {"diff": round(spread.mean, 4), "low": round(spread.mean - half, 4), "high": round(spread.mean + half, 4),
            "seeds": spread.n}  # fmt: skip


def _ratio(results: dict[str, dict[str, Any]], arm: str, key: str) -> float | None:
    return round(results[arm][key] / results["plain"][key], 2) if arm in results else None


def _ensure_weights() -> None:
    """Convert Lite0's ImageNet weights once before timing, so no arm pays for it."""
    common.quiet()
    from core.models.backbones import resolve_weights

    resolve_weights(BACKBONE, "imagenet")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--train-per-class", type=int, default=50, help="the study's small set")
    p.add_argument("--freeze-blocks", type=int, default=None, help="default: every block of Lite0 but the last")
    p.add_argument("--old-path", action="store_true", help="also time the former path (once; minutes more)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs of each arm, alternating, repeat i with seed i (default 3; --tiny 1)")
    p.add_argument("--copies", type=int, default=COPIES,
                   help="augmented copies of the named-shortcut arm (--aug-copies; 0 leaves the arm out)")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:  # a child: run one arm, print its JSON line
        out = run_arm(args.arm, args.data, json.loads(args.settings))
        print(json.dumps(out))
        return out

    common.quiet()
    from core.models.backbones import get_backbone

    freeze = args.freeze_blocks if args.freeze_blocks is not None else get_backbone(BACKBONE).blocks - 1
    settings = {
        "image_size": 32 if args.tiny else args.image_size,
        "train_per_class": None if args.tiny else args.train_per_class,
        "freeze_blocks": freeze,
        "epochs": 2 if args.tiny else args.epochs,
        "lr": 3e-4,
        "batch_size": 8 if args.tiny else 32,
        "copies": min(args.copies, 1) if args.tiny else args.copies,
    }
    args.repeats = args.repeats or (1 if args.tiny else 3)
    arms = ["plain", "augmented"] + (["copies"] if args.copies else []) + (["augmented_old"] if args.old_path else [])
    with tempfile.TemporaryDirectory(prefix="bench-augft-data-") as tmp:
        data = str(common.resolve_data(args, Path(tmp)))
        _ensure_weights()
        seen = common.wait_for_quiet(args.quiet_wait)
        log: list[dict[str, Any]] = []
        results = _repeated(arms, args.repeats, data, settings, log)
    plain, augmented = results["plain"], results["augmented"]
    ratio = round(augmented["train_s"] / plain["train_s"], 2)
    ratio_cpu = round(augmented["train_cpu_s"] / plain["train_cpu_s"], 2)
    figures = {
        "dataset": common.dataset_label(Path(data)),
        "backbone": f"{BACKBONE} (ImageNet weights)",
        **settings,
        "optimizer": "adam",
        "augmentation": "horizontal flip + zoom 0.2",
        "arms": results,
        "ratio": ratio,
        "ratio_cpu": ratio_cpu,
        "repeats": args.repeats,
        "ratio_old": _ratio(results, "augmented_old", "train_s"),
        "ratio_old_cpu": _ratio(results, "augmented_old", "train_cpu_s"),
        "ratio_copies": _ratio(results, "copies", "train_s"),
        "ratio_copies_cpu": _ratio(results, "copies", "train_cpu_s"),
        "met_copies": None if "copies" not in results else _ratio(results, "copies", "train_s") <= TARGET_RATIO,
        "augmented_minus_plain": _paired(results, "augmented", "plain"),
        "copies_minus_augmented": _paired(results, "copies", "augmented"),
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "others_cores_before": seen,
    }
    rows = [[a["arm"], a["train_s"], a["train_cpu_s"], a["test_accuracy"], a["val_accuracy"], a["others_cores"],
             *(a["stages_s"][k] for k in STAGES)] for a in results.values()]  # fmt: skip
    print(f"CPU: {common.cpu_info()['cpu']}; augmented / plain training time: {ratio}x, CPU time: {ratio_cpu}x "
          f"(medians of {args.repeats}; target <= {TARGET_RATIO}x)")  # fmt: skip
    if "copies" in results:
        print(f"{args.copies} augmented copies / plain: {figures['ratio_copies']}x, CPU time: "
              f"{figures['ratio_copies_cpu']}x; test accuracy, copies minus fresh: {figures['copies_minus_augmented']}")
    return common.emit(
        "aug_finetune",
        figures,
        ("arm", "train s", "train CPU s", "test acc", "val acc", "others' cores", *(f"{k} s" for k in STAGES)),
        rows,
        log,
        args.tiny,
    )


# -- BENCHMARKS.md (bench/report.py) ---------------------------------------------------------------------------------
def where(f: dict[str, Any]) -> str:
    small = f"{f['train_per_class']} per class" if f.get("train_per_class") else "all training images"
    return (f"{f['dataset']}, {small}, EfficientNet-Lite0 ImageNet, {f['image_size']} px, first {f['freeze_blocks']} "
            f"blocks frozen, {f['epochs']} epochs")  # fmt: skip


def target_rows(f: dict[str, Any]) -> list[list[Any]]:
    """The summary table's rows: augmented partial fine-tuning against the same run without augmentation, as the
    study did it (a fresh augmentation every epoch) and, where measured, with the named shortcut of K copies."""
    rows = [["partial fine-tuning: flip + zoom 0.2 vs none", where(f), f"{f['ratio']}x", f"≤ {f['target_ratio']}x",
             f["met"]]]  # fmt: skip
    if f.get("ratio_copies") is not None:
        rows.append([f"the same on {f['copies']} augmented copies (`--aug-copies`, a named shortcut) vs none", where(f),
                     f"{f['ratio_copies']}x", f"≤ {f['target_ratio']}x", f["met_copies"]])  # fmt: skip
    return rows


def _acc(arm: dict[str, Any]) -> str:
    t = arm.get("test_mean")
    if not t:
        return f"{arm['test_accuracy']:.3f}"
    return f"{t['mean']:.3f} ({t['low']:.3f}–{t['high']:.3f})"


def _diff(d: dict[str, Any] | None) -> str:
    return "–" if not d else f"{d['diff']:+.3f} (95% interval {d['low']:+.3f} to {d['high']:+.3f}, {d['seeds']} seeds)"


STAGES = ("decode_build", "cached_prefix_pass", "first_bank", "epochs", "evaluate_save")


def section(f: dict[str, Any], md_table: Any, load_line: Any) -> str:
    arms, m = f["arms"], f["machine"]
    stages = [[a["arm"], *(a.get("stages_s", {}).get(k) for k in STAGES)] for a in arms.values()]
    rows = [[a["arm"], a["what"], a["train_s"], a.get("train_cpu_s"), _acc(a),
             ", ".join(f"{r['train_s']:g}" for r in a.get("runs", [])),
             ", ".join(f"{r['test_accuracy']:.3f}" for r in a.get("runs", []))] for a in arms.values()]  # fmt: skip
    old = ""
    if "augmented_old" in arms:
        cpu_old = round(arms["augmented_old"]["train_cpu_s"] / arms["plain"]["train_cpu_s"], 2)
        old = (f" The former path (augmented images through the whole network every step, one run) took "
               f"{f['ratio_old']}x the time and {cpu_old}x the CPU time.")  # fmt: skip
    repeats = f.get("repeats", 1)
    copies = ""
    if "copies" in arms:
        copies = (f" The named shortcut `--aug-copies {f['copies']}` (the epochs cycle through {f['copies']} augmented "
                  f"copies, so {f['copies']} banks instead of {f['epochs']}; not the study's way, so never a default) "
                  f"takes **{f['ratio_copies']}x** ({f['ratio_copies_cpu']}x the CPU time; target ≤ "
                  f"{f['target_ratio']}x: {'met' if f['met_copies'] else 'not met'}). Test accuracy, seed by seed, "
                  f"augmentation minus none: {_diff(f.get('augmented_minus_plain'))}; {f['copies']} copies minus a "
                  f"fresh augmentation each epoch: {_diff(f.get('copies_minus_augmented'))}.")  # fmt: skip
    headers = ["arm", "what trains on what", "train s", "train CPU s", "test accuracy (95% interval)",
               "every run's train s", "every run's test accuracy"]  # fmt: skip
    return "\n".join(
        [
            "## Partial fine-tuning with augmentation (bench/aug_finetune.py)",
            "",
            f"{where(f)}, Adam {f['lr']:g}, batch {f['batch_size']}; each arm a `core.training.train.train` run in a fresh "
            "process with an empty artifacts folder (decoding, the cached prefix pass, tracing and evaluation on the "
            f"clock), {repeats} runs of each, alternating{', run i with seed i' if 'test_mean' in arms['plain'] else ''}, "
            "medians shown. With augmentation, each epoch's augmented "
            "images go through the frozen prefix once (`core.training.augbank.EpochBanks`, the next epoch computed ahead in a "
            "background thread) and the unfrozen blocks train on those activations: **"
            f"{f['ratio']}x the time of the run without augmentation** ({f.get('ratio_cpu')}x its CPU time, which the "
            f"other processes' load disturbs less; target ≤ {f['target_ratio']}x).{old}{copies}",
            "",
            md_table(headers, rows),
            "",
            "Where the time goes in the median runs (seconds): decoding and building, the cached prefix pass (every "
            "train and test image, both arms), the first epoch's bank (with the frozen graph's conversion), the epochs "
            "(later banks computed ahead while the unfrozen blocks train), evaluating and saving:",
            "",
            md_table(["arm", *STAGES], stages),
            "",
            f"Measured on {m['cpu']} (family/model {m['cpu_family_model']}), {m['cores']} cores, TensorFlow "
            f"{m.get('tensorflow')}, shared with other engineers' tests (the load line below).",
            "",
            load_line(f),
        ]
    )


if __name__ == "__main__":
    main()
