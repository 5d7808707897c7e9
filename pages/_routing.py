"""Every page must run through app.py's router (st.navigation, the shared sidebar, the error guard).

Streamlit quirk: a process whose first visitors open a page URL (say /run_spap) before anyone opened
"/" runs that page file on its own as a legacy pages/ page, and every session that arrived in that
window stays in that mode. app.py marks the page runs it makes; a page run without the mark leaves
the legacy mode and reruns once, which sends it through app.py, whose st.navigation then opens the
requested page. Kept free of heavy imports: it runs first on every page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

_ROUTER_SEEN = "_router_seen"
_state = threading.local()  # a script run executes on one thread, app.py and the page alike


@contextmanager
def routed_page_run() -> Iterator[None]:
    """Wrap app.py's page.run(): the page sees it was reached through the router."""
    _state.routed = True
    st.session_state[_ROUTER_SEEN] = True
    try:
        yield
    finally:
        _state.routed = False


def ensure_routed() -> None:
    """First line of every page: reroute a session whose page runs have never come through app.py.
    Once per session, so it can never loop; a session the router has served is left alone (Streamlit's
    AppTest runs every page after the first directly, and a rerun there would drop the user's click)."""
    if getattr(_state, "routed", False) or st.session_state.get(_ROUTER_SEEN):
        return
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    st.session_state[_ROUTER_SEEN] = True
    st.rerun()
