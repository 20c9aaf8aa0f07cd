"""Estimates come from what this machine measured, or say they are rough (core/training/throughput.py)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.config import RunConfig
from core.training import throughput


class FakeStore:
    """The two things the estimate reads: the runs folder (its mtime) and the stored runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs_dir = root / "runs"
        self.runs_dir.mkdir(parents=True)
        self.records: list[SimpleNamespace] = []

    def list_runs(self) -> list[SimpleNamespace]:
        return list(self.records)

    def add(self, backbone: str, seconds: float, feature_seconds: float, epochs: int, **run: object) -> None:
        cfg = {"backbone": backbone, "phase": "head", "augment": {"hflip": False, "zoom": 0.0}, **run}
        self.records.append(
            SimpleNamespace(
                config={"run": cfg},
                metrics={"seconds": seconds, "feature_seconds": feature_seconds, "epochs_run": epochs},
            )
        )
        stamp = self.runs_dir.stat().st_mtime + len(self.records)
        os.utime(self.runs_dir, (stamp, stamp))  # a new run folder renamed in changes the folder's mtime


def test_search_trial_estimate_is_rough_until_this_machine_has_trained_a_head(tmp_path: Path) -> None:
    store = FakeStore(tmp_path)
    cfg = RunConfig(backbone="efficientnet_lite0", epochs=30)
    assert throughput.search_trial_seconds(cfg, store, repeats=3) == (throughput.HEAD_RUN_S * 3, False)
    store.add("efficientnet_lite0", seconds=10.0, feature_seconds=4.0, epochs=30)  # 0.2 s per epoch
    store.add("efficientnet_lite0", seconds=3.0, feature_seconds=0.0, epochs=10)  # 0.3
    store.add("efficientnet_lite0", seconds=2.0, feature_seconds=0.0, epochs=20)  # 0.1
    store.add(
        "efficientnet_lite0", seconds=99.0, feature_seconds=0.0, epochs=1, augment={"zoom": 0.2}
    )  # not on features
    store.add(
        "efficientnet_lite0", seconds=99.0, feature_seconds=0.0, epochs=1, phase="head+full"
    )  # trains the backbone
    store.add("densenet121", seconds=99.0, feature_seconds=0.0, epochs=1)  # another backbone
    seconds, measured = throughput.search_trial_seconds(cfg, store, repeats=3)
    assert measured is True and seconds == pytest.approx(0.2 * 30 * 3)
    assert throughput.head_epoch_seconds(store, "densenet121") == pytest.approx(99.0)


def test_known_throughput_is_read_without_measuring(tmp_path: Path) -> None:
    assert throughput.known("efficientnet_lite0", 128, tmp_path) is None
    throughput.measured_cache(tmp_path).write_text('{"efficientnet_lite0@128": {"infer": 200.0, "train": 20.0}}')
    assert throughput.known("efficientnet_lite0", 128, tmp_path) == throughput.Throughput(200.0, 20.0)
    assert throughput.known("efficientnet_lite0", 224, tmp_path) is None
