"""The sidebar every page shows: the presentation switch, the model and where it runs, the hub's
reachability, the shared job queue (refreshed on its own while busy) and whether this browser's
session outlives a reload."""

from __future__ import annotations

import streamlit as st

from pages._charts import presentation_style
from pages._errors import guarded
from pages._job_progress import queue_position_text
from pages._model import current_model, device_label
from pages._state import remember_browser, session, session_is_kept
from pages._text import plain
from spap_core.system.hub import hub_unreachable_reason
from spap_service.jobs import JobStatus, shared_queue
from spap_service.sessions import browser_sessions

QUEUE_REFRESH_S = 2.0


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
            st.caption(f"▶ {job.label} ({whose}) · running, {job.elapsed_s:.0f} s")
        else:
            st.caption(f"⏳ {job.label} ({whose}) · {queue_position_text(job).lower()}")


def render_sidebar() -> None:
    """Model, device and queue state on every page, and the presentation switch."""
    with st.sidebar:
        state = session()
        state.presentation = st.toggle("Presentation mode", value=state.presentation,
                                       help="Larger fonts in text and charts, for a projector; the sidebar folds away "
                                            "with the « at its top.")
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
