"""The session's shared settings (sidebar): dataset, backbone, weights, image size, test-time flip, seed.

Set once per session in app.py with ``setdefault``; pages read them through :func:`settings` and build
their run configs on top of them with :func:`base_config`.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from core.backbones import default_backbone
from core.config import RunConfig
from core.paths import default_artifacts

SHARED_KEYS = ("data_root", "backbone", "weights", "image_size", "tta", "seed", "artifacts")
CONFIG_SHARED_KEYS = ("backbone", "weights", "image_size", "tta", "seed")
WEIGHT_CHOICES = ("imagenet", "none")
IMAGE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256)


def session_defaults() -> dict[str, Any]:
    return {
        "data_root": os.environ.get("SCENELAB_DATA") or "data/",
        "backbone": default_backbone(),
        "weights": "imagenet",
        "image_size": 128,
        "tta": False,
        "seed": 0,
        "artifacts": os.environ.get("SCENELAB_ARTIFACTS") or str(default_artifacts()),
    }


def settings() -> dict[str, Any]:
    """The shared settings of this session (defaults for any key not set yet)."""
    ss = st.session_state
    missing = [k for k in SHARED_KEYS if k not in ss]
    defaults = session_defaults() if missing else {}
    out = {k: ss[k] if k in ss else defaults[k] for k in SHARED_KEYS}
    out["data_root"] = str(out["data_root"]).strip()
    out["image_size"] = int(out["image_size"])
    out["seed"] = int(out["seed"])
    out["tta"] = bool(out["tta"])
    return out


def base_config(**overrides: Any) -> RunConfig:
    """A RunConfig with the sidebar's backbone, weights, image size, test-time flip and seed, then ``overrides``."""
    s = settings()
    values: dict[str, Any] = {k: s[k] for k in CONFIG_SHARED_KEYS}
    values.update(overrides)
    return RunConfig.from_dict(values)
