"""Parameter counts of a classifier, cached on disk so that ``describe`` and page 1 answer without Keras.

Counts depend on the architecture only (never on weights), so one build per (backbone, cut, head, size)
serves every later question. The cache key includes a digest of the code that builds the networks
(``core/models/``) and the Keras version, so a changed builder is never answered with old counts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from core.config import stable_hash
from core.store.atomic import atomic_write_json

logger = logging.getLogger(__name__)

_MODELS = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def builder_identity() -> str:
    """A digest of the sources that build classifiers and of the installed Keras version."""
    digest = hashlib.sha256()
    for path in sorted(_MODELS.rglob("*.py")):
        digest.update(path.relative_to(_MODELS).as_posix().encode())
        digest.update(path.read_bytes())
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # Keras is a requirement
        digest.update(importlib.metadata.version("keras").encode())
    return digest.hexdigest()[:16]


def counts_path(root: str | Path, question: dict[str, Any]) -> Path:
    """Where the answer to ``question`` (describe's arguments) is cached under the artifacts folder ``root``."""
    return Path(root) / "describe" / f"{stable_hash({**question, 'builder': builder_identity()})}.json"


def describe_cached(
    root: str | Path,
    backbone: str,
    remove_blocks: int = 0,
    *,
    classes: int = 8,
    dense_1024: bool = False,
    batch_norm: bool = False,
    image_size: int,
) -> dict[str, Any]:
    """:func:`core.models.model.describe`, read from the cache when it was asked before (then without Keras)."""
    question = {"backbone": backbone, "remove_blocks": remove_blocks, "classes": classes,
                "dense_1024": dense_1024, "batch_norm": batch_norm, "image_size": image_size}  # fmt: skip
    path = counts_path(root, question)
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("backbone") == backbone:
            return cached
    except (OSError, ValueError):  # missing or unreadable: count again
        pass
    from core.models.model import describe

    answer = describe(**question)
    try:
        atomic_write_json(path, answer)
    except Exception as exc:  # a cache that cannot be written costs time, never the answer
        logger.warning("could not cache parameter counts in %s: %s", path, exc)
    return answer
