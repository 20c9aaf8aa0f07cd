"""Streamlit's private API, in one place (the UI's counterpart of ``core/compat.py``).

``tests/test_compat.py`` checks it against the pinned Streamlit, so an upgrade that moves it fails there.
"""

from __future__ import annotations

import streamlit as st

_ROUTED = "_routed"  # this session has run through app.py's st.navigation


def pages_manager() -> type:
    """``streamlit.runtime.pages_manager.PagesManager``, whose class attribute ``uses_pages_directory``
    says whether the server still runs in the legacy ``pages/`` mode."""
    from streamlit.runtime.pages_manager import PagesManager

    return PagesManager


def ensure_router() -> None:
    """Hand over to app.py when Streamlit runs a script in its legacy ``pages/`` mode.

    A Streamlit server whose app has a ``pages/`` folder starts in the legacy multipage mode and
    leaves it only once the router has called ``st.navigation``. Until then the first visit runs
    app.py inside that legacy navigation (its sidebar widgets then lose their values on the next
    run), and a deep link such as ``/augmentation`` runs the page script alone, without the router's
    sidebar and settings. Leaving the legacy mode and rerunning puts app.py in charge at once; the
    rerun keeps the page the URL asked for. Only a session's first run is rerun, so no widget
    interaction is ever dropped (AppTest re-enters the legacy mode on every run).
    """
    manager = pages_manager()
    if manager.uses_pages_directory:
        manager.uses_pages_directory = False
        if not st.session_state.get(_ROUTED):
            st.session_state[_ROUTED] = True
            st.rerun()
    st.session_state[_ROUTED] = True
