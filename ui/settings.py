"""The session's shared settings (sidebar): dataset, backbone, weights, image size, test-time flip, seed.

Set once per session in app.py with ``setdefault``; pages read them through :func:`settings` and build
their run configs on top of them with :func:`base_config`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from core.config import SHARED_SETTINGS, RunConfig, entry_defaults
from core.data.bundled import default_dataset
from core.errors import SceneLabError
from core.paths import default_artifacts

CONFIG_SHARED_KEYS = SHARED_SETTINGS  # the run settings declared shared (core.config), in their order
SHARED_KEYS = ("data_root", *CONFIG_SHARED_KEYS, "artifacts")
WEIGHT_CHOICES = ("imagenet", "none")
IMAGE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
SIZE_TOUCHED = "_image_size_chosen"  # the size was chosen (slider, link, opened run): datasets no longer set it
BUNDLED_ERROR = "_bundled_error"  # why the bundled dataset could not be unpacked (shown on the first screen)


def _default_data(artifacts: str) -> str:
    """``SCENELAB_DATA``, else the bundled 64 px copy (unpacked once); "" with the reason kept when it fails."""
    try:
        return str(default_dataset(artifacts))
    except SceneLabError as exc:
        st.session_state[BUNDLED_ERROR] = str(exc)
        return ""


def _artifacts() -> str:
    return os.environ.get("SCENELAB_ARTIFACTS") or str(default_artifacts())


DEFAULTS: dict[str, Callable[[], Any]] = {  # each computed only when the session lacks it
    "data_root": lambda: _default_data(str(st.session_state.get("artifacts") or _artifacts())),
    **{name: (lambda name=name: entry_defaults()[name]) for name in CONFIG_SHARED_KEYS},  # as every entry point
    "artifacts": _artifacts,
}


def session_defaults() -> dict[str, Any]:
    return {k: DEFAULTS[k]() for k in SHARED_KEYS}


def settings() -> dict[str, Any]:
    """The shared settings of this session (defaults for any key not set yet)."""
    ss = st.session_state
    out = {k: ss[k] if k in ss else DEFAULTS[k]() for k in SHARED_KEYS}
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


# -- who is using the app ----------------------------------------------------------------------------
ADMIN_ENV = "SCENELAB_ADMIN"  # set on a shared server: the owner's key; unset on a laptop (its user owns it)
USER = "user_name"
ADMIN_OK = "_admin_ok"


def user_name() -> str:
    """The name this session trains under (empty when not given)."""
    return str(st.session_state.get(USER) or "").strip()[:40]


def is_admin() -> bool:
    """True for the app's owner: always on a laptop (``SCENELAB_ADMIN`` unset), else after giving its key."""
    key = os.environ.get(ADMIN_ENV, "")
    return not key or bool(st.session_state.get(ADMIN_OK))


def user_section() -> None:
    from ui.panel import bind

    if USER not in st.session_state:
        st.session_state[USER] = ""
    bind(USER, st.text_input, "Your name", max_chars=40, placeholder="optional",
         help="Stored with the runs you train, so the Runs page can show yours (useful when a class shares one app).")


def admin_section() -> None:
    """On a shared server: the owner's key (server paths, reset); nothing on a laptop."""
    key = os.environ.get(ADMIN_ENV, "")
    if not key or st.session_state.get(ADMIN_OK):
        return
    with st.expander("Owner"):
        given = st.text_input("Owner key", type="password", key="_admin_key")
        if given and given == key:
            st.session_state[ADMIN_OK] = True
            st.rerun()
        elif given:
            st.caption("That is not the owner key.")
