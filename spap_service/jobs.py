"""A process-wide queue for heavy work (pruning runs, sweeps, latency measurements).

Why a queue: the app serves several browser sessions from one process and one device. Running two
prunes at once would double memory and make both slow, and a widget click reruns the page script,
which would abort any loop running inside it. So heavy work runs here, on one worker thread, one
job at a time; the UI only reads each job's status and progress and may set its cancel flag.

The order is round robin over the browser sessions, not first come first served: the next job is
the oldest one of the session served longest ago (never served first), so in a class of 30 the
student who queues one run waits for at most one job of each other student, not for everyone's
queue. A session's own jobs keep their order, and with one session it is plain FIFO.

Nothing in this module imports streamlit: job functions are plain callables that receive a progress
reporter and a cancel event."""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import torch

from spap_core.errors import NumericalError, PruningCancelled, SourceUnavailableError, SpapInputError
from spap_core.recovery.loop import RecoveryStep
from spap_service.limits import server_limits

LOG = logging.getLogger(__name__)

USER_FACING_ERRORS = (SpapInputError, SourceUnavailableError, PruningCancelled, NumericalError)
OUT_OF_MEMORY_MESSAGE = (
    "Out of memory: the run needs more memory than this device has free. Lower the calibration samples "
    "or window length, the batch size, or the number of evaluation windows, then try again."
)
MAX_ERROR_CHARS = 300


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobProgress:
    """A snapshot of how far a job is; replaced as a whole so readers never see half an update.

    `step`/`n_steps` count sub-runs of a sweep (0 when the job is a single run). When a sweep's
    runs go in parallel (on Ray workers), `running` holds each running one's own snapshot, its
    `step` saying which run it is, and `step` counts the runs finished."""

    phase: str = "waiting in the queue"
    layer: int = 0
    n_layers: int = 0
    iteration: int = 0
    n_iterations: int = 0
    step: int = 0
    n_steps: int = 0
    running: tuple[JobProgress, ...] = ()
    # Batches of the pruned model's perplexity evaluated so far, once pruning is done (n_batches 0 before).
    batch: int = 0
    n_batches: int = 0
    # The steps of the recovery after pruning: those asked (0 without one) and those done so far
    recovery_steps: int = 0
    recovery: tuple[RecoveryStep, ...] = ()


class ProgressReporter:
    """Where a job function reports how far it is, safe to call from any thread: it keeps the
    latest snapshot. A job's reporter is what its page reads; a Ray worker keeps one per point,
    which the job asks for while the point runs."""

    def __init__(self, start: JobProgress = JobProgress()) -> None:
        self._lock = threading.Lock()
        self._current = start

    @property
    def current(self) -> JobProgress:
        return self._current

    def update(self, **fields: Any) -> None:
        """Set any JobProgress fields, e.g. update(phase="pruning", layer=3, n_layers=30)."""
        with self._lock:
            self._current = replace(self._current, **fields)


JobFunction = Callable[[ProgressReporter, threading.Event], Any]


@dataclass(eq=False)
class Job:
    """One unit of heavy work and everything the UI shows about it."""

    id: str
    owner: str  # the browser session that submitted it
    label: str
    kind: str  # which page submitted it ("run", "sweep", ...), so a page finds its own jobs
    function: JobFunction = field(repr=False)
    status: JobStatus = JobStatus.QUEUED
    jobs_ahead: int = 0  # while queued: jobs that run before this one, the running one included
    reporter: ProgressReporter = field(default_factory=ProgressReporter, repr=False)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    result: Any = field(default=None, repr=False)
    error: str | None = None
    estimate_s: float | None = None  # what the page expected it to take, said before it started
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def progress(self) -> JobProgress:
        return self.reporter.current

    @property
    def elapsed_s(self) -> float:
        """Seconds running so far (or in total, once finished); 0 while queued."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at


def user_message(exc: BaseException) -> str:
    """The one line the UI shows for a failed job: our own errors verbatim, out-of-memory with a
    remedy, anything else as its type and first line (the traceback goes to the server log only)."""
    if isinstance(exc, USER_FACING_ERRORS):
        return str(exc)
    text = str(exc)
    out_of_memory = isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text.lower())
    )
    if out_of_memory:
        return OUT_OF_MEMORY_MESSAGE
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if len(first_line) > MAX_ERROR_CHARS:
        first_line = first_line[:MAX_ERROR_CHARS] + "…"
    return f"The job failed ({type(exc).__name__}{': ' + first_line if first_line else ''})."


def _release_memory() -> None:
    """After a job (an out-of-memory failure above all) the next one should start with what the
    finished one held given back: the collector frees its reference cycles, and on CUDA the
    allocator's cache returns to the device so other processes see the memory too."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class QueueFull(SpapInputError):
    """The queue holds as many waiting jobs as the server allows."""


class JobQueue:
    """FIFO queue with one worker thread. Finished jobs stay listed (the newest `keep_finished`),
    so every session can see what ran. Results can be large (a pruned model), so only the newest
    `keep_results` finished jobs keep theirs: a session should take its result soon after the end.
    At most `max_waiting` jobs wait at once (None: no cap), whoever submits them: a browser that
    drops its cookie to get a fresh session each time still cannot fill the server's queue."""

    def __init__(self, keep_finished: int = 50, keep_results: int = 8, max_waiting: int | None = None) -> None:
        self._keep_finished = keep_finished
        self._keep_results = keep_results
        self.max_waiting = max_waiting
        self._condition = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._finished: deque[Job] = deque()
        self._ids = itertools.count(1)
        self._turns = itertools.count(1)
        self._served: dict[str, int] = {}  # owner → the turn its latest job started at
        self._worker: threading.Thread | None = None
        self._stopping = False

    def submit(self, function: JobFunction, *, owner: str, label: str, kind: str = "job",
               estimate_s: float | None = None) -> Job:
        """Queue `function(progress, cancel)`; it runs after every job submitted before it. Raises
        QueueFull when `max_waiting` jobs are waiting already."""
        with self._condition:
            if self._stopping:
                raise RuntimeError("the job queue is shut down")
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"The server's queue is full ({len(self._waiting)} jobs waiting, the most it takes); "
                                "try again when some have finished.")
            job = Job(id=f"job-{next(self._ids)}", owner=owner, label=label, kind=kind, function=function,
                      estimate_s=estimate_s)
            self._waiting.append(job)
            self._number_waiting_jobs()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="spap-job-worker", daemon=True)
                self._worker.start()
            self._condition.notify_all()
            return job

    def cancel(self, job: Job) -> None:
        """A queued job is dropped at once; a running one is asked to stop (its function checks
        the event and raises PruningCancelled, usually within one ρ iteration or one batch)."""
        with self._condition:
            job.cancel_event.set()
            if job.status is JobStatus.QUEUED and job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, JobStatus.CANCELLED, error="Cancelled before it started.")
                self._number_waiting_jobs()

    def active(self) -> list[Job]:
        """The running job (if any) followed by the queued ones, in the order they will run."""
        with self._condition:
            return ([self._running] if self._running is not None else []) + self._run_order()

    def wait_estimate_s(self, job: Job) -> float | None:
        """Seconds until a queued `job` should start: what the running job has left of its
        estimate plus the estimates of the jobs ahead; None when one of them has no estimate."""
        with self._condition:
            order = self._run_order()
            if job not in order:
                return None
            ahead = order[: order.index(job)]
            running = [] if self._running is None else [self._running]
            estimates = [other.estimate_s for other in running + ahead]
            known = [estimate for estimate in estimates if estimate is not None]
            if len(known) < len(estimates):
                return None
            left = sum(max(0.0, estimate - other.elapsed_s) for estimate, other in zip(known, running))
            return left + sum(known[len(running):])

    def jobs(self, owner: str | None = None) -> list[Job]:
        """Every job still listed, oldest first, optionally only one session's."""
        with self._condition:
            listed = list(self._finished) + self.active()
        listed.sort(key=lambda job: job.submitted_at)
        return [job for job in listed if owner is None or job.owner == owner]

    def wait(self, job: Job, timeout_s: float | None = None) -> bool:
        """Block until `job` finished (True) or the timeout passed (False). For tests and scripts;
        the app polls instead, so a page never blocks."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            while not job.status.finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Cancel everything and stop the worker (tests; the app's queue lives as long as the process)."""
        with self._condition:
            self._stopping = True
            for job in list(self._waiting):
                self.cancel(job)
            if self._running is not None:
                self._running.cancel_event.set()
            self._condition.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout_s)

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self._stopping and not self._waiting:
                    return
                job = self._run_order()[0]
                self._waiting.remove(job)
                self._served[job.owner] = next(self._turns)
                self._running = job
                job.jobs_ahead = 0
                self._number_waiting_jobs()
                job.status = JobStatus.RUNNING
                job.started_at = time.time()
                job.reporter.update(phase="starting")
            status, result, error = self._execute(job)
            with self._condition:
                self._running = None
                job.result = result
                self._finish(job, status, error)
                self._number_waiting_jobs()

    @staticmethod
    def _execute(job: Job) -> tuple[JobStatus, Any, str | None]:
        try:
            result = job.function(job.reporter, job.cancel_event)
        except Exception as exc:  # a failing job must never kill the worker thread
            if isinstance(exc, PruningCancelled) or job.cancel_event.is_set():
                return JobStatus.CANCELLED, None, user_message(exc)
            if not isinstance(exc, USER_FACING_ERRORS):
                # the traceback as text: a log record holding the exception would keep the failed
                # run's frames, and with them its tensors, alive in any handler that stores records
                LOG.error("job %s (%s) failed\n%s", job.id, job.label, traceback.format_exc())
            return JobStatus.FAILED, None, user_message(exc)
        finally:
            _release_memory()
        return JobStatus.DONE, result, None

    def _run_order(self) -> list[Job]:
        """The queued jobs in the order they will start (round robin over owners, FIFO within
        one); caller holds the condition."""
        served = dict(self._served)
        pending = list(self._waiting)  # in submission order
        order = []
        while pending:
            firsts: dict[str, Job] = {}
            for job in pending:
                firsts.setdefault(job.owner, job)
            job = min(firsts.values(), key=lambda first: (served.get(first.owner, 0), pending.index(first)))
            order.append(job)
            pending.remove(job)
            served[job.owner] = len(order) + max(self._served.values(), default=0)
        return order

    def _number_waiting_jobs(self) -> None:
        """Refresh every queued job's `jobs_ahead`; caller holds the condition."""
        running = 1 if self._running is not None else 0
        for index, waiting in enumerate(self._run_order()):
            waiting.jobs_ahead = index + running

    def _finish(self, job: Job, status: JobStatus, error: str | None) -> None:
        """Record the outcome; caller holds the condition."""
        job.status = status
        job.error = error
        job.jobs_ahead = 0
        job.finished_at = time.time()
        job.reporter.update(phase=status.value)
        self._finished.append(job)
        while len(self._finished) > self._keep_finished:
            self._finished.popleft()
        for old in list(self._finished)[: -self._keep_results or None]:
            old.result = None
        self._condition.notify_all()


_shared_queue: JobQueue | None = None
_shared_queue_lock = threading.Lock()


def shared_queue() -> JobQueue:
    """The one queue of this process: every session's heavy work goes through it, at most
    SPAP_MAX_QUEUED_JOBS waiting at once (spap_service.limits)."""
    global _shared_queue
    with _shared_queue_lock:
        if _shared_queue is None:
            _shared_queue = JobQueue(max_waiting=server_limits().max_queued_jobs)
        return _shared_queue
