"""The sidebar every page shows: the presentation switch, the model and where it runs, the hub's
reachability, the shared job queue (refreshed on its own while busy) and whether this browser's
session outlives a reload. Beside it, the glossary every page opens from the header bar.

Presentation mode is on for a session whose link says `presentation=1` or whose toggle is on; the
two always agree, so a link copied from the address bar opens the same mode. In it every page
opens with the sidebar folded (its expand control at the top left keeps the navigation one click
away) and with the large, unbroken type of pages/_charts.PRESENTATION_CSS."""

from __future__ import annotations

import json

import streamlit as st

from pages._charts import presentation_style
from pages._errors import guarded
from pages._job_progress import queue_position_text
from pages._model import current_model, device_label
from pages._state import PRESENTATION_PARAM, remember_browser, session, session_is_kept
from pages._text import plain
from spap_core.system.hub import hub_unreachable_reason
from spap_service.jobs import JobStatus, shared_queue
from spap_service.lesson import GLOSSARY
from spap_service.sessions import browser_sessions

QUEUE_REFRESH_S = 2.0
PRESENTATION_TOGGLE_KEY = "presentation_toggle"
GLOSSARY_KEY = "glossary"
# The glossary's button sits in Streamlit's header bar (fixed, left of its menu), so it costs a page
# none of its first screen.
GLOSSARY_CSS = """<style>
  .st-key-glossary { position: fixed; top: 0.55rem; right: 3.5rem; width: auto !important; z-index: 999991; }
</style>"""
FOLDED_FOR_KEY = "sidebar_folded_for_page"  # the page this page load last folded the sidebar on
# Folds an open sidebar, once the app has drawn it. Streamlit keeps a browser's own choice to open or
# fold the sidebar, and that choice outranks set_page_config's initial state, so a page opened in
# presentation mode presses the sidebar's own fold button. The page's name makes each page's copy
# a new element, which the browser runs again.
FOLD_SIDEBAR_SCRIPT = """<script>/* fold the sidebar as %s opens */
(() => {
  const giveUp = Date.now() + 5000;
  const fold = () => {
    const sidebar = document.querySelector('[data-testid="stSidebar"]');
    const button = document.querySelector('[data-testid="stSidebarCollapseButton"] button');
    if (sidebar && sidebar.getAttribute('data-collapsed') === 'true') return;
    if (button) { button.click(); return; }
    if (Date.now() < giveUp) setTimeout(fold, 100);
  };
  fold();
})();
</script>"""


@guarded
def _queue_summary() -> None:
    """Every active job of the shared queue: whose it is, and how far it has come or how long it waits."""
    queue = shared_queue()
    active = queue.active()
    if not active:
        st.caption("Job queue: idle")
    for job in active:
        whose = "yours" if job.owner == session().session_id else "another session"
        if job.status is JobStatus.RUNNING:  # the page's own panel shows its layer and ρ iteration
            st.caption(f":material/play_arrow: {job.label} ({whose}) · running, {job.elapsed_s:.0f} s")
        else:
            st.caption(f":material/hourglass_top: {job.label} ({whose}) · {queue_position_text(job).lower()}")


def presentation_from_link() -> bool:
    """Whether presentation mode is on, with the session and the link made to agree: a link that
    names the mode decides it; a link without it (the navigation drops a page's parameters) takes
    the session's, and gets `presentation=1` back when the mode is on."""
    state = session()
    asked = st.query_params.get(PRESENTATION_PARAM)
    if asked is not None:
        state.presentation = asked == "1"
    show_in_link(state.presentation)
    return state.presentation


def show_in_link(presentation: bool) -> None:
    """`presentation=1` in the page's link while the mode is on, no such parameter while it is off."""
    if presentation:
        st.query_params[PRESENTATION_PARAM] = "1"
    elif PRESENTATION_PARAM in st.query_params:
        del st.query_params[PRESENTATION_PARAM]


def _presentation_toggled() -> None:
    """The toggle's new position becomes the session's mode and the link's."""
    session().presentation = st.session_state[PRESENTATION_TOGGLE_KEY]
    show_in_link(session().presentation)


def fold_sidebar_on_opening(page_name: str, presentation: bool) -> None:
    """In presentation mode, a page opens with the sidebar folded: the first time this page load
    shows `page_name` in the mode (a new page, a reload, the mode just turned on), and not on the
    reruns after that, so a sidebar the lecturer opened stays open while they use it."""
    st.set_page_config(initial_sidebar_state="collapsed" if presentation else "auto")
    folded_for = page_name if presentation else None
    if st.session_state.get(FOLDED_FOR_KEY) == folded_for:
        return
    st.session_state[FOLDED_FOR_KEY] = folded_for
    if presentation:
        st.html(FOLD_SIDEBAR_SCRIPT % json.dumps(page_name), unsafe_allow_javascript=True)


def render_sidebar(page_name: str) -> None:
    """Model, device and queue state on every page, and the presentation switch (`page_name`: the
    page being opened, whose sidebar presentation mode folds)."""
    presentation = presentation_from_link()
    with st.sidebar:
        st.session_state[PRESENTATION_TOGGLE_KEY] = presentation
        st.toggle("Presentation mode", key=PRESENTATION_TOGGLE_KEY, on_change=_presentation_toggled,
                  help="Large type and the sidebar folded on every page, for a projector; a link with "
                       "presentation=1 opens it.")
        fold_sidebar_on_opening(page_name, presentation)
        st.markdown("#### Model")
        loaded = current_model()
        if loaded is not None:
            st.caption(plain(loaded.description))
            st.caption(f"Runs on {device_label(loaded.device)}")
        reason = hub_unreachable_reason()
        if reason is not None:
            st.caption("Hugging Face hub: unreachable, so only local models and texts work.")
        st.markdown("#### Jobs")
        refresh = QUEUE_REFRESH_S if shared_queue().active() else None
        st.fragment(_queue_summary, run_every=refresh)()
        remember_browser()
        if not session_is_kept():
            st.caption(f"This server keeps {browser_sessions().max_sessions} browser sessions already, so yours lasts "
                       "until this page is reloaded; the runs you finish are still saved.")
    presentation_style()


def glossary_button() -> None:
    """The glossary of the app's words and symbols (spap_service.lesson.GLOSSARY), one click from
    every page: a small button in the header bar that opens the terms over the page."""
    st.html(GLOSSARY_CSS)
    with st.container(key=GLOSSARY_KEY), st.popover("Glossary", icon=":material/menu_book:"):
        for term, meaning in GLOSSARY.items():
            st.markdown(f"**{term}**: {meaning}")
