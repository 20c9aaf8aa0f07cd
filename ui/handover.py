"""Handing a run's settings from one page to another ("Open in its page", "Load the best trial").

The settings travel in ``st.session_state["loaded_config"]``: app.py applies the shared ones (backbone,
weights, image size, test-time flip, seed) before drawing the sidebar, the page prefills its widgets
with the rest and keeps what it has no widget for as *loaded extras*, so it reproduces the run exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from core.config import RunConfig
from core.errors import SceneLabError
from core.models.backbones import BACKBONES
from ui.catalog import PAGES as CATALOG
from ui.catalog import page_of_run
from ui.format import augment_label
from ui.settings import CONFIG_SHARED_KEYS, SIZE_TOUCHED, WEIGHT_CHOICES, base_config

LOADED = "loaded_config"
_LOADED_SHARED = "_loaded_config_shared_applied"



PAGES = {p.key: p.file for p in CATALOG if p.takes_runs}  # the pages that take a run's settings
OPENED = "_opened_run"  # the run id a page was opened for ("Open in its page")


def load_config(run: Mapping[str, Any], page: str | None = None, run_id: str | None = None) -> None:
    """Hand a run's settings to a page (0-4) and go there; with ``run_id`` the page checks it shows that run."""
    st.session_state[LOADED] = dict(run)
    st.session_state.pop(_LOADED_SHARED, None)
    if run_id:
        st.session_state[OPENED] = run_id
    st.switch_page(page or page_of_run(run).file)


def check_opened(page_run_id: str | None, cfg: RunConfig) -> None:
    """After "Open in its page": say so, once, when the page shows another run than the one opened."""
    opened = st.session_state.pop(OPENED, None)
    if opened and page_run_id and opened != page_run_id:
        st.warning(f"The run opened ({opened}) has a setting this page does not offer, so it shows the nearest run "
                   f"({page_run_id}); the opened run's figures are on the Runs page.")


def apply_loaded_shared(consumer: bool = True) -> None:
    """Called by app.py before the sidebar: a loaded config sets backbone/weights/image size/seed.

    When the page about to run does not take loaded configs the hand-off is dropped."""
    ss = st.session_state
    loaded = ss.get(LOADED)
    if not isinstance(loaded, dict):
        ss.pop(LOADED, None)
        return
    if not consumer:
        ss.pop(LOADED, None)
        ss.pop(_LOADED_SHARED, None)
        return
    if ss.get(_LOADED_SHARED):
        return
    if loaded.get("backbone") in BACKBONES:
        ss["backbone"] = loaded["backbone"]
    weights = loaded.get("weights")
    if weights in WEIGHT_CHOICES or (isinstance(weights, str) and Path(weights).is_file()):
        ss["weights"] = weights  # a weights file: the sidebar shows it as a third choice
    if isinstance(loaded.get("image_size"), int):
        ss["image_size"] = loaded["image_size"]
        ss[SIZE_TOUCHED] = True  # the run's size, not the dataset's
    if isinstance(loaded.get("seed"), int):
        ss["seed"] = loaded["seed"]
    if isinstance(loaded.get("tta"), bool):
        ss["tta"] = loaded["tta"]
    ss[_LOADED_SHARED] = True


def _get_path(data: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def apply_loaded_config(page_prefix: str, fields: Mapping[str, str]) -> dict[str, Any] | None:
    """Prefill this page's widgets from ``st.session_state["loaded_config"]`` and consume it.

    ``fields`` maps a RunConfig field (``"augment.zoom"`` for augmentation) to the page's widget key.
    Settings the page has no widget for are kept as the page's *loaded extras* (see
    :func:`loaded_extras`) so the page reproduces the loaded run exactly. Returns the loaded dict."""
    ss = st.session_state
    loaded = ss.get(LOADED)
    if not isinstance(loaded, dict):
        return None
    apply_loaded_shared()  # when the page runs alone (tests); app.py has done it already otherwise
    for path, key in fields.items():
        found, value = _get_path(loaded, path)
        if found:
            ss[key] = value
    controlled = {p.split(".")[0] for p in fields} | set(CONFIG_SHARED_KEYS)
    defaults = RunConfig().to_dict()
    extras = {}
    for k, v in loaded.items():
        if k in defaults and k not in controlled and v != defaults[k]:
            extras[k] = v
    ss[f"{page_prefix}_extra"] = extras
    ss.pop(LOADED, None)
    ss.pop(_LOADED_SHARED, None)
    st.toast("Loaded the run's settings into this page.")
    return loaded


def setup_widgets(page_prefix: str, fields: Mapping[str, str], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """A page's widget keys: a loaded config first, then ``defaults`` for the rest, with the defaults' types.

    Returns the loaded config, if one was handed over."""
    loaded = apply_loaded_config(page_prefix, fields)
    ss = st.session_state
    for key, value in defaults.items():
        ss.setdefault(key, value)
        if value is not None and ss[key] is not None and type(ss[key]) is not type(value):
            try:
                ss[key] = type(value)(ss[key])
            except (TypeError, ValueError):
                ss[key] = value
    return loaded


def loaded_extras(page_prefix: str) -> dict[str, Any]:
    return dict(st.session_state.get(f"{page_prefix}_extra") or {})


def show_loaded_extras(page_prefix: str) -> None:
    """A note about settings kept from a loaded run that this page has no control for."""
    extras = loaded_extras(page_prefix)
    if not extras:
        return
    text = ", ".join(f"{k}={augment_label(v) if k == 'augment' else v}" for k, v in extras.items())
    cols = st.columns([5, 1])
    cols[0].info(f"Also kept from the loaded run: {text}.")
    if cols[1].button("Forget these", key=f"{page_prefix}_forget_extra"):
        st.session_state.pop(f"{page_prefix}_extra", None)
        st.rerun()


def page_config(page_prefix: str, defaults: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig | None:
    """base_config over the page's defaults, then loaded extras, then the page's widget values.

    None (after one sentence) when the settings are out of range."""
    try:
        return base_config(**{**defaults, **loaded_extras(page_prefix), **values}).validate()
    except SceneLabError as exc:
        st.error(str(exc))
        return None
