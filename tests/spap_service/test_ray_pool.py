"""Connecting to a Ray cluster is bounded (spap_service.ray_pool.connect_ray): an address nothing
answers fails in one line that names it, without Ray's warnings on the terminal, an address that
never answers fails at the bound (lowered here to keep the tests quick) and is not waited for again
by the next jobs, the job queue goes on with the other sessions' jobs, and a live cluster still
connects after a failure. All on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import ray

from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_service import executors, ray_pool
from spap_service.executors import RayExecutor
from spap_service.jobs import JobQueue, JobStatus
from spap_service.ray_pool import connect_ray

BOUND_S = 3.0  # RAY_CONNECT_TIMEOUT_S in these tests
WAIT_S = 120.0  # the longest a test waits for a job or for the cluster it starts
RAY_WARNINGS = ("Failed to connect to GCS", "rpc_client", "gcs_client")


@pytest.fixture(autouse=True)
def no_ray(monkeypatch) -> Iterator[None]:
    """No Ray connected and no address remembered as silent, before and after each test."""
    ray.shutdown()
    monkeypatch.setattr(ray_pool, "_unanswered", {})
    monkeypatch.setattr(ray_pool, "RAY_CONNECT_TIMEOUT_S", BOUND_S)
    yield
    ray.shutdown()


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on: bound to find a free one, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def assert_one_line_naming(error: BaseException, address: str) -> None:
    message = str(error)
    assert "\n" not in message and f"Ray at {address} " in message and "$SPAP_RAY_ADDRESS" in message


def test_a_port_nothing_listens_on_is_refused_in_one_line_without_rays_warnings(closed_port, capfd):
    address = f"127.0.0.1:{closed_port}"
    with pytest.raises(SourceUnavailableError, match="nothing listens on port") as refused:
        connect_ray(address)
    assert_one_line_naming(refused.value, address)
    assert not ray.is_initialized()
    printed = capfd.readouterr()
    assert not any(warning in printed.out + printed.err for warning in RAY_WARNINGS)


def test_a_port_that_never_answers_fails_at_the_bound_and_is_not_waited_for_again_at_once(silent_port, capfd,
                                                                                           monkeypatch):
    address = f"127.0.0.1:{silent_port}"
    with pytest.raises(SourceUnavailableError, match=f"did not answer within {BOUND_S:g} s;") as silent:
        connect_ray(address)
    assert_one_line_naming(silent.value, address)
    assert not ray.is_initialized()
    printed = capfd.readouterr()
    assert not any(warning in printed.out + printed.err for warning in RAY_WARNINGS)

    with pytest.raises(SourceUnavailableError, match=r"s ago, and is not tried again for \d+ s") as remembered:
        connect_ray(address)
    assert_one_line_naming(remembered.value, address)

    monkeypatch.setattr(ray_pool, "RAY_RETRY_AFTER_S", 0.0)  # the time to try it again has come
    with pytest.raises(SourceUnavailableError, match=f"did not answer within {BOUND_S:g} s;"):
        connect_ray(address)


def test_an_address_ray_cannot_parse_is_refused_as_input():
    with pytest.raises(SpapInputError, match="not an address is not an address of Ray") as refused:
        connect_ray("not an address")
    assert "\n" not in str(refused.value)


def test_a_job_whose_ray_never_answers_fails_in_one_line_and_the_queue_goes_on(silent_port, tiny, monkeypatch):
    """In the app the silent address costs one job the bound; the other session's job runs after
    it, and the same session's next job fails at once, saying when the address was tried."""
    address = f"127.0.0.1:{silent_port}"
    monkeypatch.setenv(ray_pool.RAY_ADDRESS_ENV, address)
    monkeypatch.setattr(executors, "_executor", None)
    queue = JobQueue()
    try:
        def sweep(progress, cancel):
            return executors.point_executor().measure(tiny, [], progress, cancel)

        first = queue.submit(sweep, owner="student-1", label="sweep")
        other = queue.submit(lambda progress, cancel: "ran", owner="student-2", label="other")
        again = queue.submit(sweep, owner="student-1", label="sweep again")
        for job in (first, other, again):
            assert queue.wait(job, WAIT_S)
        assert first.status is JobStatus.FAILED and f"did not answer within {BOUND_S:g} s;" in first.error
        assert_one_line_naming(SourceUnavailableError(first.error), address)
        assert other.status is JobStatus.DONE and other.result == "ran"
        assert again.status is JobStatus.FAILED and "s ago, and is not tried again for" in again.error
        assert isinstance(executors.point_executor(), RayExecutor)
    finally:
        queue.shutdown(WAIT_S)


@pytest.fixture()
def live_cluster() -> Iterator[str]:
    """The address of a one-CPU Ray that another process started, and shuts down when told to (its
    stdin closes). Without token authentication: this process would need the token mode set before
    Ray first read its settings (RAY_AUTH_MODE=token), as a client of such a cluster does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, ray; ray.init(num_cpus=1, include_dashboard=False); "
                                "print('GCS', ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        address = next((line.split()[1] for line in holder.stdout if line.startswith("GCS ")), None)
        assert address, "the process holding the Ray ended without its address"
        yield address
    finally:
        holder.stdin.close()
        try:
            holder.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def test_a_live_cluster_connects_after_an_address_that_failed(closed_port, live_cluster, monkeypatch):
    """A failed attempt leaves nothing behind that stops the next one, and the checks let a Ray
    that answers through."""
    monkeypatch.setattr(ray_pool, "RAY_CONNECT_TIMEOUT_S", WAIT_S)  # a slow CI machine still starts Ray in time
    with pytest.raises(SourceUnavailableError):
        connect_ray(f"127.0.0.1:{closed_port}")
    connected = connect_ray(live_cluster)
    assert connected.is_initialized() and connected.cluster_resources()["CPU"] == 1
