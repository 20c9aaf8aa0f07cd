"""What every benchmark shares: the machine and its load, tiny data, timing, the printed result.

Each benchmark prints a short table and then its figures as ONE JSON line (the last line), which
``bench/report.py`` turns into BENCHMARKS.md. Timings on a shared 2-core machine are noisy, so every
timed block records how much CPU *other* processes used meanwhile (``others_cores``: 0 means the
machine was ours, 1 means another process kept a whole core busy), and benchmarks compare baseline and
candidate in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIT64 = REPO.parent / "shared" / "datasets" / "mit_split_64"
# The figure: 2 cores x 2.1 GHz x 64 fp32 FLOP/cycle (two 512-bit FMA units per core).
NOMINAL_PEAK_GFLOPS = 2 * 2.1 * 64
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def quiet() -> None:
    """Silence TensorFlow's start-up chatter and Keras user warnings (call before importing TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# -- the machine --------------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the vector extensions that matter for convolutions."""
    model, flags, family, model_no = platform.processor() or "unknown", set(), None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu family" and family is None:
                family = value
            elif key == "model" and model_no is None:
                model_no = value
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cpu_family_model": f"{family}/{model_no}",
        "cores": os.cpu_count(),
        "isa": [f for f in wanted if f in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def machine() -> dict[str, Any]:
    info = cpu_info()
    info["python"] = platform.python_version()
    try:
        import keras
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["keras"] = keras.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


# -- load ---------------------------------------------------------------------------------------------
def _busy_jiffies() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal


def _own_jiffies() -> int:
    text = Path("/proc/self/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15])  # utime stime cutime cstime


class CpuMeter:
    """CPU used by this process and by everything else between ``start`` and ``stop``, in cores."""

    def __init__(self) -> None:
        self.t0 = self.busy0 = self.own0 = 0.0

    def start(self) -> CpuMeter:
        self.t0, self.busy0, self.own0 = time.monotonic(), _busy_jiffies(), _own_jiffies()
        return self

    def stop(self) -> dict[str, float]:
        dt = max(time.monotonic() - self.t0, 1e-9)
        busy = (_busy_jiffies() - self.busy0) / _HZ
        own = (_own_jiffies() - self.own0) / _HZ
        return {
            "seconds": round(dt, 3),
            "own_cores": round(own / dt, 2),
            "others_cores": round(max(busy - own, 0.0) / dt, 2),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }


def others_now(seconds: float = 1.0) -> float:
    """Cores other processes keep busy right now (sampled while this process sleeps)."""
    meter = CpuMeter().start()
    time.sleep(seconds)
    return meter.stop()["others_cores"]


def wait_for_quiet(max_wait_s: float, threshold: float = 0.3, sample_s: float = 2.0) -> float:
    """Wait up to ``max_wait_s`` for other processes to use under ``threshold`` cores; return the last sample."""
    deadline = time.monotonic() + max_wait_s
    seen = others_now(min(sample_s, 0.5) if max_wait_s <= 0 else sample_s)
    while seen > threshold and time.monotonic() < deadline:
        seen = others_now(sample_s)
    return seen


@contextmanager
def measured(log: list[dict[str, Any]], label: str) -> Iterator[dict[str, Any]]:
    """Time a block; append ``{label, seconds, own_cores, others_cores, loadavg_1m}`` to ``log``."""
    out: dict[str, Any] = {"label": label}
    meter = CpuMeter().start()
    try:
        yield out
    finally:
        out.update(meter.stop())
        log.append(out)


def load_summary(log: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The worst and the time-weighted mean of other processes' CPU over the measured blocks."""
    if not log:
        return {"others_cores_mean": None, "others_cores_max": None}
    total = sum(r["seconds"] for r in log) or 1.0
    return {
        "others_cores_mean": round(sum(r["others_cores"] * r["seconds"] for r in log) / total, 2),
        "others_cores_max": max(r["others_cores"] for r in log),
        "loadavg_1m_max": max(r["loadavg_1m"] for r in log),
    }


# -- data ---------------------------------------------------------------------------------------------
def tiny_dataset(
    root: Path,
    classes: Sequence[str] = ("coast", "forest", "street"),
    n_train: int = 8,
    n_test: int = 3,
    size: int = 32,
) -> Path:
    """A few generated JPEGs per class (class-dependent colour and stripes), as tests/conftest.py makes."""
    import numpy as np
    from PIL import Image

    for split, n in (("train", n_train), ("test", n_test)):
        for idx, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng(zlib.crc32(f"{split}/{cls}/{i}".encode()))  # same in every process
                arr = np.array([40 + 80 * idx, 140 - 40 * idx, 200 - 70 * idx], np.float32) + rng.normal(
                    0, 25, (size, size, 3)
                )
                arr[:, :: 2 + idx, :] += 60
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{cls}_{i}.jpg", quality=95)
    return root


def dataset_label(root: Path) -> str:
    return root.name if root.resolve() == MIT64.resolve() or root.name == "mit_split_64" else f"generated ({root.name})"


# -- arguments and output -----------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="generated data and tiny sizes: finishes in well under a minute")
    p.add_argument("--data", default=None, help=f"dataset folder (default {MIT64}; generated in --tiny mode)")
    p.add_argument("--quiet-wait", type=float, default=0.0, help="seconds to wait for other processes to go idle first")
    return p


def resolve_data(args: argparse.Namespace, workdir: Path) -> Path:
    if args.data:
        return Path(args.data)
    if args.tiny:
        return tiny_dataset(workdir / "tiny")
    if not (MIT64 / "train").is_dir():
        raise SystemExit(f"The dataset {MIT64} is absent; pass --data DIR or --tiny.")
    return MIT64


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def emit(
    bench: str,
    figures: dict[str, Any],
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    load_log: Sequence[dict[str, Any]],
    tiny: bool,
) -> dict[str, Any]:
    """Print the table, then one JSON line with the figures, the machine, the load and the date."""
    payload = {
        "bench": bench,
        "tiny": tiny,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **figures,
        "load": load_summary(load_log),
        "machine": machine(),
        "command": "python -m bench."
        + bench
        + (" --tiny" if tiny else "")
        + "".join(f" {_shown_arg(a)}" for a in sys.argv[1:] if a != "--tiny"),
    }
    print(table(headers, rows))
    print(f"(other processes used {payload['load']['others_cores_mean']} cores on average while timing)")
    print(json.dumps(payload, default=_json_default), flush=True)
    return payload


def _shown_arg(arg: str) -> str:
    """An argument as the results show it: an absolute path (a developer's folder) becomes DIR."""
    return "DIR" if arg.startswith("/") else arg


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def rate(n: float, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")
