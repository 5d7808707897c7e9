"""A job's progress as the pages show it: the share done and the phase in words, its place in the
queue, and the live panel with Cancel that refreshes on its own while the job is queued or running."""

from __future__ import annotations

import streamlit as st

from pages._errors import guarded
from pages._jobs import latest_job
from pages._recovery import live_recovery
from pages._text import plain
from spap_service.estimates import duration
from spap_service.jobs import Job, JobProgress, JobStatus, shared_queue

PROGRESS_REFRESH_S = 1.0


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
    """Share of one run done, from its layer and ρ iteration, then the batches of its pruned
    perplexity, which count as one layer more, and with a recovery its steps and the perplexity
    after it, one layer more each: the bar reaches 1 when the run has finished, not when its last
    layer is pruned."""
    if not progress.n_layers:
        return 0.0
    units = progress.n_layers + 1 + (2 if progress.recovery_steps else 0)
    evaluated = progress.batch / progress.n_batches if progress.n_batches else 0.0
    if progress.recovery:
        latest = progress.recovery[-1]
        done = 1 + latest.step / latest.steps + (evaluated if latest.step == latest.steps else 0.0)
        return min(1.0, (progress.n_layers + done) / units)
    if progress.n_batches:
        return min(1.0, (progress.n_layers + evaluated) / units)
    iteration = progress.iteration / progress.n_iterations if progress.n_iterations else 0.0
    return min(1.0, (max(progress.layer - 1, 0) + iteration) / units)


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


def cancelled_text(job: Job) -> str:
    """What a cancelled job left. A run of one calibration seed cancelled while it recovers finishes
    with its pruned model (spap_service.runs.run_pruning); one that is cancelled in a recovery all
    the same (over several seeds, or on Ray) keeps nothing, and the page says so."""
    steps = job.progress.recovery
    if steps and steps[-1].step < steps[-1].steps and not job.progress.running:
        return (f"{plain(job.label)} was cancelled during its recovery, after {steps[-1].step} of {steps[-1].steps} "
                "steps: a cancelled run keeps no result, so neither the pruned model nor its perplexity was kept; "
                "run it again without recovery (or with fewer steps) to see them.")
    return f"{plain(job.label)} was cancelled ({plain(job.error)})."


def queue_position_text(job: Job) -> str:
    """"Queued, 2 ahead (sessions take turns), starts in about 3 min": the wait from the estimates
    of what runs before it (none said when one of those has no estimate)."""
    ahead = job.jobs_ahead
    text = f"Queued, {ahead} ahead (sessions take turns)" if ahead else "Queued, starting next"
    wait = shared_queue().wait_estimate_s(job)
    return text if wait is None else f"{text}, starts in {duration(wait)}"


@guarded
def _live_job_progress(job: Job) -> None:
    """The panel's content while the job waits or runs; the whole page reruns once it has finished."""
    if job.status.finished:
        st.rerun()  # the whole page, so it shows the result
    if job.status is JobStatus.QUEUED:
        st.info(f"{job.label}: {queue_position_text(job)}. Other pages stay usable meanwhile.",
                icon=":material/hourglass_top:")
    else:
        st.progress(progress_fraction(job.progress), text=f"{job.label}: {progress_text(job)}")
        if job.progress.recovery and not job.progress.running:  # one run's recovery, under way or just done
            live_recovery(job.progress.recovery)
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
        st.warning(cancelled_text(job), icon=":material/cancel:")
    elif job.estimate_s is not None:
        st.caption(f"{job.label} took {job.elapsed_s:.0f} s; estimated beforehand: {duration(job.estimate_s)}.")
    return job
