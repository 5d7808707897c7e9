"""This browser session's state, typed. Every key the pages keep between script runs is a property
here, so no page spells a session-state key, and a finished job's result reaches the pages one way:
`collect_finished_jobs` hands each result to its kind's place (the latest run, the latest latency
comparison, the shared table cache) exactly once, whichever page is open when the job ends.

The values are kept on the server by the browser's id (a cookie the server issues and signs,
spap_service.sessions), so a reload of the page reattaches to them; st.session_state holds a copy
for the current page load (where AppTest reads them). Without cookies (AppTest, a browser that
refuses them) the id lives as long as the page load.

Served by `streamlit run serve.py`, the cookie comes with the page itself, HttpOnly and
SameSite=Lax. Served as `streamlit run app.py`, which has no way to set a header, `remember_browser`
sets it from the page's script: SameSite=Lax, but readable by scripts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import streamlit as st

from spap_service.comparisons import RESULT_TABLES, LatencyComparison
from spap_service.data import DataSpec
from spap_service.jobs import Job, JobStatus
from spap_service.runs import RunOutcome, RunRequest
from spap_service.sessions import (
    SESSION_COOKIE,
    browser_sessions,
    is_session_id,
    new_session_id,
    owner_tag,
    session_cookie,
)

ID_KEY = "browser_session_id"
COOKIE_SET_KEY = "browser_session_cookie_set"
PAGE_LOAD_VALUES_KEY = "values_of_this_page_load"
# The link parameter of presentation mode: ?presentation=1 opens any page in it, so a shared link keeps it.
PRESENTATION_PARAM = "presentation"


T = TypeVar("T")


@dataclass(frozen=True)
class ModelChoice:
    """Which model this session prunes, where and in what precision."""

    source: str
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class TableRequest:
    """The sweep or scan table a page last asked for, and what to show with it."""

    key: str
    context: dict = field(default_factory=dict)


def browser_session_id() -> str:
    """This browser's id: the session cookie's when the browser sent one, else a new one that
    `remember_browser` asks the browser to keep."""
    cookie = st.context.cookies.get(SESSION_COOKIE)
    if is_session_id(cookie):
        st.session_state[ID_KEY] = cookie
    elif not is_session_id(st.session_state.get(ID_KEY)):
        st.session_state[ID_KEY] = new_session_id()
    return st.session_state[ID_KEY]


def remember_browser() -> None:
    """Ask the browser, once per page load, to keep its id in a cookie (path /, SameSite=Lax), so
    the next load of any page, a reload included, comes back to the same kept state."""
    session_id = browser_session_id()
    if st.context.cookies.get(SESSION_COOKIE) == session_id or st.session_state.get(COOKIE_SET_KEY):
        return
    st.session_state[COOKIE_SET_KEY] = True
    cookie = session_cookie(session_id, http_only=False)
    st.html(f"<script>document.cookie = {json.dumps(cookie)};</script>", unsafe_allow_javascript=True)


class Stored(Generic[T]):
    """One kept value as a typed attribute: reading it gives the kept value (made by `factory` on
    first use, else `default`), assigning it keeps a new one. The server's registry of browser
    sessions holds it; st.session_state mirrors it for the page load."""

    def __init__(self, key: str, default: T | None = None, factory: Callable[[], T] | None = None) -> None:
        self.key, self.default, self.factory = key, default, factory

    def __get__(self, instance: Any, owner: type) -> T:
        kept = kept_values()
        if self.key in kept:
            st.session_state[self.key] = kept[self.key]
        elif self.key in st.session_state:  # set on this page load only (a test's direct write)
            kept[self.key] = st.session_state[self.key]
        elif self.factory is not None:
            kept[self.key] = st.session_state[self.key] = self.factory()
        # None stands for "no default" only in a Stored declared to hold None (Stored[X | None])
        return cast(T, kept.get(self.key, self.default))

    def __set__(self, instance: Any, value: T) -> None:
        kept_values()[self.key] = value
        st.session_state[self.key] = value


def kept_values() -> dict:
    """Where this session's values are kept: the server's registry, or, when the registry is full,
    a dict of this page load (the session then works until the page is reloaded)."""
    kept = browser_sessions().state(browser_session_id())
    return kept if kept is not None else st.session_state.setdefault(PAGE_LOAD_VALUES_KEY, {})


def session_is_kept() -> bool:
    """Whether a reload of this browser finds its session again (False while the registry is full)."""
    return PAGE_LOAD_VALUES_KEY not in st.session_state


class SessionState:
    """Typed access to st.session_state: every key the pages keep is one attribute here."""

    model: Stored[ModelChoice | None] = Stored("model_choice")
    jobs: Stored[dict[str, Job]] = Stored("jobs", factory=dict)  # this session's latest job of each kind
    taken_jobs: Stored[set[str]] = Stored("taken_jobs", factory=set)
    data_spec: Stored[DataSpec | None] = Stored("data_spec")
    submitted_run: Stored[RunRequest | None] = Stored("submitted_run")  # last submitted on Run SPAP
    # What sweeps and scans keep fixed: a copy of a run submitted on Run SPAP, taken when the user asks.
    comparison_base: Stored[RunRequest | None] = Stored("comparison_base")
    latest_run: Stored[RunOutcome | None] = Stored("latest_run")
    run_history: Stored[list[dict]] = Stored("run_history", factory=list)
    latency: Stored[LatencyComparison | None] = Stored("latency")
    generation: Stored[dict | None] = Stored("dense_vs_pruned")  # the last text pair and what made it
    table_requests: Stored[dict[str, TableRequest]] = Stored("table_requests", factory=dict)
    opened_shared_run: Stored[str | None] = Stored("opened_shared_run")
    # A run opened from a link or the saved runs: its settings, for the Run form to show next.
    pending_form: Stored[dict | None] = Stored("pending_form")
    presentation: Stored[bool] = Stored("presentation_mode", default=False)  # a projector: large type, sidebar folded

    @property
    def session_id(self) -> str:
        """The owner of this browser's jobs."""
        return browser_session_id()

    @property
    def owner(self) -> str:
        """The owner of this browser's saved runs, as their records name it (never the id itself)."""
        return owner_tag(browser_session_id())

    def adopt_run(self, outcome: RunOutcome, history_row: dict) -> None:
        """Make `outcome` this session's latest run (a finished job or a saved run it opened)."""
        self.latest_run = outcome
        self.run_history.append(history_row)


def session() -> SessionState:
    return SessionState()


def collect_finished_jobs(on_run: Callable[[RunOutcome], None]) -> None:
    """Hand every finished job's result to its place, once (the job then forgets it, so a pruned
    model lives only in this session's state): a run through `on_run`, a latency comparison to
    the session, a sweep or scan table (key, table) to the shared table cache."""
    state = session()
    for kind, job in state.jobs.items():
        if job.status is not JobStatus.DONE or job.id in state.taken_jobs:
            continue
        state.taken_jobs.add(job.id)
        result, job.result = job.result, None
        if kind == "run":
            on_run(result)
        elif kind == "latency":
            state.latency = result
        else:
            key, table = result
            RESULT_TABLES.put(key, table)
