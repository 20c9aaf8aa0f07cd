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
    assert (figures["trials"], figures["epochs"], figures["image_size"]) == (2, 2, 32)  # what --tiny asks for
    arms = figures["arms"]
    for name, workers in (("sqlite/1", 1), ("sqlite/2", 2)):
        arm = arms[name]
        assert arm["workers"] == workers == len(arm["per_worker"]) and arm["surplus"] == 0
        assert arm["trials"] == figures["trials"] == sum(arm["per_worker"])  # every trial asked for ran once
        assert arm["span_s"] <= arm["wall_s"] and arm["mean_trial_s"] <= arm["span_s"] * workers
        assert arm["trials_per_min"] == pytest.approx(60 * arm["trials"] / arm["span_s"], rel=0.05)
        # one worker's TensorFlow already runs its kernels on every core: the bound is the machine's cores, not the
        # workers (CPU seconds of the worker processes per wall second, with a jiffy's slack)
        assert 0 < arm["cores_used"] <= (os.cpu_count() or 1) + 0.05
    speedup = arms["sqlite/2"]["trials_per_min"] / arms["sqlite/1"]["trials_per_min"]
    assert figures["speedup_2_workers"]["sqlite"] == pytest.approx(speedup, abs=0.01)
    # a trial's storage calls cost more on SQLite (a file, locks, fsync) than in memory
    assert figures["overhead_ms_per_trial"]["sqlite"] > figures["overhead_ms_per_trial"]["memory"] > 0
