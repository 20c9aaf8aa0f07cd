"""SceneLab, the router: page config, shared session settings and sidebar, then the chosen page."""

from __future__ import annotations

import logging

import streamlit as st

from ui import handover
from ui.compat import ensure_router
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

pages = [
    st.Page("pages/finetune.py", title="0 Fine-tune", icon=":material/tune:", default=True),
    st.Page("pages/truncate.py", title="1 Truncate", icon=":material/content_cut:"),
    st.Page("pages/small_data.py", title="2 Small data", icon=":material/photo_library:"),
    st.Page("pages/augmentation.py", title="3 Augmentation", icon=":material/auto_awesome:"),
    st.Page("pages/regularisation.py", title="4 Regularisation", icon=":material/shield:"),
    st.Page("pages/search.py", title="5 Hyperparameter search", icon=":material/search:"),
    st.Page("pages/activations.py", title="6 Activations", icon=":material/visibility:"),
    st.Page("pages/dataset_map.py", title="Dataset map", icon=":material/scatter_plot:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_view:"),
]
pg = st.navigation(pages)

# a run's settings handed over by another page (handover.load_config) set the shared keys first
handover.apply_loaded_shared(consumer=pg.title in {p.title for p in pages[:5]})  # pages 0-4 take them
draw_sidebar()
pg.run()
