"""Links that reproduce a view: a page's settings and the shared ones kept in the URL (``st.query_params``).

Opening such a link in a new browser opens that page with those settings (and its stored run, if there
is one). Each value is checked against its setting's metadata; a bad or foreign one is ignored and the
page says so in one sentence, never an exception. The URL is written back at the end of every run of a
task page, so a link copied at any moment reproduces what is on screen.
"""

from __future__ import annotations

import contextlib
from typing import Any

import streamlit as st

from core.config import AUGMENT_SETTINGS, RUN_SETTINGS
from core.errors import ConfigError
from core.fields import check_value, parse_text
from core.models.backbones import BACKBONES
from ui.panel import key as value_key
from ui.settings import CONFIG_SHARED_KEYS, SIZE_TOUCHED, USER_PARAM, user_name

WRITTEN = "_url_written"  # what this session last wrote to the URL (a change is a link being opened)
IGNORED = "_url_ignored"
SHARED_PARAMS = {RUN_SETTINGS[name].link or name: name for name in CONFIG_SHARED_KEYS}  # link parameter -> setting


def _parse(name: str, raw: str) -> Any:
    """A URL string as the setting's value; ConfigError with one sentence when it is not one."""
    info = RUN_SETTINGS.get(name) or AUGMENT_SETTINGS[name]
    value = parse_text(name, info, raw)  # the command line's parser: a value means the same in both
    check_value(name, info, value)
    return value


def _field_of(param: str) -> str | None:
    if param in RUN_SETTINGS and param not in CONFIG_SHARED_KEYS:
        return param
    if param in AUGMENT_SETTINGS:
        return f"augment.{param}"
    return None


def _url() -> dict[str, str]:
    return {k: st.query_params.get(k) for k in st.query_params}


def _opened() -> dict[str, str] | None:
    """The URL's parameters when a link was opened (they differ from what this session last wrote)."""
    params = _url()
    return params if params and params != st.session_state.get(WRITTEN) else None


def _apply_shared(param: str, raw: str) -> None:
    ss = st.session_state
    name = SHARED_PARAMS[param]
    if name == "backbone":
        if raw not in BACKBONES:
            raise ConfigError(f"unknown backbone; expected {' or '.join(sorted(BACKBONES))}")
        ss[name] = raw
    elif name == "weights":
        if raw not in ("imagenet", "none"):
            raise ConfigError("a link can only ask for imagenet or none")
        ss[name] = raw
    else:
        ss[name] = _parse(name, raw)
        if name == "image_size":
            ss[SIZE_TOUCHED] = True  # the link's size, not the dataset's


def apply_shared_link() -> None:
    """Before the sidebar is drawn (app.py): the shared settings of a link being opened."""
    params = _opened()
    for param, raw in (params or {}).items():
        if param in SHARED_PARAMS:
            with contextlib.suppress(ConfigError):  # the page says which were ignored and why (apply_page_link)
                _apply_shared(param, raw)


def apply_page_link(page: str, fields: tuple[str, ...]) -> None:
    """On a task page, before its widgets: its settings from a link being opened; what could not be used
    is remembered for :func:`link_notice` (a bad value, or a setting this page does not have)."""
    params = _opened()
    if params is None:
        return
    ignored: list[str] = []
    for param, raw in params.items():
        try:
            if param in SHARED_PARAMS:
                _apply_shared(param, raw)  # again, to learn whether it was usable
            elif param not in ("data", USER_PARAM):  # the user's name: ui.settings.user_section
                field = _field_of(param)
                if field is None or field not in fields:
                    raise ConfigError("this page has no such setting")
                st.session_state[value_key(page, field)] = _parse(field.split(".")[-1], raw)
        except ConfigError as exc:
            ignored.append(f"{param}={raw} ({str(exc).rstrip('.')})")
    st.session_state[IGNORED] = (params, ignored)
    st.session_state[WRITTEN] = params


def _text(value: Any) -> str:
    if value is None:
        return "none"
    return str(int(value)) if isinstance(value, bool) else str(value)


def write_link(page: str, fields: tuple[str, ...], defaults: dict[str, Any]) -> None:
    """Put the shared settings, and the page's settings that differ from its ``defaults`` (by session key),
    into the URL."""
    ss = st.session_state
    params = {param: _text(ss[name]) for param, name in SHARED_PARAMS.items() if ss.get(name) is not None}
    if user_name():
        params[USER_PARAM] = user_name()
    for field in fields:
        k = value_key(page, field)
        if k in ss and ss[k] != defaults.get(k):
            params[field.split(".")[-1]] = _text(ss[k])
    if params != {k: st.query_params.get(k) for k in st.query_params}:
        st.query_params.from_dict(params)
    ss[WRITTEN] = params


def link_notice() -> None:
    """One sentence for what an opened link held that could not be used, shown while the address bar still holds
    that link (a rerun right after opening it, e.g. the sidebar settling the dataset, must not lose it)."""
    params, ignored = st.session_state.get(IGNORED) or ({}, [])
    if ignored and params == _url():
        st.info(f"The link's {'; '.join(ignored)} could not be used and was ignored; the rest of it is applied.")
