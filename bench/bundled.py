"""The bundled dataset: how long the first start unpacks it, and what every later call costs.

In a fresh artifacts folder, ``core.data.bundled.ensure_bundled`` is timed once (sha256 of the zip, the
safe import of 2688 images, the validating scan, the rename), then again many times (the folder is
there: one small file read). Beside it, a full ``scan_dataset`` of the unpacked folder, which is what
a later call would cost if it re-checked the images instead of reading the import record.

    python -m bench.bundled [--tiny] [--repeats 200]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

TARGETS = {"unpack_s": 10.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200, help="timed later calls (median reported)")
    args = p.parse_args(argv)
    common.quiet()
    from core.data.arrays import scan_dataset
    from core.data.bundled import BUNDLED_ZIP, ensure_bundled

    repeats = 20 if args.tiny else args.repeats
    seen = common.wait_for_quiet(args.quiet_wait)
    log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bundled-") as tmp:
        with common.measured(log, "first call (unpack)") as first:
            folder = ensure_bundled(Path(tmp) / "artifacts")
        later = []
        with common.measured(log, f"later calls x{repeats}"):
            for _ in range(repeats):
                t0 = time.perf_counter()
                ensure_bundled(Path(tmp) / "artifacts")
                later.append(time.perf_counter() - t0)
        with common.measured(log, "full re-scan") as rescan:
            info = scan_dataset(folder)
    later_ms = round(statistics.median(later) * 1000, 3)
    images = sum(len(v) for v in info.files.values())
    figures = {
        "dataset": "mit_split_64",
        "zip_bytes": BUNDLED_ZIP.stat().st_size,
        "images": images,
        "unpack_s": first["seconds"],
        "second_call_ms": later_ms,
        "second_call_max_ms": round(max(later) * 1000, 3),
        "rescan_ms": round(rescan["seconds"] * 1000, 1),
        "targets": TARGETS,
        "others_cores_before": seen,
    }
    rows = [
        ("first call: sha256 + safe unpack + scan + rename", first["seconds"], f"<= {TARGETS['unpack_s']:g} s"),
        (f"later call (median of {repeats})", later_ms / 1000, ""),
        ("a full re-scan instead (avoided)", rescan["seconds"], ""),
    ]
    return common.emit("bundled", figures, ("step", "seconds", "target"), rows, log, args.tiny)


if __name__ == "__main__":
    main()
