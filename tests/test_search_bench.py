"""``bench/search.py --tiny`` prints its figures as one JSON line (as tests/test_bench.py checks the other benchmarks;
no timed assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # three tune processes (TensorFlow each): about 45 s on 2 cores
def test_search_bench_tiny_prints_json() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.search", "--tiny"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert len(lines) >= 4  # a table before the JSON line
    assert figures["bench"] == "search" and figures["tiny"] is True
    assert {"arms", "speedup_2_workers", "overhead_ms_per_trial", "why", "load", "machine", "command"} <= set(figures)
    for name in ("sqlite/1", "sqlite/2"):
        arm = figures["arms"][name]
        assert arm["trials"] == figures["trials"] and arm["trials_per_min"] > 0 and sum(arm["per_worker"]) == arm["trials"]
    assert figures["overhead_ms_per_trial"]["sqlite"] > 0 and figures["overhead_ms_per_trial"]["memory"] > 0
