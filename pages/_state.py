"""This browser session's state, typed. Every key the pages keep between script runs is a property
here, so no page spells a session-state key, and a finished job's result reaches the pages one way:
`collect_finished_jobs` hands each result to its kind's place (the latest run, the latest latency
comparison, the shared table cache) exactly once, whichever page is open when the job ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from spap_core.methods.registry import PruneSettings
from spap_service.comparisons import RESULT_TABLES, LatencyComparison
from spap_service.data import DataSpec
from spap_service.jobs import Job, JobStatus
from spap_service.runs import RunOutcome


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


class SessionState:
    """Typed access to st.session_state (the keys are the attribute names)."""

    def _get(self, name: str, default: Any = None) -> Any:
        return st.session_state.get(name, default)

    def _setdefault(self, name: str, factory: Callable[[], Any]) -> Any:
        if name not in st.session_state:
            st.session_state[name] = factory()
        return st.session_state[name]

    @property
    def session_id(self) -> str:
        """A random id naming this browser session as the owner of its jobs and saved runs."""
        return self._setdefault("session_id", lambda: uuid.uuid4().hex[:12])

    def model_choice(self, default: ModelChoice) -> ModelChoice:
        return self._setdefault("model_choice", lambda: default)

    def choose_model(self, choice: ModelChoice) -> None:
        st.session_state["model_choice"] = choice

    @property
    def jobs(self) -> dict[str, Job]:
        """This session's latest job of each kind."""
        return self._setdefault("jobs", dict)

    @property
    def taken_jobs(self) -> set[str]:
        return self._setdefault("taken_jobs", set)

    @property
    def data_spec(self) -> DataSpec | None:
        return self._get("data_spec")

    @data_spec.setter
    def data_spec(self, spec: DataSpec) -> None:
        st.session_state["data_spec"] = spec

    @property
    def prune_settings(self) -> PruneSettings | None:
        """The settings last submitted on Run SPAP: the base of sweeps and scans."""
        return self._get("prune_settings")

    @prune_settings.setter
    def prune_settings(self, settings: PruneSettings) -> None:
        st.session_state["prune_settings"] = settings

    @property
    def run_seed(self) -> int:
        return self._get("run_seed", 0)

    @run_seed.setter
    def run_seed(self, seed: int) -> None:
        st.session_state["run_seed"] = seed

    @property
    def latest_run(self) -> RunOutcome | None:
        return self._get("latest_run")

    @property
    def run_history(self) -> list[dict]:
        return self._setdefault("run_history", list)

    def adopt_run(self, outcome: RunOutcome, history_row: dict) -> None:
        """Make `outcome` this session's latest run (a finished job or a saved run it opened)."""
        st.session_state["latest_run"] = outcome
        self.run_history.append(history_row)

    @property
    def latency(self) -> LatencyComparison | None:
        return self._get("latency")

    @latency.setter
    def latency(self, comparison: LatencyComparison) -> None:
        st.session_state["latency"] = comparison

    @property
    def generation(self) -> dict | None:
        """The last dense-vs-pruned text pair, with the prompt and settings it came from."""
        return self._get("dense_vs_pruned")

    @generation.setter
    def generation(self, record: dict) -> None:
        st.session_state["dense_vs_pruned"] = record

    @property
    def table_requests(self) -> dict[str, TableRequest]:
        return self._setdefault("table_requests", dict)

    @property
    def opened_shared_run(self) -> str | None:
        return self._get("opened_shared_run")

    @opened_shared_run.setter
    def opened_shared_run(self, name: str) -> None:
        st.session_state["opened_shared_run"] = name


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
