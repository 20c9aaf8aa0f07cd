"""Background worker processes the app starts for a study: ``python -m core tune`` detached.

They keep going when the user switches pages or closes the tab; the page only asks this module to
start, list and stop them. Each study's workers are recorded in ``<artifacts>/studies/<study>.pids``
(a recorded pid is trusted only while it still runs ``core tune``) and log to ``<study>.log``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from core.paths import REPO
from core.search.study import StudyRequest, prepare_study, tune_argv
from core.search.workers import pid_alive


def studies_dir(artifacts: str) -> Path:
    return Path(artifacts).expanduser() / "studies"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "study"


def log_path(artifacts: str, name: str) -> Path:
    return studies_dir(artifacts) / f"{safe_name(name)}.log"


def pid_path(artifacts: str, name: str) -> Path:
    return studies_dir(artifacts) / f"{safe_name(name)}.pids"


def _is_tune_worker(pid: int) -> bool:
    """The pid still runs ``python -m core tune`` (a recorded pid may have been reused since)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc").is_dir()  # no /proc (macOS): trust the pid file
    return b"core" in args and b"tune" in args


def live_workers(artifacts: str, name: str) -> list[int]:
    """Pids of the workers this app started for the study that still run."""
    try:
        pids = [int(x) for x in pid_path(artifacts, name).read_text().split()]
    except (OSError, ValueError):
        return []
    return [p for p in pids if pid_alive(p) and _is_tune_worker(p)]


def check_and_create(req: StudyRequest) -> None:
    """Validate a worker's request here and create the study, so errors show at once as one sentence
    (:class:`~core.errors.SceneLabError`) instead of in a log."""
    prepare_study(req)


def launch_worker(argv: list[str], artifacts: str, name: str) -> int:
    """Start ``python -m core tune ARGV`` detached (it survives page switches and reruns); its pid."""
    folder = studies_dir(artifacts)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path(artifacts, name), "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments built from widgets
            [sys.executable, "-m", "core", "tune", *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(pid_path(artifacts, name), "a") as fh:
        fh.write(f"{proc.pid}\n")
    return proc.pid


def start_worker(req: StudyRequest) -> int:
    """:func:`check_and_create`, then :func:`launch_worker` with the arguments that ask for ``req``.

    It takes the parsed request (``core.cli.parse_tune`` turns a command line into one), so this module
    needs nothing from the command-line layer above it."""
    check_and_create(req)
    return launch_worker(tune_argv(req), req.artifacts_root, req.study)


def stop_workers(artifacts: str, name: str) -> int:
    """SIGTERM the workers this app started for the study (their running trial is marked FAIL)."""
    stopped = 0
    for pid in live_workers(artifacts, name):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            stopped += 1
    return stopped


def log_tail(artifacts: str, name: str, lines: int = 15) -> str:
    try:
        text = log_path(artifacts, name).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
