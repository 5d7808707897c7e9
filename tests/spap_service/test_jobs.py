"""The job queue behind the app: one worker, round robin over sessions (FIFO within one), queue
positions and the wait they mean, cancellation of queued and running jobs, errors turned into
one-line user messages, progress snapshots. Waits are event-based, never timed."""

import threading
import weakref

import pytest
import torch

from spap_core.errors import PruningCancelled, SourceUnavailableError, SpapInputError
from spap_service.jobs import OUT_OF_MEMORY_MESSAGE, JobQueue, JobStatus, shared_queue, user_message

WAIT_S = 30  # generous upper bound for a wait that normally ends in milliseconds


@pytest.fixture()
def queue():
    jobs = JobQueue()
    yield jobs
    jobs.shutdown(timeout_s=WAIT_S)


def blocking_job(started: threading.Event, release: threading.Event, result="done"):
    """A job that signals it runs, then waits until released or cancelled."""

    def run(progress, cancel):
        started.set()
        while not release.wait(0.01):
            if cancel.is_set():
                raise PruningCancelled("stopped on request")
        return result

    return run


def test_jobs_run_one_at_a_time_in_submission_order(queue):
    order, running, overlaps = [], [], []
    lock = threading.Lock()

    def job(name):
        def run(progress, cancel):
            with lock:
                running.append(name)
                overlaps.append(len(running))
            order.append(name)
            with lock:
                running.remove(name)
            return name
        return run

    jobs = [queue.submit(job(i), owner="a", label=f"job {i}") for i in range(6)]
    for job_ in jobs:
        assert queue.wait(job_, WAIT_S)
    assert order == list(range(6))
    assert max(overlaps) == 1
    assert [j.result for j in jobs] == list(range(6))
    assert all(j.status is JobStatus.DONE for j in jobs)


def test_queue_positions_count_the_running_job(queue):
    started, release = threading.Event(), threading.Event()
    first = queue.submit(blocking_job(started, release), owner="a", label="first")
    assert started.wait(WAIT_S)
    second = queue.submit(lambda p, c: 2, owner="b", label="second")
    third = queue.submit(lambda p, c: 3, owner="a", label="third")
    assert first.status is JobStatus.RUNNING
    assert first.jobs_ahead == 0
    assert second.jobs_ahead == 1
    assert third.jobs_ahead == 2
    assert [j.label for j in queue.active()] == ["first", "second", "third"]
    assert [j.label for j in queue.jobs(owner="a")] == ["first", "third"]
    release.set()
    assert queue.wait(third, WAIT_S)
    assert third.jobs_ahead == 0


def test_sessions_take_turns_instead_of_first_come_first_served(queue):
    """Session a queues three jobs, then b and c one each: b's and c's run before a's second, and a
    session's own jobs keep their order."""
    started, release = threading.Event(), threading.Event()
    order = []

    def job(name):
        def run(progress, cancel):
            order.append(name)
        return run

    first = queue.submit(blocking_job(started, release), owner="a", label="a1")
    assert started.wait(WAIT_S)
    queued = [queue.submit(job(name), owner=name[0], label=name) for name in ("a2", "a3", "b1", "c1", "b2")]
    assert [j.label for j in queue.active()] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert {j.label: j.jobs_ahead for j in queued} == {"b1": 1, "c1": 2, "a2": 3, "b2": 4, "a3": 5}
    release.set()
    for j in [first, *queued]:
        assert queue.wait(j, WAIT_S)
    assert order == ["b1", "c1", "a2", "b2", "a3"]


def test_the_wait_is_what_runs_ahead_has_left_of_its_estimates(queue):
    started, release = threading.Event(), threading.Event()
    running = queue.submit(blocking_job(started, release), owner="a", label="running", estimate_s=100.0)
    assert started.wait(WAIT_S)
    second = queue.submit(lambda p, c: None, owner="b", label="second", estimate_s=20.0)
    third = queue.submit(lambda p, c: None, owner="c", label="third", estimate_s=5.0)
    unknown = queue.submit(lambda p, c: None, owner="d", label="no estimate")
    last = queue.submit(lambda p, c: None, owner="e", label="behind it", estimate_s=1.0)
    wait = queue.wait_estimate_s(third)
    assert 120.0 - running.elapsed_s - 1.0 <= wait <= 120.0  # 100 s minus what ran, plus 20 s
    assert queue.wait_estimate_s(second) <= 100.0 and queue.wait_estimate_s(unknown) is not None
    assert queue.wait_estimate_s(last) is None  # the job before it has no estimate
    assert queue.wait_estimate_s(running) is None  # not queued
    release.set()
    assert queue.wait(last, WAIT_S)


def test_cancel_a_queued_job_drops_it_without_running(queue):
    started, release = threading.Event(), threading.Event()
    blocker = queue.submit(blocking_job(started, release), owner="a", label="blocker")
    assert started.wait(WAIT_S)
    ran = threading.Event()
    waiting = queue.submit(lambda p, c: ran.set(), owner="a", label="waiting")
    follower = queue.submit(lambda p, c: "after", owner="a", label="after")  # the same session: FIFO
    assert follower.jobs_ahead == 2
    queue.cancel(waiting)
    assert waiting.status is JobStatus.CANCELLED
    assert waiting not in queue.active()
    assert follower.jobs_ahead == 1
    release.set()
    assert queue.wait(follower, WAIT_S) and follower.result == "after"
    assert blocker.status is JobStatus.DONE
    assert not ran.is_set()


def test_cancel_a_running_job_sets_its_event_and_ends_cancelled(queue):
    started, release = threading.Event(), threading.Event()
    job = queue.submit(blocking_job(started, release), owner="a", label="long")
    assert started.wait(WAIT_S)
    queue.cancel(job)
    assert queue.wait(job, WAIT_S)
    assert job.status is JobStatus.CANCELLED
    assert job.error == "stopped on request"
    assert job.result is None
    nxt = queue.submit(lambda p, c: "next", owner="a", label="next")
    assert queue.wait(nxt, WAIT_S) and nxt.status is JobStatus.DONE


@pytest.mark.parametrize("error", [
    SpapInputError("Sparsity must be a number strictly between 0 and 1 (got 2)."),
    SourceUnavailableError("Cannot fetch WikiText-2: the Hugging Face hub is unreachable."),
])
def test_user_facing_errors_are_shown_verbatim(queue, error):
    def fail(progress, cancel):
        raise error

    job = queue.submit(fail, owner="a", label="bad")
    assert queue.wait(job, WAIT_S)
    assert job.status is JobStatus.FAILED
    assert job.error == str(error)


def test_other_errors_become_one_short_line_and_the_worker_survives(queue):
    def fail(progress, cancel):
        raise ValueError("shapes do not match\nTraceback (most recent call last): noise")

    job = queue.submit(fail, owner="a", label="bad")
    assert queue.wait(job, WAIT_S)
    assert job.status is JobStatus.FAILED
    assert "ValueError" in job.error and "Traceback" not in job.error and "\n" not in job.error
    after = queue.submit(lambda p, c: "ok", owner="a", label="after")
    assert queue.wait(after, WAIT_S) and after.result == "ok"


def test_out_of_memory_suggests_smaller_settings():
    assert (user_message(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
            == OUT_OF_MEMORY_MESSAGE)
    assert (user_message(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
            == OUT_OF_MEMORY_MESSAGE)
    assert user_message(MemoryError()) == OUT_OF_MEMORY_MESSAGE
    assert "smaller" in OUT_OF_MEMORY_MESSAGE or "Lower" in OUT_OF_MEMORY_MESSAGE


def test_out_of_memory_in_a_job_fails_it_frees_its_memory_and_the_worker_goes_on(queue):
    held = []

    def exhausts_memory(progress, cancel):
        working_set = torch.ones(1024, 1024)
        cycle = {"tensor": working_set}
        cycle["self"] = cycle  # only the collector frees this
        held.append(weakref.ref(working_set))
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes.")

    job = queue.submit(exhausts_memory, owner="a", label="too big")
    assert queue.wait(job, WAIT_S)
    assert job.status is JobStatus.FAILED and job.error == OUT_OF_MEMORY_MESSAGE
    assert held[0]() is None  # released, not kept alive by the traceback or the cycle
    after = queue.submit(lambda p, c: "ok", owner="a", label="smaller")
    assert queue.wait(after, WAIT_S) and after.result == "ok"


def test_progress_updates_are_visible_while_running(queue):
    reported, release = threading.Event(), threading.Event()

    def run(progress, cancel):
        progress.update(phase="pruning (spap)", layer=3, n_layers=30, iteration=7, n_iterations=20)
        reported.set()
        release.wait(WAIT_S)
        return None

    job = queue.submit(run, owner="a", label="progress")
    assert reported.wait(WAIT_S)
    snapshot = job.progress
    assert (snapshot.phase, snapshot.layer, snapshot.n_layers, snapshot.iteration, snapshot.n_iterations) == (
        "pruning (spap)", 3, 30, 7, 20)
    release.set()
    assert queue.wait(job, WAIT_S)
    assert job.progress.phase == "done"


def test_old_results_are_released_but_jobs_stay_listed():
    queue = JobQueue(keep_finished=5, keep_results=2)
    try:
        jobs = [queue.submit(lambda p, c, i=i: i, owner="a", label=str(i)) for i in range(7)]
        assert queue.wait(jobs[-1], WAIT_S)
        assert [j.label for j in queue.jobs()] == ["2", "3", "4", "5", "6"]
        assert [j.result for j in jobs] == [None] * 5 + [5, 6]
    finally:
        queue.shutdown(WAIT_S)


def test_shared_queue_is_one_per_process():
    assert shared_queue() is shared_queue()
