"""SceneLab, the router: page config, shared session settings and sidebar, then the chosen page."""

from __future__ import annotations

import logging

import streamlit as st

from ui import handover
from ui.catalog import PAGES
from ui.compat import ensure_router
from ui.links import apply_shared_link
from ui.settings import SHARED_KEYS, session_defaults
from ui.sidebar import draw_sidebar

ensure_router()  # a fresh server starts in Streamlit's legacy pages/ mode: leave it first
st.set_page_config(page_title="SceneLab", page_icon=":material/landscape:", layout="wide")

_core_log = logging.getLogger("core")
if not _core_log.handlers:  # once per process: core's warnings (skipped files, corrupt caches) to stderr
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    _core_log.addHandler(_handler)
    _core_log.setLevel(logging.INFO)

if any(k not in st.session_state for k in SHARED_KEYS):
    for key, value in session_defaults().items():
        st.session_state.setdefault(key, value)

pages = [st.Page(p.file, title=p.label, icon=p.icon, url_path=p.key, default=p.key == "study") for p in PAGES]
pg = st.navigation(pages)
takes = {p.label for p in PAGES if p.takes_runs}

# a link being opened, then a run's settings handed over by another page, set the shared keys first
apply_shared_link()
handover.apply_loaded_shared(consumer=pg.title in takes)  # pages 0-4 take them
draw_sidebar()
pg.run()
