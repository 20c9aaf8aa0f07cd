"""Helpers the app tests share: a real ``streamlit run`` server, and reading an AppTest's output."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
#: ``python -c CORE_REPORTING_IMPORTS ARGS`` runs ``python -m core ARGS``, then writes one stderr line
#: ``HEAVY=[...]``: which of TensorFlow, Keras and scikit-learn the process imported (tests and bench/startup.py)
CORE_REPORTING_IMPORTS = """
import atexit, json, runpy, sys
HEAVY = ("tensorflow", "keras", "sklearn")
atexit.register(lambda: sys.stderr.write("HEAVY=" + json.dumps([m for m in HEAVY if m in sys.modules]) + "\\n"))
sys.argv = ["core", *sys.argv[1:]]
runpy.run_module("core", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(
    env: dict[str, str], log_path: Path, timeout: float = 60, cwd: Path = REPO
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``streamlit run app.py`` headless on a free 127.0.0.1 port; yields (process, url) once healthy.

    Fails the test with the log's tail if it does not start within ``timeout``; stops the server after,
    printing the log's tail if it holds a traceback."""
    port = free_port()
    log = open(log_path, "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start:\n{log.read()[-3000:]}")
            time.sleep(0.3)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        tail = log.read()[-4000:]
        log.close()
        if "Traceback" in tail:
            print(f"streamlit log tail:\n{tail}")


def metrics(at: Any) -> dict[str, str]:
    """An AppTest's metrics, label -> value."""
    return {m.label: m.value for m in at.metric}


def texts(at: Any) -> str:
    """Everything an AppTest shows as text (markdown, captions, info, errors, warnings, successes)."""
    parts = [e.value for kind in (at.markdown, at.caption, at.info, at.error, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


@contextlib.contextmanager
def local_cluster(**kwargs: Any) -> Iterator[Any]:
    """A real ``distributed.LocalCluster`` whose worker processes start clean. Dask spawns them, and a spawned
    process first runs its parent's ``__main__`` again: after an AppTest in this test process that is ``app.py``
    (which then fails outside Streamlit, and the nanny cannot start its worker). The cluster's lifetime sees a bare
    ``__main__``, so workers restarted after a SIGKILL start clean too."""
    import types

    from distributed import LocalCluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
        with LocalCluster(**kwargs) as cluster:
            yield cluster
