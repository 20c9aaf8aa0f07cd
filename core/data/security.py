"""Which folders a user may point SceneLab at, for a course that runs it on a shared server.

``SCENELAB_DATA_ROOTS`` (folders separated by ``os.pathsep``, e.g. ``/srv/data:/srv/course``)
restricts every dataset path, in the CLI and in the app alike (:func:`core.data.arrays.scan_dataset`
calls :func:`check_data_root`). A path is allowed only if, once ``~`` is expanded, ``..`` removed
and every symbolic link followed, it lies inside one of those folders; so neither ``..`` nor a
link can escape them. Unset or empty, nothing is restricted (a student's own laptop).

Refusals say which folders are allowed but never where a link points, and a path outside them is
refused before anyone looks whether it exists, so the check cannot be used to probe the server.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import DataRootError

DATA_ROOTS_ENV = "SCENELAB_DATA_ROOTS"


def _resolve(path: str | os.PathLike[str]) -> Path:
    """Absolute, ``..``-free, link-free form of ``path`` (it need not exist)."""
    p = Path(path).expanduser()
    try:
        return p.resolve()
    except (RuntimeError, OSError):  # a symbolic link loop: resolve what can be, without following
        return Path(os.path.abspath(p))


def allowed_roots(env: dict[str, str] | None = None) -> list[Path]:
    """The folders of ``SCENELAB_DATA_ROOTS``, resolved; empty when the setting is unset or empty."""
    value = (os.environ if env is None else env).get(DATA_ROOTS_ENV, "")
    return [_resolve(part) for part in value.split(os.pathsep) if part.strip()]


def is_within(path: Path, roots: list[Path]) -> bool:
    """True when the resolved ``path`` is one of ``roots`` or inside one (component-wise, not prefix)."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_data_root(path: str | os.PathLike[str], *, what: str = "dataset folder") -> Path:
    """``path`` resolved, or :class:`DataRootError` if ``SCENELAB_DATA_ROOTS`` does not allow it."""
    resolved = _resolve(path)
    roots = allowed_roots()
    if roots and not is_within(resolved, roots):
        shown = ", ".join(str(r) for r in roots)
        raise DataRootError(
            f"The {what} {os.fspath(path)} is outside the folders this installation allows "
            f"(after resolving '..' and links; SCENELAB_DATA_ROOTS: {shown}); "
            "choose a dataset inside one of them or ask the administrator to add its folder."
        )
    return resolved


def check_inside(path: Path) -> bool:
    """True when ``path`` (resolved) may be read under ``SCENELAB_DATA_ROOTS`` (always True when unset)."""
    roots = allowed_roots()
    return not roots or is_within(_resolve(path), roots)
