"""Where a run of Run SPAP and the points of a sweep or a sensitivity scan run: one interface, two
implementations. The default runs them one after another in the job's own process (nothing to
install, nothing to start). With SPAP_RAY_ADDRESS set (an address of a Ray cluster, or `local` for a Ray this process
starts on this machine), Ray runs them on the pool of spap_service.ray_pool: actors, each holding
the model loaded once and asking Ray for the device it needs (one GPU where the cluster has GPUs,
else CPU threads), take one point at a time, so a sweep fills every GPU of a cluster. Ray is an
existing engine for exactly this; the app does not grow a pool of its own.

Every point measures the same way on either (spap_service.runs.run_request, the run API with the
same seeds), so the tables agree. A point whose worker dies fails with a message and the others
finish; the results a job returns are complete rows or failed ones, never half-written.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import threading
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import PreTrainedModel

from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.models.loading import LoadedModel, load_model
from spap_core.models.offload import is_dispatched
from spap_core.models.shrink import load_pruned
from spap_service.data import model_key
from spap_service.jobs import JobProgress, ProgressReporter
from spap_service.ray_pool import (
    LOCAL,
    RAY_ADDRESS_ENV,
    connect_ray,
    pool_map,
    ray_cancel_flag,
    worker_device,
    worker_pool,
)
from spap_service.runs import RunOutcome, RunRequest, pruned_model_zip, run_pruning, run_request, save_outcome

BETWEEN_POINTS = JobProgress(phase="starting")  # what a worker reports before its point has begun
# what a worker's run reports besides its phase (a recovery's steps too, for its live chart)
PER_RUN_FIELDS = ("layer", "n_layers", "iteration", "n_iterations", "recovery_steps", "recovery")


@dataclass(frozen=True)
class PointResult:
    """What a sweep's or a scan's row needs of one run; `error` says why a point has no numbers."""

    perplexity: float = math.nan
    dense_perplexity: float = math.nan
    mean_layer_error: float = math.nan
    params_after: int = 0
    eval_tokens: int = 0
    window_nll: tuple[float, ...] = ()  # the pruned model's mean loss on each evaluation window
    # with a recovery after pruning, `perplexity` and `window_nll` are the recovered model's and these
    # the pruned model's before it, on the same windows; empty without a recovery
    window_nll_before_recovery: tuple[float, ...] = ()
    error: str | None = None


def measure_point(loaded: LoadedModel, request: RunRequest, progress: ProgressReporter,
                  cancel: threading.Event) -> PointResult:
    """One point: prune a copy of the model with the request's settings and evaluate it."""
    experiment = run_request(loaded, request, progress, cancel).experiment
    before = experiment.before_recovery
    return PointResult(perplexity=experiment.pruned.perplexity, dense_perplexity=experiment.dense.perplexity,
                       mean_layer_error=experiment.result.mean_layer_error,
                       params_after=experiment.result.params_after, eval_tokens=experiment.pruned.tokens,
                       window_nll=experiment.pruned.window_nll,
                       window_nll_before_recovery=() if before is None else before.window_nll)


class PointExecutor(ABC):
    """Runs one job's points (returning their results in the order of `requests`), or one whole
    run of Run SPAP."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Where and how its points run, as the pages say it ("Its points run …")."""

    @abstractmethod
    def measure(self, loaded: LoadedModel, requests: list[RunRequest], progress: ProgressReporter,
                cancel: threading.Event) -> list[PointResult]:
        """Every point's result; setting `cancel` stops the job (PruningCancelled)."""

    @abstractmethod
    def run(self, loaded: LoadedModel, request: RunRequest, progress: ProgressReporter, cancel: threading.Event,
            owner: str = "") -> RunOutcome:
        """One run with its pruned model in this process and its record saved (run_pruning)."""


class InProcessExecutor(PointExecutor):
    description = "one after another in this process"

    def run(self, loaded: LoadedModel, request: RunRequest, progress: ProgressReporter, cancel: threading.Event,
            owner: str = "") -> RunOutcome:
        return run_pruning(loaded, request, progress, cancel, owner)

    def measure(self, loaded: LoadedModel, requests: list[RunRequest], progress: ProgressReporter,
                cancel: threading.Event) -> list[PointResult]:
        results = []
        for index, request in enumerate(requests, start=1):
            progress.update(step=index, n_steps=len(requests))
            results.append(measure_point(loaded, request, progress, cancel))
        return results


class RayExecutor(PointExecutor):
    """A pool of Ray actors, each with the model loaded once (by its source, so workers on other
    machines load it themselves: the source and the texts must be reachable there too), kept
    for later jobs on the same model."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._pools: dict[str, list] = {}
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        where = "a Ray started on this machine" if self.address == LOCAL else f"the Ray cluster at {self.address}"
        return f"in parallel on {where}"

    def measure(self, loaded: LoadedModel, requests: list[RunRequest], progress: ProgressReporter,
                cancel: threading.Event) -> list[PointResult]:
        ray = connect_ray(self.address)
        workers = self._pool(ray, loaded)
        results: list[PointResult | None] = [None] * len(requests)
        running: dict[int, JobProgress] = {}

        def report() -> None:
            done = sum(r is not None for r in results)
            progress.update(phase=f"{done} of {len(requests)} runs done on {len(workers)} Ray workers", step=done,
                            n_steps=len(requests), running=tuple(running[index] for index in sorted(running)))

        def on_progress(index: int, snapshot: JobProgress) -> None:
            running[index] = replace(snapshot, step=index + 1, n_steps=len(requests))
            report()

        report()
        for index, result, error in pool_map(ray, workers, "measure", [(r,) for r in requests], cancel,
                                             on_lost=lambda worker: self._forget(loaded, worker),
                                             on_progress=on_progress):
            results[index] = result if error is None else PointResult(error=error)
            running.pop(index, None)
            report()
        return [result if result is not None else PointResult(error="not run") for result in results]

    def run(self, loaded: LoadedModel, request: RunRequest, progress: ProgressReporter, cancel: threading.Event,
            owner: str = "") -> RunOutcome:
        """The run on a worker; its pruned model comes back as the saved files (safetensors), is
        loaded on this process's device, and the record is saved here, under this app's results."""
        ray = connect_ray(self.address)
        progress.update(phase="starting on a Ray worker")

        def on_progress(_: int, snapshot: JobProgress) -> None:
            progress.update(**{name: getattr(snapshot, name) for name in PER_RUN_FIELDS},
                            phase=f"{snapshot.phase} on a Ray worker")

        [(_, sent, error)] = list(pool_map(ray, self._pool(ray, loaded)[:1], "run", [(request, owner)], cancel,
                                           on_lost=lambda worker: self._forget(loaded, worker),
                                           on_progress=on_progress))
        if error is not None:
            raise SourceUnavailableError(f"The run failed on its Ray worker: {error}")
        outcome, archive = sent
        outcome.result.model = _model_from_zip(archive, loaded)
        outcome.tokenizer, outcome.model_key = loaded.tokenizer, model_key(loaded)
        return save_outcome(outcome, loaded.model)

    def _pool(self, ray, loaded: LoadedModel) -> list:
        """The actors of this model (created on the first job, reused after). A model placed with a
        device map is refused: a worker would load it whole."""
        if is_dispatched(loaded.model):
            raise SpapInputError("A model placed with a device map runs its points in this process; unset "
                                 f"${RAY_ADDRESS_ENV} or load it without --device-map.")
        key = model_key(loaded)
        with self._lock:
            if not self._pools.get(key):
                dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
                self._pools[key] = worker_pool(ray, PointWorker, (loaded.source, dtype))
            return list(self._pools[key])

    def _forget(self, loaded: LoadedModel, worker) -> None:
        with self._lock:
            pool = self._pools.get(model_key(loaded), [])
            if worker in pool:
                pool.remove(worker)


class PointWorker:
    """A Ray actor: the model loaded once on the device Ray gave it, then one point at a time.
    Its second thread (worker_pool's max_concurrency) answers `progress` while a point runs, so
    the job shows the point's layers and ρ iterations; `ray.cancel` of a point stops it at its
    next layer, as a cancel does in-process, and the worker keeps its model."""

    def __init__(self, source: str, dtype: str) -> None:
        self.loaded = load_model(source, device=worker_device(), dtype=dtype)
        self._reporter = ProgressReporter(BETWEEN_POINTS)

    def pid(self) -> int:
        return os.getpid()

    def progress(self) -> JobProgress:
        return self._reporter.current

    def measure(self, request: RunRequest) -> PointResult:
        with self._point() as progress:
            return measure_point(self.loaded, request, progress, ray_cancel_flag())

    def run(self, request: RunRequest, owner: str) -> tuple[RunOutcome, bytes]:
        """A whole run, unsaved; its model goes back as the zipped files save_pruned writes."""
        with self._point() as progress:
            outcome = run_pruning(self.loaded, request, progress, ray_cancel_flag(), owner, save=False)
        archive = pruned_model_zip(outcome)
        outcome.result.model, outcome.tokenizer = None, None
        return outcome, archive

    @contextmanager
    def _point(self) -> Iterator[ProgressReporter]:
        """The reporter of the point about to run; after it, the worker says it is between
        points, so a job never reads a finished point's progress as its own."""
        self._reporter = reporter = ProgressReporter(BETWEEN_POINTS)
        try:
            yield reporter
        finally:
            self._reporter = ProgressReporter(BETWEEN_POINTS)


def _model_from_zip(archive: bytes, loaded: LoadedModel) -> PreTrainedModel:
    """The pruned model a worker sent, loaded with plain transformers on this process's device and
    dtype, with any per-layer widths unpadded (these are the app's own files, not a user's path)."""
    parameter = next(loaded.model.parameters())
    with tempfile.TemporaryDirectory(prefix="spap-ray-run-") as folder:
        with zipfile.ZipFile(io.BytesIO(archive)) as files:
            files.extractall(folder)
        return load_pruned(Path(folder) / "pruned-model", parameter.dtype, parameter.device)


_executor: PointExecutor | None = None
_executor_address: str | None = None
_executor_lock = threading.Lock()


def point_executor() -> PointExecutor:
    """The executor $SPAP_RAY_ADDRESS asks for (unset: in this process), one per process."""
    global _executor, _executor_address
    address = os.environ.get(RAY_ADDRESS_ENV) or None
    with _executor_lock:
        if _executor is None or address != _executor_address:
            _executor = InProcessExecutor() if address is None else RayExecutor(address)
            _executor_address = address
        return _executor
