"""What a browser keeps on the server across page loads: ids only the server issues (a forged one
is never adopted), sessions that end by idle time only (never because others arrive), a class of
hundreds of browsers with bounded memory (pruned weights past the few in memory wait on disk), the
HttpOnly cookie of serve.py, and a queue that no number of fresh sessions can fill."""

import asyncio
import os
import stat
import threading

import numpy as np
import pytest
import torch

import spap_service.sessions as sessions
from spap_core.errors import SpapInputError
from spap_service.jobs import JobQueue, QueueFull
from spap_service.limits import MAX_QUEUED_JOBS_ENV, server_limits
from spap_service.sessions import (
    BrowserSessions,
    SessionCookieMiddleware,
    is_session_id,
    new_session_id,
    owner_tag,
    server_key,
)

KEY = b"k" * 32


class FakeWeights:
    """A kept value with weights that can go to disk (what RunOutcome does with a pruned model)."""

    def __init__(self, size: int = 1000) -> None:
        self.weights: np.ndarray | None = np.arange(size, dtype=np.float32)
        self.spilled_to = None

    @property
    def in_memory(self) -> bool:
        return self.weights is not None

    def spill(self, folder) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "weights.npy", self.weights)
        self.spilled_to, self.weights = folder, None


def registry(tmp_path, **settings) -> BrowserSessions:
    return BrowserSessions(**{"max_sessions": 1000, "idle_seconds": 3600, "spill_root": tmp_path, **settings})


def test_a_browser_gets_its_values_back_and_no_newcomer_pushes_it_out(tmp_path):
    kept = registry(tmp_path, max_sessions=3)
    kept.state("a")["run"] = 1
    for newcomer in ("b", "c"):
        kept.state(newcomer)["run"] = 2
    assert kept.state("d") is None  # full: the newcomer keeps its values in its own page load
    assert kept.state("a")["run"] == 1 and kept.state("b")["run"] == 2 and len(kept) == 3


def test_an_idle_browser_is_forgotten_with_its_weights_on_disk(monkeypatch, tmp_path):
    now = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: now[0])
    kept = registry(tmp_path, idle_seconds=60, models_in_memory=0)
    kept.state("a")["latest_run"] = weights = FakeWeights()
    kept.state("a")
    assert weights.spilled_to is not None and weights.spilled_to.is_dir()
    now[0] += 30
    assert kept.state("a")["latest_run"] is weights  # used again, so its clock starts again
    now[0] += 61
    kept.state("b")
    assert kept.state("a") == {} and not weights.spilled_to.exists()


def test_a_class_of_250_browsers_keeps_every_session_with_a_few_models_in_memory(tmp_path):
    kept = registry(tmp_path, models_in_memory=4)
    held = {}
    for student in range(250):
        held[student] = kept.state(f"s{student}")["latest_run"] = FakeWeights()
        kept.state(f"s{student}")
    assert len(kept) == 250
    in_memory = [student for student, weights in held.items() if weights.in_memory]
    assert in_memory == [246, 247, 248, 249]  # the most recently active ones
    np.testing.assert_array_equal(np.load(held[0].spilled_to / "weights.npy"), np.arange(1000))
    assert kept.state("s0")["latest_run"] is held[0]  # the session is intact, its weights on disk


def test_ids_are_issued_and_signed_by_the_server_and_a_forged_one_is_refused():
    ids = {new_session_id(KEY) for _ in range(100)}
    assert len(ids) == 100 and all(is_session_id(value, KEY) for value in ids)
    token = next(iter(ids)).split(".")[0]
    assert len(sessions.base64.urlsafe_b64decode(token + "==")) * 8 >= 128
    forged = ["0" * 24, "a" * 24, "", None, 12, "../../etc", f"{token}.{'A' * 22}", next(iter(ids)) + "x",
              new_session_id(b"another server's key")]
    assert not any(is_session_id(value, KEY) for value in forged)


def test_a_saved_run_names_its_owner_by_a_digest_that_does_not_open_the_session():
    session_id = new_session_id(KEY)
    tag = owner_tag(session_id)
    assert tag == owner_tag(session_id) and session_id not in tag and not is_session_id(tag, KEY)


def test_the_signing_key_is_made_once_private_and_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sessions, "_key", None)
    first = server_key()
    monkeypatch.setattr(sessions, "_key", None)
    assert server_key() == first and len(first) == 32
    assert stat.S_IMODE(os.stat(tmp_path / sessions.KEY_FILE).st_mode) == 0o600
    monkeypatch.setattr(sessions, "_key", None)


def asgi_response(cookie: str | None, accept: bytes = b"text/html,application/xhtml+xml,*/*;q=0.8",
                  status: int = 200) -> list[tuple[bytes, bytes]]:
    """The headers SessionCookieMiddleware sends for one request (a fake app answering it)."""
    async def page(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"<html></html>"})

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"accept", accept)]
    if cookie is not None:
        headers.append((b"cookie", f"other=1; spap_session={cookie}".encode()))
    scope = {"type": "http", "scheme": "http", "headers": headers}
    asyncio.run(SessionCookieMiddleware(page)(scope, None, send))
    return sent[0]["headers"]


def set_cookies(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [value.decode() for name, value in headers if name == b"set-cookie"]


def test_serve_py_hands_out_the_id_as_an_httponly_samesite_cookie_with_the_page():
    [issued] = set_cookies(asgi_response(None))
    assert issued.startswith("spap_session=") and "; HttpOnly" in issued and "; SameSite=Lax" in issued
    session_id = issued.split(";")[0].split("=", 1)[1]
    assert is_session_id(session_id)
    assert set_cookies(asgi_response(session_id)) == []  # a valid id is kept
    [replaced] = set_cookies(asgi_response("0" * 24))  # one this server never issued is replaced
    assert replaced.split(";")[0] != "spap_session=" + "0" * 24
    assert set_cookies(asgi_response(None, accept=b"*/*")) == []  # assets hand out none
    assert len(set_cookies(asgi_response("0" * 24, status=304))) == 1  # a page the browser had cached too


def test_no_number_of_fresh_sessions_fills_the_queue(monkeypatch):
    queue = JobQueue(max_waiting=3)
    started, release = threading.Event(), threading.Event()
    queue.submit(lambda progress, cancel: (started.set(), release.wait(30)), owner="first", label="running")
    assert started.wait(30)
    waiting = [queue.submit(lambda progress, cancel: None, owner=f"fresh-{i}", label="w") for i in range(3)]
    with pytest.raises(QueueFull, match="queue is full"):
        queue.submit(lambda progress, cancel: None, owner="yet another fresh session", label="one too many")
    release.set()
    assert all(queue.wait(job, 30) for job in waiting)
    queue.shutdown(5)
    monkeypatch.delenv(MAX_QUEUED_JOBS_ENV, raising=False)
    limits = server_limits()
    assert limits.max_queued_jobs == 100 and "100 jobs waiting in its queue" in limits.describe()


def test_a_pruned_model_goes_to_disk_and_comes_back_the_same(tiny, text_files, tmp_path):
    from spap_core.methods.registry import PruneSettings
    from spap_service.data import DataSpec, TextChoice
    from spap_service.jobs import ProgressReporter
    from spap_service.runs import RunRequest, run_pruning

    data = DataSpec(calibration=TextChoice(kind="file", path=str(text_files["calib"])),
                    evaluation=TextChoice(kind="file", path=str(text_files["eval"])), nsamples=4, seqlen=32,
                    eval_windows=2, eval_len=32, batch_size=2)
    outcome = run_pruning(tiny, RunRequest(PruneSettings(method="magnitude", sparsity=0.25), 0, data),
                          ProgressReporter(), threading.Event(), save=False)
    ids = torch.arange(20).reshape(1, 20)
    with torch.no_grad():
        before = outcome.result.model(ids).logits
    outcome.spill(tmp_path / "spilled")
    assert not outcome.in_memory and outcome.has_model and outcome.result.model is None
    with torch.no_grad():
        after = outcome.pruned_model()(ids).logits
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "many"])
def test_a_bad_limit_is_refused_by_name(monkeypatch, value):
    monkeypatch.setattr(sessions, "_sessions", None)
    monkeypatch.setenv(sessions.MAX_SESSIONS_ENV, value)
    with pytest.raises(SpapInputError, match=f"{sessions.MAX_SESSIONS_ENV} must be a positive number"):
        sessions.browser_sessions()
    monkeypatch.setattr(sessions, "_sessions", None)


def test_a_browser_past_the_cap_still_gets_a_working_page_and_is_told(app_files, monkeypatch, tmp_path):
    from app_harness import open_page, start_app

    full = BrowserSessions(max_sessions=1, idle_seconds=3600, spill_root=tmp_path)
    full.state("a student already here")["latest_run"] = "theirs"
    monkeypatch.setattr(sessions, "_sessions", full)
    at = start_app()
    assert any("lasts until this page is reloaded" in caption.value for caption in at.sidebar.caption)
    open_page(at, "run_spap")
    assert at.slider(key="sparsity").value > 0
    assert full.state("a student already here") == {"latest_run": "theirs"} and len(full) == 1
