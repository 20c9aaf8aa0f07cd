"""Where SceneLab's own files are: the repository, and the artifacts folder runs and caches go to."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACTS = REPO / "artifacts"
ARTIFACTS_ENV = "SCENELAB_ARTIFACTS"


def default_artifacts() -> Path:
    """``SCENELAB_ARTIFACTS``, else the repository's ``artifacts/`` folder."""
    return Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
