"""The names of the 1000 ImageNet-1k classes, read from ``core/assets/imagenet_classes.txt``.

The file is a plain copy of the list tensorflow-datasets ships (its first line says exactly where it
came from), kept in the repository so that class names need neither that package nor the network.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging

logger = logging.getLogger(__name__)

__all__ = ["IMAGENET_CLASSES", "imagenet_class_names"]

IMAGENET_CLASSES = 1000
_ASSET_FOLDER = "assets"
_ASSET_NAME = "imagenet_classes.txt"


def _read_full_names() -> tuple[str, ...] | None:
    """The full names (``"tench, Tinca tinca"``...) in index order, or ``None`` when the file is unusable."""
    try:
        text = importlib.resources.files("core").joinpath(_ASSET_FOLDER, _ASSET_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("cannot read the ImageNet class names from core/%s/%s: %s", _ASSET_FOLDER, _ASSET_NAME, exc)
        return None
    names = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if len(names) != IMAGENET_CLASSES:
        logger.warning("core/%s/%s has %d class names instead of %d", _ASSET_FOLDER, _ASSET_NAME, len(names), IMAGENET_CLASSES)
        return None
    return names


@functools.cache
def _short_names() -> tuple[str, ...]:
    names = _read_full_names()
    if names is None:
        return tuple(f"ImageNet class {i}" for i in range(IMAGENET_CLASSES))
    short = [n.split(",")[0].strip() for n in names]
    seen: dict[str, int] = {}
    for n in short:
        seen[n] = seen.get(n, 0) + 1
    return tuple(f"{n} ({i})" if seen[n] > 1 else n for i, n in enumerate(short))


def imagenet_class_names() -> list[str]:
    """Short names of the 1000 ImageNet classes in index order (``"tench"``, ``"goldfish"``...).

    The short name is the first comma-separated part of the full name; a short name that occurs
    more than once (in this list only "maillot") gets its index appended, ``"maillot (638)"``, so
    that all 1000 are distinct. If the data file is missing or damaged the names are
    ``"ImageNet class <index>"`` and a warning is logged. Read once, then cached; each call returns
    a new list.
    """
    return list(_short_names())
