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
# DEFAULT_IMAGE_SIZE (core.config, every entry point's): also for smaller images, upsampled, because ImageNet
# backbones recognise them better
#: why (measured on the bundled 64 px MIT_split, EfficientNet-Lite0 head, seed 0: 0.889 at 64 px, 0.920 at 128 px)
DEFAULT_SIZE_WHY = (
    "ImageNet backbones were trained on 224 px photos and recognise small images better upsampled "
    "(a head on the bundled 64 px set: 0.889 at 64 px, 0.920 at 128 px)."
)
SIZE_TOUCHED = "_image_size_chosen"  # the size was chosen (slider, link, opened run), not the default
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
ADMIN_ENV = "SCENELAB_ADMIN"  # set on a shared server: the owner's key
USER = "user_name"
USER_PARAM = "user"  # the name in the URL, so a reload keeps it
ADMIN_OK = "_admin_ok"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def client_address() -> str | None:
    """Where this session's browser connects from: None on this machine (Streamlit hides loopback), else its
    address; behind a proxy, the first ``X-Forwarded-For`` address."""
    forwarded = st.context.headers.get("X-Forwarded-For")
    first = forwarded.split(",")[0].strip() if isinstance(forwarded, str) else ""
    if first and first not in LOOPBACK:
        return first
    ip = st.context.ip_address
    return ip if isinstance(ip, str) and ip not in LOOPBACK else None  # not a string: no client (a test run)


def user_name() -> str:
    """The name this session trains under (empty when not given)."""
    return str(st.session_state.get(USER) or "").strip()[:40]


def is_admin() -> bool:
    """True for the app's owner (server paths, typed dataset folders, the reset).

    With ``SCENELAB_ADMIN`` set: whoever gave its key in the sidebar. Unset: a browser on the machine the app
    runs on (a laptop's user, in every tab), never one from elsewhere: students of a class server started
    without a key see no server paths and cannot reset it."""
    key = os.environ.get(ADMIN_ENV, "")
    if key:
        return bool(st.session_state.get(ADMIN_OK))
    return client_address() is None


def user_section() -> None:
    """The session's name, kept in the URL (``?user=``) so that a reload or a copied link keeps it."""
    from ui.panel import bind

    if USER not in st.session_state:
        st.session_state[USER] = str(st.query_params.get(USER_PARAM) or "").strip()[:40]
    bind(
        USER,
        st.text_input,
        "Your name",
        max_chars=40,
        placeholder="optional",
        help="Stored with the runs you train, so the Runs page can show yours (useful when a class shares one app).",
    )
    name = user_name()
    if name and st.query_params.get(USER_PARAM) != name:
        st.query_params[USER_PARAM] = name
    elif not name and USER_PARAM in st.query_params:
        del st.query_params[USER_PARAM]


def admin_section() -> None:
    """On a shared server: the owner's key (server paths, reset); nothing for the owner or on a laptop."""
    key = os.environ.get(ADMIN_ENV, "")
    if is_admin():
        return
    if not key:
        st.caption("The owner's tools (reset, server paths) are for a browser on the machine running the app.")
        return
    with st.expander("Owner"):
        given = st.text_input("Owner key", type="password", key="_admin_key")
        if given and given == key:
            st.session_state[ADMIN_OK] = True
            st.rerun()
        elif given:
            st.caption("That is not the owner key.")
