"""The sweep and scan pages' tables: the header and fixed-settings caption every point shares (the
settings the comparison pages keep, changed only by the user's "Take Run SPAP's settings"), asking
for a table (from the shared cache at once, or as a background job), the form that comes back with
the table it made, and the points that have no result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from pages._jobs import still_busy, submit_job
from pages._model import require_model
from pages._requests import comparison_recovery, comparison_request, submitted_request, take_submitted_settings
from pages._state import TableRequest, session
from pages._summaries import evaluation_budget, settings_summary
from pages._text import plain
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.parameters import changed
from spap_service.comparisons import RESULT_TABLES
from spap_service.jobs import ProgressReporter
from spap_service.runs import RunRequest


def comparison_header(title: str, offers_recovery: bool = False) -> tuple[LoadedModel, RunRequest]:
    """Title, model and the run request a sweep or scan starts from: the comparison pages' own copy
    of Run SPAP's settings. When the run last submitted there differs (in its recovery too, on a page
    that `offers_recovery`), the header says in what and offers to take its settings; nothing else
    changes them."""
    st.title(title)
    loaded = require_model()
    submitted, base = submitted_request(), comparison_request()
    differences = request_changes(submitted, base)
    if offers_recovery and submitted.recovery != comparison_recovery():
        differences.append(submitted.recovery.describe())
    if differences:
        note_column, button_column = st.columns([3, 1], vertical_alignment="center")
        note_column.caption("Run SPAP's last submitted run differs from the settings this page keeps fixed: "
                            + ", ".join(differences) + ".")
        if button_column.button("Take Run SPAP's settings", icon=":material/sync:"):
            take_submitted_settings()
            st.rerun()  # the page is drawn again with the settings it now keeps
    return loaded, base


def request_changes(request: RunRequest, reference: RunRequest) -> list[str]:
    """The phrases of `request`'s settings, calibration size and seed that differ from `reference`'s
    (Markdown: a text's name verbatim)."""
    differences = changed(request.settings, reference.settings)
    if (request.data.nsamples, request.data.seqlen) != (reference.data.nsamples, reference.data.seqlen):
        differences.append(f"calibration {request.data.nsamples} × {request.data.seqlen} tokens")
    if request.seed != reference.seed:
        differences.append(f"seed {request.seed}")
    return differences


def fixed_settings_caption(base: RunRequest, varied: set[str], what: str) -> None:
    """What every point of a sweep or scan keeps fixed: the summary without the `varied` items, so
    the caption never claims a value for what the chart varies."""
    st.caption(f"Fixed for every {what}: {settings_summary(base, omit=varied)} (this page's settings, taken from "
               f"Run SPAP). Evaluation: {evaluation_budget(base.data)}.")


def request_table(kind: str, key: str, label: str, context: dict,
                  compute: Callable[[ProgressReporter, Any], pd.DataFrame], estimate_s: float | None = None) -> None:
    """Show the table for `key` from the shared cache at once, or compute it as a background job.
    `context` (shown with the table) is remembered with the key."""
    known = RESULT_TABLES.get(key)
    cached = known is not None and "error" not in known  # a table with failed points is computed again
    if not cached and still_busy(kind):
        return
    session().table_requests[kind] = TableRequest(key, context)
    if not cached:
        submit_job(kind, label, lambda progress, cancel: (key, compute(progress, cancel)), estimate_s)


def restore_form(kind: str) -> None:
    """On a fresh visit of a sweep or scan page (Streamlit forgets a page's widgets when another
    page is shown), put back the choices of the table the page will show, so the form beside the
    chart says what made it."""
    requested = session().table_requests.get(kind)
    for key, value in ({} if requested is None else requested.context.get("form", {})).items():
        if key not in st.session_state:
            st.session_state[key] = value


def form_state(keys: list[str]) -> dict:
    """The current values of the widgets `keys` (what restore_form puts back with the table)."""
    return {key: st.session_state[key] for key in keys if key in st.session_state}


def shown_table_differs(kind: str, key: str) -> bool:
    """Whether the table the page shows was made by other choices than the form's now."""
    requested = session().table_requests.get(kind)
    return requested is not None and requested.key != key


def failed_points_warning(table: pd.DataFrame, point: Callable[[pd.Series], str]) -> None:
    """Say which points of a sweep or scan have no result and why (their worker died, on Ray),
    so a gap in the chart is never silent."""
    if "error" not in table:
        return
    failed = table[table["error"].notna()]
    st.warning(f"{len(failed)} of {len(table)} points have no result: "
               + "; ".join(f"{point(row)}: {plain(row['error'])}" for _, row in failed.iterrows())
               + ". The others are shown; run it again to retry them.", icon=":material/error:")
