"""Sweep and scan points through one executor interface: in this process, or on a local Ray with
two CPU workers. Ray gives the same numbers (same seeds), a worker that dies fails its own point
with a message while the others finish, the job shows each running point's layers, cancelling
stops the points where they are, and the tables look the same."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest
import ray
from conftest import REPO

from spap_core.errors import PruningCancelled
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import PruneSettings, with_options
from spap_core.models.loading import load_model
from spap_core.recovery.loop import RecoveryStep
from spap_service import comparisons, executors, ray_pool
from spap_service.data import DataSpec, TextChoice, model_key
from spap_service.executors import InProcessExecutor, RayExecutor
from spap_service.jobs import ProgressReporter
from spap_service.ray_pool import LOCAL, worker_pool
from spap_service.runs import RunRequest

WAIT_S = 60.0  # the longest a test waits for a worker to get somewhere


class Progress:
    def __init__(self) -> None:
        self.updates = []

    def update(self, **fields) -> None:
        self.updates.append(fields)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}})
    yield ray
    ray.shutdown()


@pytest.fixture()
def points(tiny_dir, text_files):
    loaded = load_model(str(tiny_dir))
    data = DataSpec(calibration=TextChoice(kind="file", path=str(text_files["calib"])),
                    evaluation=TextChoice(kind="file", path=str(text_files["eval"])),
                    nsamples=4, seqlen=32, eval_windows=2, eval_len=32, batch_size=4)
    base = with_options(PruneSettings(), altmin=AltMinSettings(rounds=0))
    requests = [RunRequest(settings=PruneSettings(method=method, sparsity=sparsity) if method != "spap"
                           else replace_sparsity(base, sparsity), seed=0, data=data)
                for method in ("spap", "flap") for sparsity in (0.25, 0.5)]
    return loaded, requests


def replace_sparsity(settings: PruneSettings, sparsity: float) -> PruneSettings:
    from dataclasses import replace
    return replace(settings, sparsity=sparsity)


def test_ray_gives_the_numbers_of_this_process(local_ray, points):
    loaded, requests = points
    here = InProcessExecutor().measure(loaded, requests, Progress(), threading.Event())
    progress = Progress()
    there = RayExecutor(LOCAL).measure(loaded, requests, progress, threading.Event())
    assert [r.error for r in there] == [None] * len(requests)
    for mine, theirs in zip(here, there):
        assert theirs.perplexity == pytest.approx(mine.perplexity, rel=1e-6)
        assert theirs.mean_layer_error == pytest.approx(mine.mean_layer_error, rel=1e-5)
        assert (theirs.params_after, theirs.eval_tokens) == (mine.params_after, mine.eval_tokens)
    assert progress.updates[-1]["step"] == progress.updates[-1]["n_steps"] == len(requests)
    assert "on 2 Ray workers" in progress.updates[-1]["phase"]
    assert RayExecutor(LOCAL).description == "in parallel on a Ray started on this machine"
    assert RayExecutor("10.0.0.5:6379").description == "in parallel on the Ray cluster at 10.0.0.5:6379"


def test_the_model_is_loaded_once_per_worker_and_reused(local_ray, points):
    loaded, requests = points
    executor = RayExecutor(LOCAL)
    executor.measure(loaded, requests[:2], Progress(), threading.Event())
    pool = executor._pool(ray, loaded)
    pids = sorted(ray.get([worker.pid.remote() for worker in pool]))
    executor.measure(loaded, requests[2:], Progress(), threading.Event())
    assert len(pool) == 2 and sorted(ray.get([worker.pid.remote() for worker in executor._pool(ray, loaded)])) == pids


def test_a_dead_worker_fails_its_point_and_the_others_finish(local_ray, points):
    loaded, requests = points
    executor = RayExecutor(LOCAL)
    pool = executor._pool(ray, loaded)
    os.kill(ray.get(pool[0].pid.remote()), 9)  # the worker process dies before its first point
    results = executor.measure(loaded, requests, Progress(), threading.Event())
    failed = [r for r in results if r.error is not None]
    assert len(failed) == 1 and "its Ray worker died" in failed[0].error and math.isnan(failed[0].perplexity)
    assert all(r.error is None and r.perplexity > 1 for r in results if r not in failed)


def test_a_cancelled_job_stops(local_ray, points):
    loaded, requests = points
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PruningCancelled):
        RayExecutor(LOCAL).measure(loaded, requests, Progress(), cancel)


def test_a_sweep_through_ray_has_the_rows_of_one_in_this_process(local_ray, points, monkeypatch):
    loaded, requests = points
    base = requests[0]
    methods = {"spap": base.settings, "flap": PruneSettings(method="flap")}
    # the process's executor of this test goes with it (its workers hold the local Ray's two CPUs)
    monkeypatch.setattr(executors, "_executor", None)
    tables = {}
    for address in (None, LOCAL):
        if address is None:
            monkeypatch.delenv(ray_pool.RAY_ADDRESS_ENV, raising=False)
        else:
            monkeypatch.setenv(ray_pool.RAY_ADDRESS_ENV, address)
        tables[address] = comparisons.sweep_sparsities(loaded, base, methods, [0.25, 0.5], Progress(),
                                                       threading.Event())
    here, there = tables[None], tables[LOCAL]
    assert list(here.columns) == list(there.columns) and "error" not in there
    assert set(here["model"]) == set(there["model"]) == {loaded.description}
    assert there["perplexity"].tolist() == pytest.approx(here["perplexity"].tolist(), rel=1e-6)
    assert there[["method", "sparsity", "settings"]].equals(here[["method", "sparsity", "settings"]])


def test_a_run_on_ray_comes_back_with_its_pruned_model_and_is_saved_here(local_ray, points, tmp_path, monkeypatch):
    """Run SPAP's run on a worker: the same perplexity and the same pruned model (logits) as in this
    process, the weights loaded on this process's device, the record saved under this app's results."""
    import torch

    from spap_core.storage.runs import list_runs, read_run
    from spap_service.runs import results_root

    monkeypatch.setenv("SPAP_RESULTS_DIR", str(tmp_path / "runs"))
    loaded, requests = points
    here = InProcessExecutor().run(loaded, requests[0], Progress(), threading.Event(), owner="me")
    there = RayExecutor(LOCAL).run(loaded, requests[0], Progress(), threading.Event(), owner="me")
    assert there.has_model and there.pruned.perplexity == pytest.approx(here.pruned.perplexity, rel=1e-6)
    ids = torch.arange(3, 35).reshape(1, -1)
    with torch.no_grad():
        assert torch.allclose(there.result.model(ids).logits, here.result.model(ids).logits, atol=1e-5)
    assert there.result.params_after == sum(p.numel() for p in there.result.model.parameters())
    assert there.saved_to.parent == results_root() and len(list_runs(results_root())) == 2
    record, stored = read_run(there.saved_to)
    assert record["owner"] == "me" and stored.settings == requests[0].settings


def in_background(call, *arguments) -> list:
    """Start a job's call on a thread: the list holds the thread, then what the call returned or raised."""
    outcome: list = []

    def job() -> None:
        try:
            outcome.append(call(*arguments))
        except Exception as exc:  # what the job would see
            outcome.append(exc)

    thread = threading.Thread(target=job, daemon=True)
    outcome.append(thread)
    thread.start()
    return outcome


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S:.0f} s for {what}"
        time.sleep(0.05)


def test_a_sweep_on_ray_shows_where_each_running_point_is_and_a_cancel_stops_them_in_place(local_ray, points,
                                                                                              monkeypatch):
    """Progress and cancellation as in-process: while two points run on the two workers, the job
    shows each one's layer and ρ iteration; a cancel reaches the workers, whose points stop, and
    the workers stay (their model loaded) instead of being killed."""
    from ray_workers import GatedWorker

    monkeypatch.setattr(ray_pool, "PROGRESS_POLL_S", 0.0)
    loaded, requests = points
    executor = RayExecutor(LOCAL)
    executor._pools[model_key(loaded)] = workers = worker_pool(ray, GatedWorker, (loaded.source, "float32"))
    pids = sorted(ray.get([worker.pid.remote() for worker in workers]))
    progress, cancel = ProgressReporter(), threading.Event()
    outcome = in_background(executor.measure, loaded, requests, progress, cancel)
    wait_for(lambda: len(progress.current.running) == 2 and all(run.layer for run in progress.current.running),
             "both points to report a layer")
    shown = progress.current
    assert shown.phase == "0 of 4 runs done on 2 Ray workers" and (shown.step, shown.n_steps) == (0, 4)
    assert [(run.step, run.phase, run.layer, run.n_layers, run.iteration, run.n_iterations) for run in shown.running] \
        == [(1, "pruning (spap)", 2, 2, 3, 5), (2, "pruning (spap)", 2, 2, 3, 5)]

    cancel.set()
    outcome[0].join(WAIT_S)
    assert isinstance(outcome[-1], PruningCancelled)
    assert executor._pool(ray, loaded) == workers
    assert sorted(ray.get([worker.pid.remote() for worker in workers])) == pids
    for worker in workers:
        ray.kill(worker)


def test_a_point_that_does_not_stop_loses_its_worker_after_the_grace_period(local_ray, points, monkeypatch):
    from ray_workers import DeafWorker

    monkeypatch.setattr(ray_pool, "PROGRESS_POLL_S", 0.0)
    monkeypatch.setattr(ray_pool, "CANCEL_GRACE_S", 0.5)
    loaded, requests = points
    executor = RayExecutor(LOCAL)
    executor._pools[model_key(loaded)] = [worker] = worker_pool(ray, DeafWorker, (loaded.source, "float32"), count=1)
    ray.get(worker.pid.remote())
    progress, cancel = ProgressReporter(), threading.Event()
    outcome = in_background(executor.measure, loaded, requests[:1], progress, cancel)
    wait_for(lambda: progress.current.running, "the point to start")
    assert progress.current.running[0].phase == "starting"
    cancel.set()
    outcome[0].join(WAIT_S)
    assert isinstance(outcome[-1], PruningCancelled) and executor._pools[model_key(loaded)] == []
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(worker.pid.remote(), timeout=WAIT_S)


def test_a_run_on_ray_shows_its_layer_and_rho_iteration_as_in_process(local_ray, points, monkeypatch):
    """What the worker's run reports reaches the job as the in-process run's would, said to be on a worker."""
    from ray_workers import GatedWorker

    monkeypatch.setattr(ray_pool, "PROGRESS_POLL_S", 0.0)
    loaded, requests = points
    executor = RayExecutor(LOCAL)
    executor._pools[model_key(loaded)] = [worker] = worker_pool(ray, GatedWorker, (loaded.source, "float32"), count=1)
    progress, cancel = ProgressReporter(), threading.Event()
    outcome = in_background(executor.run, loaded, requests[0], progress, cancel)
    wait_for(lambda: progress.current.layer, "the run to report a layer")
    shown = progress.current
    assert (shown.phase, shown.layer, shown.n_layers, shown.iteration, shown.n_iterations) \
        == ("pruning (spap) on a Ray worker", 2, 2, 3, 5)
    assert shown.recovery_steps == 4 and shown.recovery == (RecoveryStep(1, 3.5, None, 0.25, 4),)  # the live chart's
    cancel.set()
    outcome[0].join(WAIT_S)
    assert isinstance(outcome[-1], PruningCancelled)
    ray.kill(worker)


def test_a_ray_too_old_to_cancel_a_running_point_is_refused_with_the_version_it_needs(monkeypatch):
    from spap_core.errors import SourceUnavailableError

    monkeypatch.setattr(ray, "__version__", "2.53.1")
    with pytest.raises(SourceUnavailableError, match=r"Ray 2\.53\.1 is too old: Cancel needs Ray 2\.54 or later"):
        ray_pool.connect_ray(LOCAL)
