"""Saved runs reopened: a results link (?run=NAME) and the saved-runs panel of Run SPAP. An opened run
becomes the session's latest run, and the Run form shows its settings next."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._requests import form_values
from pages._results import adopt_run
from pages._state import session
from pages._text import plain
from spap_core.errors import UnreadableRunError
from spap_service.limits import server_limits
from spap_service.runs import SHOWN_SAVED_RUN_COLUMNS, RunOutcome, load_saved_run, saved_run_folder, saved_runs
from spap_service.sessions import browser_sessions

SHARED_RUN_PARAM = "run"  # ?run=NAME opens a saved run's results


def open_shared_run() -> None:
    """A link with ?run=NAME opens that saved run's results (once per session and name). Only a
    name listed in the results folder is accepted; anything else is named and ignored."""
    name = st.query_params.get(SHARED_RUN_PARAM)
    state = session()
    if not name or state.opened_shared_run == name:
        return
    state.opened_shared_run = name
    folder = saved_run_folder(name)
    if folder is None:
        st.warning(f"The link asks for the saved run '{plain(name[:80])}', which this server does not have; "
                   "it was ignored.", icon=":material/link_off:")
        return
    try:
        _open_run(load_saved_run(folder))
    except UnreadableRunError as exc:
        st.warning(f"The link's saved run cannot be opened: {plain(exc)}", icon=":material/link_off:")


def _open_run(outcome: RunOutcome) -> None:
    """A saved run opened (a results link, Load): the latest run, and the settings the Run form
    shows next, so the form never claims other settings than the result beside it."""
    adopt_run(outcome)
    session().pending_form = form_values(outcome.request)


def saved_run_label(row: dict) -> str:
    """A saved run (a row of spap_service.runs.saved_runs) as a choice in a list: when it finished, what
    it ran and its pruned perplexity with its interval: '… · spap at 25% · ppl 42.72 [41.90, 43.57]'."""
    interval = row["95% interval"] if row["95% interval"].startswith("[") else f"({row['95% interval']})"
    seeds = f" · {row['seeds']} seeds" if row["seeds"] > 1 else ""
    return (f"{row['finished']} · {row['method']} at {row['sparsity']:.0%} · ppl {row['ppl pruned']:.2f} "
            f"{interval}{seeds}")


def saved_runs_panel() -> None:
    """This session's finished runs (or every session's, when asked), newest first; loading one
    makes it the session's latest run, so every inspection page shows it."""
    shared = server_limits().share_runs
    everyone = shared and st.session_state.get("saved_runs_everyone", False)  # the toggle's own widget state
    saved = saved_runs(owner=None if everyone else session().owner)
    runs = saved.table
    whose = "every session" if everyone else "this browser"
    with st.expander(f"Saved runs ({len(runs)} of {whose}): kept on the server as they finish"):
        if shared:
            st.toggle("Show the runs of every session", key="saved_runs_everyone")
        else:
            st.caption("This server keeps each browser's runs to itself; a results link from Run SPAP still opens a "
                       "run anywhere.")
        st.caption(browser_sessions().describe() + " " + server_limits().saved_runs.describe())
        for fault in saved.unreadable:  # named by its folder and file only: the server's paths stay its own
            file = Path(str(fault.file))  # UnreadableRunError types its file as any object; it is a path
            st.caption(f":warning: Skipped the saved run {plain(file.parent.name)}, which cannot be read: "
                       f"{plain(file.name)}: {plain(fault.fault)}")
        if runs.empty:
            st.caption("None yet: runs are saved as they finish.")
            return
        st.dataframe(runs[SHOWN_SAVED_RUN_COLUMNS], hide_index=True, width="stretch")
        st.download_button("Saved runs (.csv)", data=runs.to_csv(index=False), file_name="spap-saved-runs.csv",
                           mime="text/csv", on_click="ignore", help="With each interval's bounds as numbers.")
        labels = {row["run"]: saved_run_label(row) for row in runs.to_dict("records")}
        name = st.selectbox("Run", list(labels), format_func=labels.__getitem__, index=None, placeholder="Choose a run",
                            key="saved_run")
        if st.button("Load this run", icon=":material/history:", disabled=name is None) and name is not None:
            folder = saved_run_folder(name)
            try:
                if folder is None:
                    raise UnreadableRunError(name, "no longer in the results folder.")
                _open_run(load_saved_run(folder))
            except UnreadableRunError as exc:
                st.error(f"This run cannot be opened: {plain(exc)}")
            else:
                st.rerun()
