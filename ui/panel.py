"""Widgets for run settings, drawn from ``RunConfig``'s field metadata (``core.fields.Setting``).

A page names the settings it shows (``"epochs"``, ``"augment.zoom"``); the label, help, range, step and
format come from the setting, the session key is ``<page>_<field>``, the default is RunConfig's unless
the page overrides it. :func:`values` reads them back as RunConfig values (augmentation nested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import streamlit as st

from core.config import AUGMENT_SETTINGS, RUN_SETTINGS, AugmentConfig, RunConfig
from core.fields import Setting

_RUN_DEFAULTS = RunConfig().to_dict()
_AUG_DEFAULTS = _RUN_DEFAULTS["augment"]


def setting_of(field: str) -> tuple[Setting, Any]:
    """(metadata, RunConfig default) of a field; ``augment.<name>`` for augmentation."""
    if field.startswith("augment."):
        name = field.split(".", 1)[1]
        return AUGMENT_SETTINGS[name], _AUG_DEFAULTS[name]
    return RUN_SETTINGS[field], _RUN_DEFAULTS[field]


def key(page: str, field: str) -> str:
    """The session key of a page's widget for ``field`` (``augmentation_zoom`` for ``augment.zoom``)."""
    return f"{page}_{field.split('.')[-1]}"


def field_keys(page: str, fields: Iterable[str]) -> dict[str, str]:
    """``{field: session key}`` (what the hand-over of a loaded run fills in)."""
    return {f: key(page, f) for f in fields}


def defaults(page: str, fields: Iterable[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{session key: default}``: RunConfig's defaults, then the page's ``overrides`` (by field)."""
    overrides = overrides or {}
    return {key(page, f): overrides.get(f, setting_of(f)[1]) for f in fields}


def _number_bounds(info: Setting) -> tuple[Any, Any]:
    lo = info.ui_min if info.ui_min is not None else info.low
    hi = info.ui_max if info.ui_max is not None else info.high
    if info.kind == "int":
        lo = None if lo is None else int(lo)
        hi = None if hi is None else int(hi)
    return lo, hi


def widget(
    page: str,
    field: str,
    where: Any = None,
    *,
    label: str | None = None,
    style: str | None = None,
    format_func: Callable[[Any], str] | None = None,
    **kwargs: Any,
) -> Any:
    """Draw the widget for ``field`` (in ``where``, default the page) and return its value.

    ``style``: ``toggle``/``checkbox`` for yes/no, ``radio``/``select`` for choices, ``number``/``slider``
    for numbers (the defaults are the first of each). ``kwargs`` go to Streamlit (e.g. ``min_value``)."""
    info, _ = setting_of(field)
    where = where if where is not None else st
    common: dict[str, Any] = {"key": key(page, field), "help": kwargs.pop("help", info.help), "persist_state": "session"}
    text = label or info.label + (f" ({info.unit})" if info.unit else "")
    if info.kind == "bool":
        draw = where.checkbox if style == "checkbox" else where.toggle
        return draw(text, **common, **kwargs)
    if info.kind == "choice":
        options = kwargs.pop("options", list(info.choices))
        if style == "select":
            return where.selectbox(text, options, format_func=format_func or str, **common, **kwargs)
        return where.radio(text, options, format_func=format_func or str, **common, **kwargs)
    lo, hi = _number_bounds(info)
    bounds = {"min_value": kwargs.pop("min_value", lo), "max_value": kwargs.pop("max_value", hi)}
    step = kwargs.pop("step", info.step if info.step is not None else (1 if info.kind == "int" else 0.01))
    if info.kind == "int":
        step = int(step)
    if style == "slider":
        return where.slider(text, step=step, **bounds, **common, **kwargs)
    if info.log and "format" not in kwargs:
        kwargs["format"] = "%.1e"
    if info.optional and "placeholder" not in kwargs:
        kwargs["placeholder"] = info.none_label
    return where.number_input(text, step=step, **bounds, **common, **kwargs)


def _typed(info: Setting, value: Any) -> Any:
    if value is None:
        return None
    if info.kind == "int":
        return int(value)
    if info.kind == "float":
        return float(value)
    if info.kind == "bool":
        return bool(value)
    return value


def values(page: str, fields: Iterable[str], *, rounding: int | None = None) -> dict[str, Any]:
    """The page's widget values as RunConfig settings (``augment`` as an :class:`AugmentConfig` when any
    augmentation field is shown); ``rounding`` rounds floats (slider steps such as 0.05)."""
    out: dict[str, Any] = {}
    aug: dict[str, Any] = {}
    for f in fields:
        info, _ = setting_of(f)
        value = _typed(info, st.session_state.get(key(page, f)))
        if rounding is not None and isinstance(value, float):
            value = round(value, rounding)
        if f.startswith("augment."):
            aug[f.split(".", 1)[1]] = value
        else:
            out[f] = value
    if aug:
        out["augment"] = AugmentConfig(**aug)
    return out
