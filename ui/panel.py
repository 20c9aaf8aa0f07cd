"""Widgets for run settings, drawn from ``RunConfig``'s field metadata (``core.fields.Setting``).

A page names the settings it shows (``"epochs"``, ``"augment.zoom"``); the label, help, range, step and
format come from the setting, the default is RunConfig's unless the page overrides it.

Each setting lives in the session under a *value key* (``<page>_<field>``) that no widget owns; its widget
has a key of its own, refilled from the value before it is drawn and copied back when the user changes
it. So a value survives page switches and a run cut short before its widget was drawn (a Train pressed
while the page was still loading), which Streamlit's own widget state does not guarantee. Inside a form
(``in_form=True``), where Streamlit allows no change callbacks, the widget's own state is the truth while
it exists and is copied to the value key on every run.
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
    """The session value key of a page's setting (``augmentation_zoom`` for ``augment.zoom``)."""
    return f"{page}_{field.split('.')[-1]}"


def widget_key(value_key: str) -> str:
    return f"_w_{value_key}"


def field_keys(page: str, fields: Iterable[str]) -> dict[str, str]:
    """``{field: session key}`` (what the hand-over of a loaded run or a link fills in)."""
    return {f: key(page, f) for f in fields}


def defaults(page: str, fields: Iterable[str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{session key: default}``: RunConfig's defaults, then the page's ``overrides`` (by field)."""
    overrides = overrides or {}
    return {key(page, f): overrides.get(f, setting_of(f)[1]) for f in fields}


def bind(value_key: str, draw: Callable[..., Any], *args: Any, to_value: Callable[[Any], Any] | None = None,
         from_value: Callable[[Any], Any] | None = None, in_form: bool = False, **kwargs: Any) -> Any:
    """Draw a widget for the session value ``value_key``; returns the value (see the module docstring).

    ``from_value``/``to_value`` convert between what is stored and what the widget shows."""
    ss = st.session_state
    wkey = widget_key(value_key)
    if in_form:
        if wkey not in ss:
            shown = ss.get(value_key)
            ss[wkey] = from_value(shown) if from_value is not None else shown
        value = draw(*args, key=wkey, **kwargs)
        ss[value_key] = to_value(value) if to_value is not None else value
        return ss[value_key]
    shown = ss.get(value_key)
    ss[wkey] = from_value(shown) if from_value is not None else shown

    def copy_back() -> None:
        value = ss[wkey]
        ss[value_key] = to_value(value) if to_value is not None else value

    draw(*args, key=wkey, on_change=copy_back, **kwargs)
    return ss.get(value_key)


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
    for numbers (the defaults are the first of each). ``kwargs`` go to Streamlit (``min_value``,
    ``disabled``, ``from_value``/``to_value``/``in_form`` for :func:`bind`...). The setting's technical name is in the
    tooltip, after its help."""
    info, _ = setting_of(field)
    where = where if where is not None else st
    convert = {k: kwargs.pop(k) for k in ("from_value", "to_value", "in_form") if k in kwargs}
    help_text = kwargs.pop("help", info.help)
    if help_text:
        help_text = f"{help_text} (`{field}`)"
    text = label or info.label + (f" ({info.unit})" if info.unit else "")
    value_key = key(page, field)
    if info.kind == "bool":
        draw = where.checkbox if style == "checkbox" else where.toggle
        return bind(value_key, draw, text, help=help_text, **convert, **kwargs)
    if info.kind == "choice":
        options = kwargs.pop("options", list(info.choices))
        draw = where.selectbox if style == "select" else where.radio
        return bind(value_key, draw, text, options, format_func=format_func or str, help=help_text, **convert, **kwargs)
    lo, hi = _number_bounds(info)
    bounds = {"min_value": kwargs.pop("min_value", lo), "max_value": kwargs.pop("max_value", hi)}
    step = kwargs.pop("step", info.step if info.step is not None else (1 if info.kind == "int" else 0.01))
    step = int(step) if info.kind == "int" else float(step)
    if style == "slider":
        return bind(value_key, where.slider, text, step=step, help=help_text, **bounds, **convert, **kwargs)
    if info.log and "format" not in kwargs:
        kwargs["format"] = "%.1e"
    return bind(value_key, where.number_input, text, step=step, help=help_text, **bounds, **convert, **kwargs)


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
    """The page's settings as RunConfig values (``augment`` as an :class:`AugmentConfig` when any
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
