"""Errors a user can act on: each message is one sentence saying what was found,
what was expected and what to do."""

from __future__ import annotations


class SceneLabError(Exception):
    """Base class for every error SceneLab reports to a user as one sentence."""


class DatasetError(SceneLabError):
    """The dataset folder or its images are not usable."""


class WeightsError(SceneLabError):
    """Pretrained weights were asked for and cannot be had."""


class ConfigError(SceneLabError):
    """A run setting is out of range or unknown."""


class StoreError(SceneLabError):
    """The artifact store cannot be read or written."""
