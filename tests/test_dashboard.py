"""optuna-dashboard, a client we did not write, reads what Optuna wrote to our storages (docs/SEARCH.md).

A real ``optuna-dashboard`` server runs as a subprocess on a SQLite file and on the PostgreSQL server; the study
is read back through its HTTP API (``GET /api/studies``, ``GET /api/studies/<id>``, as the dashboard's own
front end does) and must show every trial's state, value, intermediate values and user attributes as written.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.apphelpers import free_port

STUDY = "dash"
# number -> (state, intermediate values, value the API shows, user attributes): what docs/SEARCH.md says trials carry
TRIALS: dict[int, tuple[str, dict[int, float], list[float] | None, dict[str, Any]]] = {
    0: ("Complete", {0: 0.5, 1: 0.75, 2: 0.875}, [0.9], {"test_accuracy": 0.88, "run_id": "r0", "worker": "h:1"}),
    1: ("Pruned", {0: 0.25, 1: 0.125}, [0.125], {"run_id": "r1", "worker": "h:2", "seconds": 1.5}),  # last step
    2: ("Fail", {0: 0.5, 1: math.nan}, None, {"worker": "h:1", "fail_reason": "ResourceExhaustedError: OOM"}),
}


def _write_study(storage: str) -> None:
    """A maximized study holding one COMPLETE, one PRUNED and one FAIL trial, written with optuna alone."""
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.set_user_attr("dataset", "mit_split_64")
    for number, (state, steps, _, attrs) in TRIALS.items():
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})
        assert trial.number == number
        for step, value in steps.items():
            trial.report(value, step)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if state == "Complete":
            study.tell(trial, 0.9)
        else:
            study.tell(trial, state=optuna.trial.TrialState[state.upper()])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, (url, r.status)
        return json.load(r)


@contextlib.contextmanager
def dashboard(storage: str, log_path: Path, timeout: float = 30) -> Iterator[str]:
    """``optuna-dashboard STORAGE --host 127.0.0.1 --port <free>``; yields its base URL once ``/api/meta`` answers,
    and stops it afterwards."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    cmd = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    assert cmd, "optuna-dashboard is not installed (pip install -r requirements.txt)"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(
            [cmd, storage, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref", "--quiet"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    _get(f"{url}/api/meta")
                    break
                except (urllib.error.URLError, ConnectionError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"optuna-dashboard did not start (exit {proc.poll()}):\n{log.read()[-3000:]}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _check_study_through_dashboard(url: str) -> None:
    summaries = _get(f"{url}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [STUDY]
    summary = summaries[0]
    assert summary["directions"] == ["maximize"]
    assert summary["user_attrs"] == [{"key": "dataset", "value": "mit_split_64"}]

    detail = _get(f"{url}/api/studies/{summary['study_id']}")
    assert detail["name"] == STUDY
    assert detail["has_intermediate_values"] is True
    trials = {t["number"]: t for t in detail["trials"]}
    assert sorted(trials) == sorted(TRIALS)
    for number, (state, steps, values, attrs) in TRIALS.items():
        t = trials[number]
        assert t["state"] == state, t
        assert t.get("values") == values, t
        written = [{"step": s, "value": "nan" if math.isnan(v) else v} for s, v in sorted(steps.items())]
        assert t["intermediate_values"] == written, t  # NaN travels as "nan"
        assert {a["key"]: a["value"] for a in t["user_attrs"]} == {k: str(v) for k, v in attrs.items()}, t
        assert [p["name"] for p in t["params"]] == ["lr"]
    assert [t["number"] for t in detail["best_trials"]] == [0]


def test_dashboard_reads_a_sqlite_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _write_study(storage)
    with dashboard(storage, tmp_path / "dashboard.log") as url:
        _check_study_through_dashboard(url)


def test_dashboard_reads_a_postgresql_study(pg_storage_url: str, tmp_path: Path) -> None:
    _write_study(pg_storage_url)
    with dashboard(pg_storage_url, tmp_path / "dashboard.log") as url:
        _check_study_through_dashboard(url)
