"""Loaded by every Python process the tests start (tests/conftest.py puts this folder on PYTHONPATH).

With ``SCENELAB_TEST_PAUSE_AT=<checkpoint>`` it listens to ``core.store.atomic``'s checkpoints and, at that one,
prints ``scenelab-test: paused at ...`` on stderr and sleeps ``SCENELAB_TEST_PAUSE_S`` seconds (default 120),
so a test can kill the process at exactly that point. ``write`` pauses at the first file written into a
run's temporary folder; ``write:<file or folder>`` at that file, or any file of ``datasets/`` or ``features/``.
The sleep lives here, not in SceneLab: production code only names its checkpoints.
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "SCENELAB_TEST_PAUSE_AT"


def _pause(name: str, aliases: tuple[str, ...], in_run: bool) -> None:
    want = os.environ.get(PAUSE_ENV, "")
    if not (want in (name, *aliases) or (want == "write" and in_run and name.startswith("write:"))):
        return
    sys.stderr.write(f"scenelab-test: paused at {name if want == 'write' else want} ({name})\n")
    sys.stderr.flush()
    time.sleep(float(os.environ.get("SCENELAB_TEST_PAUSE_S", "120")))


if os.environ.get(PAUSE_ENV):
    try:
        from core.store.atomic import add_checkpoint_hook
    except ImportError:  # a process that does not run SceneLab from this checkout
        pass
    else:
        add_checkpoint_hook(_pause)
