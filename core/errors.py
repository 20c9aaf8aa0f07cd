"""Errors a user can act on: each message is one sentence saying what was found,
what was expected and what to do."""

from __future__ import annotations

import errno


class SceneLabError(Exception):
    """Base class for every error SceneLab reports to a user as one sentence."""


class DatasetError(SceneLabError):
    """The dataset folder or its images are not usable."""


class DataRootError(DatasetError):
    """A dataset path points outside the folders this installation allows (``SCENELAB_DATA_ROOTS``)."""


class WeightsError(SceneLabError):
    """Pretrained weights were asked for and cannot be had."""


class ConfigError(SceneLabError):
    """A run setting is out of range or unknown."""


class StoreError(SceneLabError):
    """The artifact store cannot be read or written."""


class TrainingCancelled(SceneLabError):
    """The user cancelled a run; nothing was saved."""


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_phrase(exc: OSError, *, writing: bool = True) -> str:
    """A short phrase for why a file operation failed ("the disk is full", ...), never a traceback."""
    if exc.errno in _DISK_FULL:
        return "the disk is full (or a size quota was reached)"
    if exc.errno in _NOT_WRITABLE:
        return "it is read-only or not writable" if writing else "permission denied"
    if exc.errno == errno.ELOOP:
        return "its path contains a symbolic link loop"
    return (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")


def printable(text: object) -> str:
    """``text`` for a one-line message: control characters (a newline in a folder name) escaped."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type name when
    the message is empty: what a one-sentence error quotes of an exception it did not raise itself."""
    text = (str(exc).strip().splitlines() or [""])[0][:limit]
    return text or type(exc).__name__
