"""spap_service.runs: a job cancelled during its recovery finishes with the pruned model as it was
before recovery, saved, listed and compared as such; over several calibration seeds, or as one point
of a sweep, such a cancel cancels the whole job."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from functools import partial

import pytest

from spap_core.errors import PruningCancelled
from spap_core.methods.registry import PruneSettings
from spap_core.recovery.loop import RecoveryStep
from spap_core.recovery.settings import RecoverySettings
from spap_service.compare import NOT_RECOVERED, perplexity_table, recovery_cancelled_line
from spap_service.jobs import Job, JobQueue, JobStatus, ProgressReporter
from spap_service.runs import JobRunProgress, RunRequest, load_saved_run, run_pruning, run_request, saved_runs

WAIT_S = 120  # a tiny model's run takes seconds; this only keeps a broken cancel from hanging the suite
LORA = RecoverySettings(mode="lora", steps=5, lr=1e-2, heldout_every=2)


@pytest.fixture()
def request_(saved_run_data) -> RunRequest:
    return RunRequest(PruneSettings(method="magnitude", sparsity=0.25), 0, saved_run_data, recovery=LORA)


@pytest.fixture()
def queue():
    jobs = JobQueue()
    yield jobs
    jobs.shutdown(timeout_s=WAIT_S)


def cancel_in_recovery(monkeypatch, queue: JobQueue, jobs: list[Job], recovery: int, at_step: int) -> None:
    """Cancel the first of `jobs` once its `recovery`-th recovery (one per calibration seed) has
    done `at_step` steps."""
    original, started = JobRunProgress.recovery_step, []

    def cancelling(self, step: RecoveryStep) -> None:
        original(self, step)
        started.extend([step] if step.step == 1 else [])
        if len(started) == recovery and step.step == at_step:
            queue.cancel(jobs[0])

    monkeypatch.setattr(JobRunProgress, "recovery_step", cancelling)


def test_a_job_cancelled_in_its_recovery_finishes_with_the_pruned_model_before_recovery(tiny, request_, queue,
                                                                                      monkeypatch):
    unrecovered = run_pruning(tiny, replace(request_, recovery=RecoverySettings()), ProgressReporter(),
                              threading.Event(), owner="me")
    jobs: list[Job] = []
    cancel_in_recovery(monkeypatch, queue, jobs, recovery=1, at_step=2)
    jobs.append(queue.submit(partial(run_pruning, tiny, request_, owner="me"), owner="me", label="run"))
    assert queue.wait(jobs[0], WAIT_S)
    assert jobs[0].status is JobStatus.DONE, jobs[0].error
    outcome = jobs[0].result
    record = outcome.record
    assert outcome.pruned.perplexity == record["ppl"] == unrecovered.record["ppl"]
    assert (record["ppl_before_recovery"], record["recovery"]) == (None, None)
    assert record["recovery_cancelled"]["steps_done"] == 2
    assert recovery_cancelled_line(record) == ("Recovery cancelled after 2 of 5 steps: the pruned model is shown as "
                                               "it was before recovery.")
    assert recovery_cancelled_line(unrecovered.record) is None
    # saved, reopened with the recovery it was asked for, listed and compared without a 'before recovery'
    reopened = load_saved_run(outcome.saved_to)
    assert reopened.record["recovery_cancelled"] == record["recovery_cancelled"]
    assert reopened.request.recovery == LORA
    listed = saved_runs(owner="me").table.set_index("run")
    assert math.isnan(listed.loc[outcome.saved_to.name, "ppl before recovery"])
    assert listed.loc[outcome.saved_to.name, "ppl pruned"] == record["ppl"]
    assert perplexity_table([unrecovered, reopened])["before recovery"].tolist() == [NOT_RECOVERED] * 2


@pytest.mark.parametrize("recovery", [1, 2], ids=["first seed", "last seed"])
def test_a_run_over_several_seeds_cancelled_in_any_recovery_is_cancelled_whole(tiny, request_, queue, monkeypatch,
                                                                             recovery):
    jobs: list[Job] = []
    cancel_in_recovery(monkeypatch, queue, jobs, recovery=recovery, at_step=2)
    jobs.append(queue.submit(partial(run_pruning, tiny, replace(request_, seeds=2), owner="me"), owner="me",
                             label="run"))
    assert queue.wait(jobs[0], WAIT_S)
    assert (jobs[0].status, jobs[0].result) == (JobStatus.CANCELLED, None)
    assert jobs[0].error == "Cancelled during the recovery after pruning, after 2 of 5 steps."
    assert saved_runs(owner="me").table.empty


def test_a_sweeps_point_cancelled_in_its_recovery_is_cancelled(tiny, request_, monkeypatch):
    cancel = threading.Event()
    original = JobRunProgress.recovery_step

    def cancelling(self, step: RecoveryStep) -> None:
        original(self, step)
        cancel.set()

    monkeypatch.setattr(JobRunProgress, "recovery_step", cancelling)
    with pytest.raises(PruningCancelled, match="after 1 of 5 steps"):
        run_request(tiny, request_, ProgressReporter(), cancel)
