"""This browser session's state, typed. Every key the pages keep between script runs is a property
here, so no page spells a session-state key, and a finished job's result reaches the pages one way:
`collect_finished_jobs` hands each result to its kind's place (the latest run, the latest latency
comparison, the shared table cache) exactly once, whichever page is open when the job ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import streamlit as st

from spap_core.methods.registry import PruneSettings
from spap_service.comparisons import RESULT_TABLES, LatencyComparison
from spap_service.data import DataSpec
from spap_service.jobs import Job, JobStatus
from spap_service.runs import RunOutcome


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


class Stored(Generic[T]):
    """One session-state entry as a typed attribute: reading it gives the stored value (made by
    `factory` on first use, else `default`), assigning it stores a new one."""

    def __init__(self, key: str, default: T | None = None, factory: Callable[[], T] | None = None) -> None:
        self.key, self.default, self.factory = key, default, factory

    def __get__(self, instance: Any, owner: type) -> T:
        if self.factory is not None and self.key not in st.session_state:
            st.session_state[self.key] = self.factory()
        return st.session_state.get(self.key, self.default)

    def __set__(self, instance: Any, value: T) -> None:
        st.session_state[self.key] = value


class SessionState:
    """Typed access to st.session_state: every key the pages keep is one attribute here."""

    session_id: Stored[str] = Stored("session_id", factory=lambda: uuid.uuid4().hex[:12])  # owner of jobs and runs
    model: Stored[ModelChoice | None] = Stored("model_choice")
    jobs: Stored[dict[str, Job]] = Stored("jobs", factory=dict)  # this session's latest job of each kind
    taken_jobs: Stored[set[str]] = Stored("taken_jobs", factory=set)
    data_spec: Stored[DataSpec | None] = Stored("data_spec")
    prune_settings: Stored[PruneSettings | None] = Stored("prune_settings")  # last submitted on Run SPAP
    run_seed: Stored[int] = Stored("run_seed", default=0)
    latest_run: Stored[RunOutcome | None] = Stored("latest_run")
    run_history: Stored[list[dict]] = Stored("run_history", factory=list)
    latency: Stored[LatencyComparison | None] = Stored("latency")
    generation: Stored[dict | None] = Stored("dense_vs_pruned")  # the last text pair and what made it
    table_requests: Stored[dict[str, TableRequest]] = Stored("table_requests", factory=dict)
    opened_shared_run: Stored[str | None] = Stored("opened_shared_run")

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
