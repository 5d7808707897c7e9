"""Queueing this session's heavy work on the shared job queue: what is refused before anything is
queued (settings, data sizes, the model's config, the server's limits), and one job of each kind at a
time per session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from pages._state import session
from pages._text import plain
from spap_core.errors import SpapInputError
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.experiment import plan_run
from spap_core.pipeline.split import budget_candidates
from spap_service.jobs import Job, ProgressReporter, QueueFull, shared_queue
from spap_service.limits import server_limits
from spap_service.runs import RunRequest, check_results_apart


def latest_job(kind: str) -> Job | None:
    """This session's latest job of `kind`, finished or not."""
    return session().jobs.get(kind)


def refused_before_queueing(loaded: LoadedModel, requests: list[RunRequest]) -> bool:
    """True (after showing why) when a run of these requests would be refused for a reason its
    settings, its data sizes or the model's config decide; shows what the runs will change (a
    family that cannot store a bias) otherwise. Nothing heavy runs here."""
    notes: list[str] = []
    limits = server_limits()
    for request in requests:
        try:
            limits.check(request.data.nsamples, request.data.seqlen, request.data.eval_windows, request.data.eval_len)
            check_results_apart(loaded.source, request.data)
            if request.budget is not None:  # a budget the model's shapes cannot meet
                budget_candidates(loaded, request.budget.share, request.budget.head_sparsity)
            _, adjusted = plan_run(loaded, request.settings, (request.data.seqlen, request.data.eval_len),
                                   calibration_tokens=request.data.nsamples * request.data.seqlen,
                                   batch_size=request.data.batch_size, recovery=request.recovery)
        except SpapInputError as exc:
            st.error(plain(exc), icon=":material/block:")
            return True
        notes += [note for note in adjusted if note not in notes]
    for note in notes:
        st.info(plain(note), icon=":material/info:")
    return False


def submit_job(kind: str, label: str, function: Callable[[ProgressReporter, Any], Any],
               estimate_s: float | None = None) -> None:
    """Queue heavy work for this session; one job of each kind at a time, so a double click
    never queues the same run twice. Reruns the app once queued, so the sidebar (drawn before the
    page) shows the new job too. `estimate_s`, said before it started, is shown next to its time."""
    if still_busy(kind) or _over_session_limit():
        return
    try:
        session().jobs[kind] = shared_queue().submit(function, owner=session().session_id, label=label, kind=kind,
                                                     estimate_s=estimate_s)
    except QueueFull as exc:
        st.warning(str(exc), icon=":material/block:")
        return
    st.rerun()


def _over_session_limit() -> bool:
    """True (after saying so) when this session already has as many jobs queued or running as the
    server allows one session, so one user cannot fill the shared queue."""
    limit = server_limits().max_jobs_per_session
    active = [job for job in session().jobs.values() if not job.status.finished]
    if limit and len(active) >= limit:
        st.warning(f"This server runs at most {limit} job{'s' if limit > 1 else ''} per browser session at a time, and "
                   f"{len(active)} of "
                   "yours are queued or running: wait for one to finish or cancel it.", icon=":material/block:")
        return True
    return False


def still_busy(kind: str) -> bool:
    """True (after saying so) while this session's previous `kind` job is queued or running."""
    previous = latest_job(kind)
    if previous is not None and not previous.status.finished:
        st.warning(f"Your previous job ({previous.label}) is still {previous.status.value}: cancel it first.")
        return True
    return False
