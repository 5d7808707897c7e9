"""A pool of Ray workers, for the app's executors (spap_service.executors) and the benchmarks
(bench/common.py, bench/scaleout.py): connecting to Ray within a bound, actors that each ask Ray for
one point's device, calls handed to the next idle actor with their progress polled, and
cancellation that stops a running call at its next check (or kills its actor after a grace).

A cluster that does not answer fails in one line within RAY_CONNECT_TIMEOUT_S (connect_ray), so
it holds the app's one job worker, and every session's queue behind it, no longer.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch

from spap_core.errors import PruningCancelled, SourceUnavailableError, SpapInputError
from spap_service.jobs import JobProgress

RAY_ADDRESS_ENV = "SPAP_RAY_ADDRESS"
RAY_CPUS_PER_WORKER_ENV = "SPAP_RAY_CPUS_PER_WORKER"  # CPU threads of each worker on a cluster without GPUs
LOCAL = "local"
MIN_RAY = (2, 54)  # the first Ray whose threaded actors see ray.cancel of a running call (is_canceled)
WAIT_POLL_S = 0.2  # how often the job looks at its cancel flag while Ray works
PROGRESS_POLL_S = 1.0  # how often the job asks its busy workers how far their points are
CANCEL_GRACE_S = 30.0  # how long a cancelled point may take to reach its next layer before its worker is killed
RAY_CONNECT_TIMEOUT_S = 30.0  # the longest connecting to a Ray cluster may take before the job (or bench) gives up
RAY_RETRY_AFTER_S = 120.0  # how long an address that did not answer within RAY_CONNECT_TIMEOUT_S is not tried again
CHILD_GRACE_S = 5.0  # how long after the bound a connect check whose parent is gone ends itself
UNREACHABLE_HINT = (f"check that the cluster is up and the address right, or unset ${RAY_ADDRESS_ENV} (drop --ray) "
                    "to run the points in this process.")


def connect_ray(address: str, import_paths: Sequence[str] = ()):
    """The ray module, connected to `address` (`local`: a Ray started by this process on this
    machine). Workers of a local Ray import spap_core (and `import_paths`) from this checkout; a
    cluster's workers must have them installed.

    A cluster that cannot be reached fails within RAY_CONNECT_TIMEOUT_S, in one line (a
    SourceUnavailableError, or SpapInputError for an address Ray cannot parse): ray.init itself
    retries an address that does not answer for many minutes, printing warnings, and cannot be
    interrupted, which in the app would hold the one job worker and stall every session's queue.
    So ray.init runs here only once the address has answered twice within the bound: a TCP connect
    (a port nothing listens on is refused at once) and a ray.init in a child process with this
    process's settings, killed at the bound, whose warnings are captured rather than printed
    (_check_ray_answers). The child's connect shows on the cluster as a job that ends at once.

    An address that did not answer within the bound is not tried again for RAY_RETRY_AFTER_S: the
    jobs in that time fail at once, saying when it was tried and when it will be again, instead of
    each holding the queue for the bound; one that refused or failed at once is tried again by the
    next job, as that costs nothing. A failed ray.init is shut down, so the next attempt starts clean."""
    try:
        import ray
    except ImportError:
        raise SourceUnavailableError(f"Ray is not installed: pip install -r requirements-ray.txt, or unset "
                                     f"${RAY_ADDRESS_ENV} (drop --ray) to run the points in this process.") from None
    if tuple(int(part) for part in ray.__version__.split(".")[:2]) < MIN_RAY:  # a cluster runs this version too
        raise SourceUnavailableError(f"Ray {ray.__version__} is too old: Cancel needs Ray "
                                     f"{'.'.join(map(str, MIN_RAY))} or later (pip install -r requirements-ray.txt).")
    with _connect_lock:
        if ray.is_initialized():
            return ray
        if address != LOCAL:
            _check_ray_answers(address)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (here, *import_paths, os.environ.get("PYTHONPATH")) if p)
        try:
            ray.init(address=None if address == LOCAL else address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            ray.shutdown()
            raise SourceUnavailableError(f"The Ray cluster at {address} cannot be reached: {_one_line(exc)}") from None
    return ray


class _NoAnswer(Exception):
    """The address did not answer within RAY_CONNECT_TIMEOUT_S."""


_connect_lock = threading.Lock()
_unanswered: dict[str, float] = {}  # address → time.monotonic() when it last did not answer within the bound

# ray.init in a child process: exit 0 once connected, else the reason on the last line of stdout (the
# last line of the cause Ray wraps, such as a missing auth token) and exit 2 where Ray refused the
# address itself, 1 for anything else. A child whose parent died before killing it ends itself
# (faulthandler's watchdog ends a process stuck in Ray's C++ as well).
_RAY_INIT_CHECK = """
import faulthandler
import os
import sys
faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True, file=open(os.devnull, "w"))
import ray
try:
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
except Exception as exc:
    said = str(exc.__cause__ or exc).strip().splitlines()
    print(said[-1] if said else type(exc).__name__)
    sys.exit(2 if isinstance(exc, ValueError) else 1)
"""


def _check_ray_answers(address: str) -> None:
    """Return once a Ray at `address` answers; raise the one-line error of why not, within
    RAY_CONNECT_TIMEOUT_S (at once for an address that did not answer in the last RAY_RETRY_AFTER_S)."""
    bound = RAY_CONNECT_TIMEOUT_S
    ago = time.monotonic() - _unanswered.get(address, -math.inf)
    if ago < RAY_RETRY_AFTER_S:
        raise SourceUnavailableError(f"Ray at {address} did not answer within {bound:g} s when tried {ago:.0f} s ago, "
                                     f"and is not tried again for {RAY_RETRY_AFTER_S - ago:.0f} s; {UNREACHABLE_HINT}")
    deadline = time.monotonic() + bound
    try:
        endpoint = _host_and_port(address)
        if endpoint is not None:
            _check_tcp_answers(address, *endpoint, timeout_s=bound)
        _check_ray_init(address, timeout_s=max(0.0, deadline - time.monotonic()))
    except _NoAnswer:
        _unanswered[address] = time.monotonic()
        raise SourceUnavailableError(f"Ray at {address} did not answer within {bound:g} s; "
                                     f"{UNREACHABLE_HINT}") from None
    _unanswered.pop(address, None)


def _host_and_port(address: str) -> tuple[str, int] | None:
    """The host and port of `host:port` or `ray://host:port` (an IPv6 host in brackets), else None
    (such as `auto`: Ray finds the cluster itself, and says so where the address is malformed)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_tcp_answers(address: str, host: str, port: int, timeout_s: float) -> None:
    """Raise why nothing accepts a TCP connection at host:port: refused or unknown at once,
    _NoAnswer after `timeout_s` (the connect runs on a thread of its own, so a name lookup that
    hangs is bounded as well)."""
    why: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            why.append(None)
        except socket.gaierror:
            why.append(f"{host} is not a known host name")
        except ConnectionRefusedError:
            why.append(f"nothing listens on port {port} there")
        except TimeoutError:  # `why` stays empty: no answer
            pass
        except OSError as exc:
            why.append(exc.strerror or type(exc).__name__)

    thread = threading.Thread(target=connect, name="spap-ray-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not why:
        raise _NoAnswer
    if why[0] is not None:
        raise SourceUnavailableError(f"Ray at {address} cannot be reached ({why[0]}); {UNREACHABLE_HINT}")


def _check_ray_init(address: str, timeout_s: float) -> None:
    """Raise why ray.init in a child process does not connect to `address` within `timeout_s`
    (_NoAnswer: it was killed then). Something may accept TCP and never speak Ray, or Ray may
    connect elsewhere than the address reads (it replaces 127.0.0.1 by this machine's address), and
    ray.init would then retry for many minutes; a child is killed at the bound, and its output
    (Ray's warnings) is captured, never shown."""
    try:
        child = subprocess.run([sys.executable, "-c", _RAY_INIT_CHECK, address, str(timeout_s + CHILD_GRACE_S)],
                               capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                               check=False)
    except subprocess.TimeoutExpired:
        raise _NoAnswer from None
    if child.returncode == 0:
        return
    said = (child.stdout.strip().splitlines() or child.stderr.strip().splitlines() or
            [f"exit status {child.returncode}"])[-1]
    if child.returncode == 2:
        raise SpapInputError(f"{address} is not an address of Ray ({_one_line(said)}): give host:port of the "
                             f"cluster's head, ray://host:port, or {LOCAL}.")
    raise SourceUnavailableError(f"Ray at {address} cannot be reached: {_one_line(said)}")


def _one_line(text: object) -> str:
    """An error message as one line of at most 300 characters."""
    return " ".join(str(text).split())[:300]


def worker_pool(ray, worker_class: type, arguments: tuple, count: int | None = None) -> list:
    """Actors of `worker_class(*arguments)`, each asking Ray for what one point needs: one GPU where
    the cluster has GPUs (one actor per GPU), else $SPAP_RAY_CPUS_PER_WORKER CPU threads (1 by
    default; as many actors as fit). `count` caps how many. Each actor has a second thread, so
    it answers `progress` while its point runs, and a threaded actor's running call sees a
    `ray.cancel`."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        options, fits = {"num_gpus": 1}, gpus
    else:
        threads = int(os.environ.get(RAY_CPUS_PER_WORKER_ENV, "1"))
        options, fits = {"num_cpus": threads}, max(1, int(resources.get("CPU", 1)) // threads)
    actor = ray.remote(max_concurrency=2, **options)(worker_class)
    return [actor.remote(*arguments) for _ in range(fits if count is None else min(count, fits))]


def worker_device() -> str:
    """Inside an actor: the GPU Ray gave it, else the CPU with the threads it was given."""
    import ray

    if ray.get_gpu_ids():
        return "cuda"
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.environ.get(RAY_CPUS_PER_WORKER_ENV, "1"))
    torch.set_num_threads(max(1, threads))
    return "cpu"


def pool_map(ray, workers: list, method: str, calls: list[tuple], cancel: threading.Event | None = None,
             on_lost: Callable[[object], None] | None = None,
             on_progress: Callable[[int, JobProgress], None] | None = None
             ) -> Iterator[tuple[int, Any, str | None]]:
    """Each call (the arguments of `method`) to the next idle worker, one at a time per worker,
    yielding (index, result, None) as calls finish, or (index, None, why) for a call that failed:
    its worker died (that worker gets no more calls; `on_lost` hears of it) or the call raised.

    With `on_progress`, the busy workers are asked for their `progress()` about once a second and
    it hears (index, snapshot). Setting `cancel` cancels the busy calls (a call that reads
    RayCancelFlag stops at its next check) and raises PruningCancelled once they have ended; the
    worker of one that has not within CANCEL_GRACE_S is killed."""
    queue, idle = list(range(len(calls))), list(workers)
    pending: dict[Any, tuple[int, Any]] = {}  # calls on their way back (Ray object refs), with their index and worker
    asked: dict[Any, int] = {}  # progress requests on their way back, with the call they ask about
    asked_at = 0.0
    while queue or pending:
        if cancel is not None and cancel.is_set():
            _cancel(ray, pending, on_lost)
        while queue and idle:
            worker, index = idle.pop(), queue.pop(0)
            pending[getattr(worker, method).remote(*calls[index])] = (index, worker)
        if not pending:  # every worker died: the remaining calls cannot run
            for index in queue:
                yield index, None, "no Ray worker is left to run it"
            return
        if on_progress is not None and time.monotonic() - asked_at >= PROGRESS_POLL_S:
            waiting = set(asked.values())
            asked.update({worker.progress.remote(): index for index, worker in pending.values()
                          if index not in waiting})
            asked_at = time.monotonic()
        ready, _ = ray.wait([*pending, *asked], num_returns=1, timeout=WAIT_POLL_S)
        for task in ready:
            if task in asked:
                index = asked.pop(task)
                try:
                    snapshot = ray.get(task)
                except ray.exceptions.RayError:  # its worker died: the call itself will say so
                    continue
                if on_progress is not None and any(index == running for running, _ in pending.values()):
                    on_progress(index, snapshot)
                continue
            index, worker = pending.pop(task)
            try:
                result = ray.get(task)
            except ray.exceptions.RayActorError as exc:  # the worker process died
                if on_lost is not None:
                    on_lost(worker)
                yield index, None, f"its Ray worker died ({type(exc).__name__})"
                continue
            except ray.exceptions.RayTaskError as exc:  # the call itself raised (bad settings, NaN, ...)
                cause = exc.cause if exc.cause is not None else exc
                idle.append(worker)
                yield index, None, (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
                continue
            idle.append(worker)
            yield index, result, None


def _cancel(ray, pending: dict, on_lost: Callable[[object], None] | None) -> None:
    """Cancel the busy workers' calls (each stops at its next check of RayCancelFlag), kill the
    workers of those that have not ended within CANCEL_GRACE_S, and raise PruningCancelled."""
    for task in pending:
        ray.cancel(task)
    _, late = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S) if pending else ([], [])
    for task in late:
        _, worker = pending[task]
        ray.kill(worker)
        if on_lost is not None:
            on_lost(worker)
    raise PruningCancelled("cancelled while Ray ran the points")


class RayCancelFlag:
    """The cancel flag of the Ray call running in this thread, read where spap_core reads a
    threading.Event's is_set(): Ray (2.54 and later) flags a threaded actor's running call that
    `ray.cancel` was called on."""

    def is_set(self) -> bool:
        import ray

        return ray.get_runtime_context().is_canceled()


def ray_cancel_flag() -> threading.Event:
    """A RayCancelFlag where a cancel flag is expected: spap_core types its `cancel` parameters
    threading.Event but only ever calls their is_set()."""
    return cast(threading.Event, RayCancelFlag())
