"""This session's results as the pages read them: each finished job is taken over on whichever page is
open (a run becomes the latest run and a row of the session's run table), then the latest run,
latency comparison and sweep or scan table; and the guards of pages that need a run."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._job_progress import job_panel
from pages._jobs import latest_job
from pages._links import PAGE_RUN
from pages._state import collect_finished_jobs, session
from pages._text import plain
from spap_core.errors import SpapInputError
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.parameters import parameter, settings_values
from spap_service.comparisons import RESULT_TABLES, LatencyComparison
from spap_service.data import model_key
from spap_service.runs import RunOutcome
from spap_service.uncertainty import interval_text


def latest_outcome() -> RunOutcome | None:
    """This session's latest finished run (a finished job is taken over here, on any page)."""
    collect_finished_jobs(adopt_run)
    return session().latest_run


def latest_latency() -> LatencyComparison | None:
    """This session's latest latency comparison (a finished job is taken over here, on any page)."""
    collect_finished_jobs(adopt_run)
    return session().latency


def latest_table(kind: str) -> tuple[pd.DataFrame, dict] | None:
    """The table this session last asked for, with its context, once it is available."""
    collect_finished_jobs(adopt_run)
    requested = session().table_requests.get(kind)
    if requested is None or (table := RESULT_TABLES.get(requested.key)) is None:
        return None
    return table, requested.context


def adopt_run(outcome: RunOutcome) -> None:
    """Make `outcome` the session's latest run, with its row in the session's run table."""
    session().adopt_run(outcome, history_row(outcome))


def history_row(outcome: RunOutcome) -> dict:
    """One row of the session's run table: every hyperparameter the run's method has, then its metrics
    (the pruned perplexity's interval as text: '[41.90, 43.57]', 'no interval')."""
    record = outcome.record
    values = settings_values(outcome.request.settings)
    return {
        "method": outcome.request.settings.method,
        **{parameter(key).symbol: value for key, value in values.items()},
        "seed": outcome.request.seed, "calibration tokens": record["calibration_tokens"],
        "ppl dense": record["ppl_dense"], "ppl pruned": record["ppl"],
        "ppl pruned, 95% interval": interval_text(record.get("ppl_ci95")), "calibration seeds": outcome.request.seeds,
        "mean layer error": mean_layer_error(outcome), "prune s": record["prune_seconds"],
    }


def mean_layer_error(outcome: RunOutcome) -> float:
    """The headline layer error: mean over layers of objective ÷ ½‖Y‖² (runs saved before it was
    recorded get it from their layers)."""
    return outcome.record.get("mean_layer_error", outcome.result.mean_layer_error)


def require_outcome(need_trace: bool = False) -> RunOutcome:
    """The latest run; otherwise say how to get one and stop this page."""
    outcome = latest_outcome()
    if outcome is None:
        job = latest_job("run")
        if job is not None and not job.status.finished:
            st.info("Your run is still going; this page fills in when it has finished.")
            job_panel("run")
        else:
            st.info("No run yet in this session: start one on Run SPAP.")
        st.page_link(PAGE_RUN, label="Go to Run SPAP", icon=":material/play_arrow:")
        st.stop()
    if need_trace and not outcome.result.trace:
        st.info("The latest run recorded no ρ iterations (not a SPAP run).")
        st.stop()
    return outcome


def require_pruned_model(loaded: LoadedModel, outcome: RunOutcome, purpose: str) -> None:
    """Stop the page (after saying why) unless the latest run holds a pruned copy of the loaded
    model, or kept one with its saved run (brought back here from the loaded model): pages that run
    both models side by side need the pair to differ only by the pruning."""
    if outcome.model_key != model_key(loaded):
        st.warning("The latest run pruned a different model (or the same one on another device or precision) than "
                   "the one loaded now; load that model again on Model & data, or start a new run, to compare them.")
        st.stop()
    if (why_not := pruned_model_at_hand(loaded, outcome, purpose)) is not None:
        st.info(why_not)
        st.stop()


def pruned_model_at_hand(loaded: LoadedModel, outcome: RunOutcome, purpose: str) -> str | None:
    """None when the run's pruned model is at hand: in memory or on disk already, or a saved run's
    kept weights, brought back here from `loaded` when it is the model the run pruned. Otherwise
    why not, as Markdown ending in what to do `purpose` (a page's "to time the pruned model")."""
    if outcome.has_model:
        return None
    if outcome.weights_missing is not None:
        return f"{plain(outcome.weights_missing)}; run it again on Run SPAP {purpose}."
    if outcome.model_key != model_key(loaded):
        return ("This run's pruned weights come back from the model it pruned, which is not the one loaded now (or "
                f"runs on another device or precision); load that model on Model & data {purpose}.")
    try:
        outcome.restore_model(loaded)
    except SpapInputError as exc:
        return plain(exc)
    return None
