"""UI pieces every page uses: the session's model and data choices, the cached model, the
sidebar, background jobs with their live progress panel, and the result caches.

Session state holds only this session's choices and results; the model (st.cache_resource) and
the job queue are shared by all sessions and never mutated by a run.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import torch

from pages._charts import presentation_style
from pages._state import ModelChoice, TableRequest, collect_finished_jobs, remember_browser, session, session_is_kept
from pages._text import plain
from spap_core.data.texts import HUB_SPEC, default_text_spec
from spap_core.errors import SourceUnavailableError, SpapInputError, UnreadableRunError
from spap_core.models.device import resolve_device
from spap_core.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from spap_core.pipeline.experiment import plan_run
from spap_core.pipeline.parameters import describe, parameter, settings_values
from spap_core.system.hub import hub_unreachable_reason
from spap_service.analysis import run_label
from spap_service.comparisons import RESULT_TABLES, LatencyComparison
from spap_service.data import DataSpec, TextChoice, dense_perplexity_known, model_key
from spap_service.estimates import duration, many_runs_seconds, model_speed
from spap_service.executors import RayExecutor, point_executor
from spap_service.jobs import Job, JobProgress, JobStatus, ProgressReporter, QueueFull, shared_queue
from spap_service.limits import server_limits
from spap_service.presets import interactive_run_size, interactive_settings
from spap_service.runs import RunOutcome, RunRequest, check_results_apart, load_saved_run, saved_run_folder, saved_runs
from spap_service.sessions import browser_sessions

LOG = logging.getLogger("spap_explorer")


def report_unexpected(exc: Exception, where: str) -> None:
    """A bug's one-line summary on the page instead of a traceback (which goes to the server log)."""
    LOG.error("%s failed", where, exc_info=exc)
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    st.error(f"Something unexpected went wrong ({type(exc).__name__}: {plain(first_line)}). Try other settings; "
             "the details are in the server log.", icon=":material/bug_report:")


def guarded(function: Callable) -> Callable:
    """For fragments: they rerun on their own, outside the page-level error handler in app.py."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # streamlit's rerun/stop are BaseExceptions and pass through
            report_unexpected(exc, function.__name__)
            return None

    return run

MODEL_ENV = "SPAP_APP_MODEL"  # default model source (tests point it at a tiny local model)
PROGRESS_REFRESH_S = 1.0
QUEUE_REFRESH_S = 2.0

SHARED_RUN_PARAM = "run"  # ?run=NAME opens a saved run's results
PAGE_MODEL_DATA = "pages/model_data.py"
PAGE_RUN = "pages/run_spap.py"


# ------------------------------------------------------------------------- session choices


def session_id() -> str:
    return session().session_id


def model_choice() -> ModelChoice:
    state = session()
    if state.model is None:
        state.model = ModelChoice(source=os.environ.get(MODEL_ENV, DEFAULT_MODEL))
    return state.model


def target_device() -> torch.device:
    """Where the chosen model runs (known before it is loaded, so defaults can depend on it)."""
    try:
        return resolve_device(model_choice().device)
    except SpapInputError:
        return torch.device("cpu")


def _default_text_choice(purpose: str) -> TextChoice:
    """The library's default text (spap_core.data.texts.default_text_spec), as the Model & data page's choice."""
    spec = default_text_spec(purpose)
    if spec == HUB_SPEC:
        return TextChoice(kind="hub")
    return TextChoice(kind="file", path=spec or "")


def data_spec() -> DataSpec:
    """The session's data choice, defaulting to the interactive run size of the target device."""
    state = session()
    if state.data_spec is None:
        size = interactive_run_size(target_device())
        state.data_spec = DataSpec(
            calibration=_default_text_choice("calibration"), evaluation=_default_text_choice("evaluation"),
            nsamples=size.nsamples, seqlen=size.seqlen, eval_windows=size.eval_windows,
            eval_len=size.eval_len, batch_size=size.batch_size,
        )
    return state.data_spec


def run_request() -> RunRequest:
    """Settings of the last run submitted on the Run SPAP page (defaults before the first), with
    the current data: the base of sweeps and sensitivity scans."""
    state = session()
    settings = state.prune_settings or interactive_settings(target_device())
    return RunRequest(settings=settings, seed=state.run_seed, data=data_spec())


def run_size_note() -> str:
    """Which interactive defaults apply and why (GPU sizes are much larger)."""
    size = interactive_run_size(target_device())
    where = "a GPU was found, so GPU defaults apply" if target_device().type == "cuda" else "running on the CPU"
    return f"{size.label} ({where})."


# ------------------------------------------------------------------------------------ model


@st.cache_resource(max_entries=2, show_spinner="Loading the model (the first load of SmolLM2 dequantizes "
                                                "its GGUF, about 40 s; later loads take a second)…")
def _load_model_shared(source: str, device: str, dtype: str) -> LoadedModel:
    """One copy per (source, device, dtype) for the whole process; runs prune copies of it."""
    return load_model(source, device=device, dtype=dtype)


def current_model() -> LoadedModel | None:
    """The chosen model, or None after showing why it could not be loaded."""
    choice = model_choice()
    try:
        return _load_model_shared(choice.source, choice.device, choice.dtype)
    except (SpapInputError, SourceUnavailableError) as exc:
        st.error(f"Model '{plain(choice.source)}' could not be loaded: {plain(exc)}")
    return None


def require_model() -> LoadedModel:
    """The loaded model; otherwise point to the Model & data page and stop this page."""
    loaded = current_model()
    if loaded is None:
        st.page_link(PAGE_MODEL_DATA, label="Choose another model on Model & data", icon=":material/arrow_back:")
        st.stop()
    return loaded


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------- jobs


def latest_job(kind: str) -> Job | None:
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
            _, adjusted = plan_run(loaded, request.settings, (request.data.seqlen, request.data.eval_len),
                                   calibration_tokens=request.data.nsamples * request.data.seqlen,
                                   batch_size=request.data.batch_size)
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
    if _still_busy(kind) or _over_session_limit():
        return
    try:
        session().jobs[kind] = shared_queue().submit(function, owner=session_id(), label=label, kind=kind,
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


def _still_busy(kind: str) -> bool:
    """True (after saying so) while this session's previous `kind` job is queued or running."""
    previous = latest_job(kind)
    if previous is not None and not previous.status.finished:
        st.warning(f"Your previous job ({previous.label}) is still {previous.status.value}: cancel it first.")
        return True
    return False


def progress_fraction(progress: JobProgress) -> float:
    """Share of the work done, from layers, ρ iterations and sweep steps (and from each run that
    goes in parallel on a Ray worker)."""
    if progress.running:
        return min(1.0, (progress.step + sum(_within_run(run) for run in progress.running)) / progress.n_steps)
    within = _within_run(progress)
    if progress.n_steps:
        return min(1.0, (max(progress.step - 1, 0) + within) / progress.n_steps)
    return within


def _within_run(progress: JobProgress) -> float:
    if not progress.n_layers:
        return 0.0
    iteration = progress.iteration / progress.n_iterations if progress.n_iterations else 0.0
    return min(1.0, (max(progress.layer - 1, 0) + iteration) / progress.n_layers)


def progress_text(job: Job) -> str:
    """"Pruning (spap) · layer 3 of 30 · ρ iteration 7 of 20 · run 2 of 9 · 12 s"; runs going in
    parallel each say theirs: "2 of 9 runs done on 2 Ray workers · run 3: pruning (spap), layer 3
    of 30 · run 4: dense perplexity: batch 2 of 8 · 12 s"."""
    progress = job.progress
    parts = _run_parts(progress)
    parts[0] = parts[0][:1].upper() + parts[0][1:]
    if progress.running:
        parts += [f"run {run.step}: " + ", ".join(_run_parts(run)) for run in progress.running]
    elif progress.n_steps:
        parts.append(f"run {progress.step} of {progress.n_steps}")
    parts.append(f"{job.elapsed_s:.0f} s" + ("" if job.estimate_s is None else f" of {duration(job.estimate_s)}"))
    return " · ".join(parts)


def _run_parts(progress: JobProgress) -> list[str]:
    """One run's phase, with its layer and ρ iteration while it prunes."""
    parts = [progress.phase]
    if progress.n_layers and progress.phase.startswith("pruning"):
        parts.append(f"layer {progress.layer} of {progress.n_layers}")
        if progress.n_iterations:
            parts.append(f"ρ iteration {progress.iteration} of {progress.n_iterations}")
    return parts


def queue_position_text(job: Job) -> str:
    """"Queued, 2 ahead (sessions take turns), starts in about 3 min": the wait from the estimates
    of what runs before it (none said when one of those has no estimate)."""
    ahead = job.jobs_ahead
    text = f"Queued, {ahead} ahead (sessions take turns)" if ahead else "Queued, starting next"
    wait = shared_queue().wait_estimate_s(job)
    return text if wait is None else f"{text}, starts in {duration(wait)}"


@guarded
def _live_job_progress(job: Job) -> None:
    if job.status.finished:
        st.rerun()  # the whole page, so it shows the result
    if job.status is JobStatus.QUEUED:
        st.info(f"{job.label}: {queue_position_text(job)}. Other pages stay usable meanwhile.",
                icon=":material/hourglass_top:")
    else:
        st.progress(progress_fraction(job.progress), text=f"{job.label}: {progress_text(job)}")
    st.button("Cancel", key=f"cancel-{job.id}", on_click=shared_queue().cancel, args=(job,),
              icon=":material/stop_circle:")


def job_panel(kind: str) -> Job | None:
    """This session's latest `kind` job: live progress with Cancel while it is queued or running
    (a fragment re-drawn every second, so only this panel refreshes), its outcome afterwards."""
    job = latest_job(kind)
    if job is None:
        return None
    if not job.status.finished:
        st.fragment(_live_job_progress, run_every=PROGRESS_REFRESH_S)(job)
    elif job.status is JobStatus.FAILED:
        st.error(plain(job.error), icon=":material/error:")
    elif job.status is JobStatus.CANCELLED:
        st.warning(f"{job.label} was cancelled ({plain(job.error)}).", icon=":material/cancel:")
    elif job.estimate_s is not None:
        st.caption(f"{job.label} took {job.elapsed_s:.0f} s; estimated beforehand: {duration(job.estimate_s)}.")
    return job


# ----------------------------------------------------------------------- cached result tables


def request_table(kind: str, key: str, label: str, context: dict,
                  compute: Callable[[ProgressReporter, Any], pd.DataFrame], estimate_s: float | None = None) -> None:
    """Show the table for `key` from the shared cache at once, or compute it as a background job.
    `context` (shown with the table) is remembered with the key."""
    known = RESULT_TABLES.get(key)
    cached = known is not None and "error" not in known  # a table with failed points is computed again
    if not cached and _still_busy(kind):
        return
    session().table_requests[kind] = TableRequest(key, context)
    if not cached:
        submit_job(kind, label, lambda progress, cancel: (key, compute(progress, cancel)), estimate_s)


def executor_note() -> str:
    """Where a sweep's or scan's points run (spap_service.executors), for the caption under its estimate."""
    executor = point_executor()
    note = f"Its points run {executor.description}"
    return note + (" (the estimate counts them one after another)." if isinstance(executor, RayExecutor) else ".")


def failed_points_warning(table: pd.DataFrame, point: Callable[[pd.Series], str]) -> None:
    """Say which points of a sweep or scan have no result and why (their worker died, on Ray),
    so a gap in the chart is never silent."""
    if "error" not in table:
        return
    failed = table[table["error"].notna()]
    st.warning(f"{len(failed)} of {len(table)} points have no result: "
               + "; ".join(f"{point(row)}: {plain(row['error'])}" for _, row in failed.iterrows())
               + ". The others are shown; run it again to retry them.", icon=":material/error:")


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


def latest_table(kind: str) -> tuple[pd.DataFrame, dict] | None:
    """The table this session last asked for, with its context, once it is available."""
    collect_finished_jobs(_adopt_run)
    requested = session().table_requests.get(kind)
    if requested is None or (table := RESULT_TABLES.get(requested.key)) is None:
        return None
    return table, requested.context


def latest_latency() -> LatencyComparison | None:
    collect_finished_jobs(_adopt_run)
    return session().latency


# ------------------------------------------------------------------------------ latest run


def latest_outcome() -> RunOutcome | None:
    """This session's latest finished run (a finished job is taken over here, on any page)."""
    collect_finished_jobs(_adopt_run)
    return session().latest_run


def _adopt_run(outcome: RunOutcome) -> None:
    session().adopt_run(outcome, history_row(outcome))


def _open_run(outcome: RunOutcome) -> None:
    """A saved run opened (a results link, Load): the latest run, and the settings the Run form
    shows next, so the form never claims other settings than the result beside it."""
    _adopt_run(outcome)
    session().pending_form = form_values(outcome.request)


def form_values(request: RunRequest) -> dict:
    """The Run form's values of a run: its settings, calibration size and seed, by key."""
    return {**settings_values(request.settings), "nsamples": request.data.nsamples, "seqlen": request.data.seqlen,
            "seed": request.seed}


def reference_request() -> RunRequest:
    """The run the app's defaults would make: what a result's label names differences from."""
    size = interactive_run_size(target_device())
    data = replace(data_spec(), nsamples=size.nsamples, seqlen=size.seqlen)
    return RunRequest(settings=interactive_settings(target_device()), seed=0, data=data)


def result_label(outcome: RunOutcome) -> str:
    """'spap at 30% · K = 10, δ = 0.2': the run's method, sparsity and what differs from the defaults."""
    return run_label(outcome.request, reference_request())


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
        st.dataframe(runs, hide_index=True, width="stretch")
        labels = {row["run"]: f"{row['finished']} · {row['method']} at {row['sparsity']:.0%} · "
                              f"ppl {row['ppl pruned']:.2f}" for row in runs.to_dict("records")}
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
    model: pages that run both models side by side need the pair to differ only by the pruning."""
    if outcome.model_key != model_key(loaded):
        st.warning("The latest run pruned a different model (or the same one on another device or precision) than "
                   "the one loaded now; load that model again on Model & data, or start a new run, to compare them.")
        st.stop()
    if not outcome.has_model:
        st.info("The latest run was reloaded from the results folder, which keeps its settings, metrics and trace "
                f"but not the pruned weights; run it again on Run SPAP {purpose}.")
        st.stop()


def layer_picker(n_layers: int, key: str, container=st) -> int:
    """A layer slider (a slider needs two values, so a one-layer model gets none)."""
    if n_layers == 1:
        container.caption("Layer 0 (the model has one layer)")
        return 0
    return container.slider("Layer", 0, n_layers - 1, 0, key=key)


def history_row(outcome: RunOutcome) -> dict:
    """One row of the session's run table: every hyperparameter the run's method has, then its metrics."""
    record = outcome.record
    values = settings_values(outcome.request.settings)
    return {
        "method": outcome.request.settings.method,
        **{parameter(key).symbol: value for key, value in values.items()},
        "seed": outcome.request.seed, "calibration tokens": record["calibration_tokens"],
        "ppl dense": record["ppl_dense"], "ppl pruned": record["ppl"],
        "mean layer error": mean_layer_error(outcome), "prune s": record["prune_seconds"],
    }


def comparison_header(title: str) -> tuple[LoadedModel, RunRequest]:
    """Title, model and the run request a sweep or scan starts from (the settings last submitted
    on Run SPAP)."""
    st.title(title)
    return require_model(), run_request()


def fixed_settings_caption(base: RunRequest, varied: set[str], what: str) -> None:
    """What every point of a sweep or scan keeps fixed: the summary without the `varied` items, so
    the caption never claims a value for what the chart varies."""
    st.caption(f"Fixed for every {what}: {settings_summary(base, omit=varied)} (as last submitted on Run SPAP). "
               f"Evaluation: {evaluation_budget(base.data)}.")


def settings_summary(request: RunRequest, omit: frozenset[str] | set[str] = frozenset()) -> str:
    """One line with every setting of the request except the parameter keys in `omit` (Markdown:
    the text's name verbatim)."""
    parts = [describe(request.settings, omit)]
    if "nsamples" not in omit:
        parts.append(f"calibration {request.data.nsamples} × {request.data.seqlen} tokens of "
                     f"{plain(request.data.calibration.label)}")
    if "seed" not in omit:
        parts.append(f"seed {request.seed}")
    return ", ".join(part for part in parts if part)


def time_estimate(loaded: LoadedModel, requests: list[RunRequest]) -> float | None:
    """Seconds the runs of `requests` should take here (spap_service.estimates); None when the
    model cannot be timed (then nothing is claimed)."""
    if not requests:
        return 0.0
    try:
        speed = model_speed(loaded)
    except (RuntimeError, ValueError):  # a model that does not run on random ids says so when it runs
        return None
    return many_runs_seconds(speed, requests, dense_perplexity_known(loaded, requests[0].data))


def estimate_caption(what: str, seconds: float | None) -> str:
    if seconds is None:
        return f"{what}: no time estimate for this model."
    return (f"{what}: {duration(seconds)} on this machine, estimated from this model's measured speed; the time it "
            "took is shown next to the result.")


def mean_layer_error(outcome: RunOutcome) -> float:
    """The headline layer error: mean over layers of objective ÷ ½‖Y‖² (runs saved before it was
    recorded get it from their layers)."""
    return outcome.record.get("mean_layer_error", outcome.result.mean_layer_error)


def evaluation_budget(data: DataSpec) -> str:
    """The evaluation token budget as the charts state it (Markdown: the text's name verbatim)."""
    windows = "all windows" if data.eval_windows == 0 else f"{data.eval_windows} windows"
    return f"{windows} × {data.eval_len} tokens of {plain(data.evaluation.label)}"


def evaluation_caption(record: dict) -> str:
    """The protocol every perplexity is reported with (window length, windows, tokens, source), as
    Markdown: the record's fields that are not checked numbers (read_record) are shown verbatim."""
    return (f"Perplexity on {record['eval_windows']} windows × {record['eval_len']} tokens "
            f"({record['eval_tokens']:,} predicted tokens) of {plain(record['eval_source'])}; calibration "
            f"{plain(record['nsamples'])} × {plain(record['seqlen'])} tokens of {plain(record['calib_source'])}, "
            f"seed {plain(record['seed'])}.")


# -------------------------------------------------------------------------------- sidebar


@guarded
def _queue_summary() -> None:
    queue = shared_queue()
    active = queue.active()
    if not active:
        st.caption("Job queue: idle")
    for job in active:
        whose = "yours" if job.owner == session_id() else "another session"
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
