"""A user's big folder: a head at 128 px from nothing on 2.7k, 10k and 50k images, its wall time and peak memory.

The datasets are generated from a real one (default: the shared mit_split_64): each new image is a source image
cropped (60-100 % of its side, at a random place), maybe mirrored, resized to 96-160 px and saved as a JPEG, so
every file is a real photo-like JPEG the pipeline must decode. Train/test keep the source's split (each new image
comes from a source of that split and class).

For each size, ``python -m core train`` runs in a fresh process with a fresh artifacts folder (nothing cached:
scan, fingerprint, decode, features, head, save), and the bench records its wall time and its peak resident
memory (``ru_maxrss`` of that process, from ``wait4``). ``--baseline DIR`` runs the same in another checkout
(e.g. the commit before streaming decoding) for the sizes in ``--baseline-sizes``.

    python -m bench.scale [--tiny] [--data DIR] [--sizes 2700,10000,50000] [--keep DIR] [--baseline DIR]
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, dataset_label, emit, parser, resolve_data, wait_for_quiet

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"growth_50k_over_2_7k": 20.0, "peak_rss_50k_gib": 3.0}
SUFFIXES = {".jpg", ".jpeg", ".png"}


def _sources(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """Per split, (class, file) of every image of the source dataset, in a fixed order."""
    out: dict[str, list[tuple[str, Path]]] = {}
    for split in ("train", "test"):
        out[split] = sorted((d.name, f) for d in (root / split).iterdir() if d.is_dir()
                            for f in d.iterdir() if f.suffix.lower() in SUFFIXES)  # fmt: skip
    return out


def _make(job: tuple[Path, Path, int, int]) -> None:
    from PIL import Image, ImageOps

    source, dest, index, max_side = job
    rng = random.Random(index)
    with Image.open(source) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        frac = rng.uniform(0.6, 1.0)
        cw, ch = max(8, int(w * frac)), max(8, int(h * frac))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        side = rng.randint(max_side * 3 // 5, max_side)
        im.resize((side, side), Image.Resampling.BILINEAR).save(dest, quality=90)


def generate(source: Path, dest: Path, count: int, max_side: int = 160) -> Path:
    """``count`` JPEGs made from ``source`` (the split's share of them per split), in ``dest``; reused if complete."""
    done = dest / ".complete"
    if done.is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    sources = _sources(source)
    total = sum(len(v) for v in sources.values())
    jobs = []
    for split, items in sources.items():
        n = round(count * len(items) / total)
        for i in range(n):
            cls, path = items[i % len(items)]
            folder = dest / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((path, folder / f"{split}_{i:06d}.jpg", zlib.crc32(f"{split}/{i}".encode()), max_side))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_make, jobs, chunksize=256))
    done.write_text(str(len(jobs)))
    return dest


def train_from_nothing(data: Path, work: Path, cwd: Path, size: int, epochs: int) -> dict[str, Any]:
    """``python -m core train`` on ``data`` into a fresh artifacts folder: wall seconds, peak RSS, its answer."""
    artifacts = work / f"artifacts-{cwd.name}-{data.name}"
    shutil.rmtree(artifacts, ignore_errors=True)
    cmd = [sys.executable, "-m", "core", "train", "--data", str(data), "--image-size", str(size), "--epochs", str(epochs),
           "--artifacts", str(artifacts), "--json"]  # fmt: skip
    meter = CpuMeter().start()
    t0 = time.monotonic()
    with open(work / f"train-{cwd.name}-{data.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdout=subprocess.PIPE,
                                stderr=log, text=True)  # fmt: skip
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    load = meter.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (work / f"train-{cwd.name}-{data.name}.log").read_text()[-2000:]
        return {"error": tail.strip().splitlines()[-1] if tail.strip() else "failed", "seconds": round(seconds, 1)}
    answer = json.loads(out.strip().splitlines()[-1])
    cache = sum(p.stat().st_size for p in (artifacts / "datasets").glob("*.npz"))
    shutil.rmtree(artifacts, ignore_errors=True)
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "test_accuracy": answer.get("test_accuracy"), "decoded_cache_gib": round(cache / 2**30, 3),
            "others_cores": load["others_cores"], "loadavg_1m": load["loadavg_1m"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="image counts (default 2700,10000,50000; --tiny: 60,240)")
    p.add_argument("--keep", default=None, help="generate the datasets here and keep them (reused when complete)")
    p.add_argument("--baseline", default=None, help="another checkout to run as well")
    p.add_argument("--baseline-sizes", default=None, help="the counts the baseline runs (default: --sizes)")
    args = p.parse_args(argv)
    wait_for_quiet(args.quiet_wait)
    sizes = [int(s) for s in (args.sizes or ("60,240" if args.tiny else "2700,10000,50000")).split(",")]
    image_size, epochs, max_side = (32, 2, 48) if args.tiny else (128, 10, 160)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = resolve_data(args, work)
        arms = {"candidate": REPO, **({"baseline": Path(args.baseline).resolve()} if args.baseline else {})}
        base_sizes = [int(s) for s in args.baseline_sizes.split(",")] if args.baseline_sizes else sizes
        results: dict[str, dict[str, Any]] = {arm: {} for arm in arms}
        generated: dict[int, float] = {}
        for n in sizes:
            t0 = time.monotonic()
            data = generate(source, work / f"scale-{n}", n, max_side)
            generated[n] = round(time.monotonic() - t0, 1)
            for arm, cwd in arms.items():
                if arm == "baseline" and n not in base_sizes:
                    continue
                results[arm][str(n)] = train_from_nothing(data, work, cwd, image_size, epochs)
                print(f"  {arm} {n}: {results[arm][str(n)]}", file=sys.stderr, flush=True)
    return report(results, sizes, generated, source, image_size, epochs, args.tiny)


def report(results: dict, sizes: list[int], generated: dict, source: Path, image_size: int, epochs: int,
           tiny: bool) -> dict[str, Any]:  # fmt: skip
    cand = results["candidate"]
    first, last = cand[str(sizes[0])], cand[str(sizes[-1])]
    growth = round(last["seconds"] / first["seconds"], 2) if "error" not in first and "error" not in last else None
    figures = {"dataset": dataset_label(source), "image_size": image_size, "epochs": epochs, "sizes": sizes,
               "generated_s": {str(k): v for k, v in generated.items()}, "results": results,
               "growth": growth, "size_ratio": round(sizes[-1] / sizes[0], 2), "targets": TARGETS,
               "met": {"growth": growth is not None and growth <= TARGETS["growth_50k_over_2_7k"],
                       "peak_rss": last.get("peak_rss_gib", 1e9) <= TARGETS["peak_rss_50k_gib"]}}  # fmt: skip
    rows = [[arm, n, r.get("seconds"), r.get("peak_rss_gib"), r.get("decoded_cache_gib"), r.get("test_accuracy"),
             r.get("others_cores"), r.get("error", "")]
            for arm, per in results.items() for n, r in per.items()]  # fmt: skip
    log = [{"seconds": r.get("seconds") or 0.0, "others_cores": r.get("others_cores", 0.0), "loadavg_1m": r.get("loadavg_1m", 0.0)}
           for per in results.values() for r in per.values()]  # fmt: skip
    return emit("scale", figures, ["arm", "images", "seconds", "peak RSS (GiB)", "decoded cache (GiB)", "test acc",
                                   "others (cores)", "error"], rows, log, tiny)  # fmt: skip


if __name__ == "__main__":
    main()


# -- BENCHMARKS.md --------------------------------------------------------------------------------------------
def target_rows(f: dict[str, Any]) -> list[list[Any]]:
    runs, sizes = f["results"]["candidate"], f["sizes"]
    where = f"generated from {f['dataset']} / Lite0 / {f['image_size']} px"
    last = runs[str(sizes[-1])]
    return [[f"head from nothing: {sizes[-1]} images over {sizes[0]}", where, f"{f['growth']}x (sizes {f['size_ratio']}x)",
             f"≤ {f['targets']['growth_50k_over_2_7k']:g}x", f["met"]["growth"]],
            [f"head from nothing: peak RSS at {sizes[-1]} images", where, f"{last.get('peak_rss_gib')} GiB",
             f"≤ {f['targets']['peak_rss_50k_gib']:g} GiB", f["met"]["peak_rss"]]]  # fmt: skip


def section(f: dict[str, Any], md_table: Any, load_line: Any) -> str:
    rows = [[arm, int(n), r.get("seconds"), r.get("peak_rss_gib"), r.get("decoded_cache_gib"), r.get("test_accuracy"),
             r.get("others_cores"), r.get("error", "")]
            for arm, per in f["results"].items() for n, r in per.items()]  # fmt: skip
    return "\n".join(
        [
            "## A big folder in bounded memory (bench/scale.py)",
            "",
            f"Datasets of {', '.join(str(n) for n in f['sizes'])} JPEGs generated from {f['dataset']} (each a source "
            f"image cropped, maybe mirrored, resized to 96-160 px), then `python -m core train` at {f['image_size']} px, "
            f"{f['epochs']} head epochs, EfficientNet-Lite0 ImageNet, in a fresh process with a fresh artifacts folder "
            "(scan, fingerprint, decode, features, head, save). *peak RSS*: `ru_maxrss` of that process. *candidate*: "
            "decoding streamed to its cache and read back memory-mapped; *baseline*: the commit before, in the same run.",
            "",
            md_table(["checkout", "images", "seconds", "peak RSS (GiB)", "decoded cache (GiB)", "test accuracy",
                      "others (cores)", "error"], rows),  # fmt: skip
            "",
            f"Time grew {f['growth']}x for {f['size_ratio']}x the images.",
            "",
            load_line(f),
        ]
    )
