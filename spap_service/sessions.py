"""What a browser session keeps on the server, by the session's id, so that reloading the page
finds it again: its jobs (a running one with its progress and Cancel), its latest run with the
pruned weights, its saved runs' ownership and its settings. Streamlit's own session state lives only
as long as one page load; this registry outlives it.

A class of 40 to 200 browsers on one server must never lose a session because others arrive, and a
visitor without cookies must not be able to push anyone out. So:

- the server issues every id (`new_session_id`): 128 random bits from `secrets` and a signature
  made with this server's key, so an id it did not issue (a forged cookie, 24 zeros) fails
  `is_session_id` and is replaced, never adopted;
- a session ends by idle time only (SPAP_SESSION_IDLE_HOURS, 4 h by default), never because newer
  ones arrive; past SPAP_MAX_SESSIONS kept sessions (1000 by default) a new browser still works, but
  its state is not kept across reloads (`state` hands it a dict of its own), and the page says so;
- what one session keeps is bounded: a kept value that can be large releases its weights to disk
  through `Spillable` once more than SPAP_MODELS_IN_MEMORY sessions (4 by default) hold weights in
  memory, least recently active first, and its files go with the session when it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

from spap_core.errors import SpapInputError
from spap_core.system.cache import cache_root

MAX_SESSIONS_ENV = "SPAP_MAX_SESSIONS"
SESSION_IDLE_HOURS_ENV = "SPAP_SESSION_IDLE_HOURS"
MODELS_IN_MEMORY_ENV = "SPAP_MODELS_IN_MEMORY"
DEFAULT_MAX_SESSIONS = 1000  # a few kB each without weights; weights beyond the few in memory go to disk
DEFAULT_IDLE_HOURS = 4.0
DEFAULT_MODELS_IN_MEMORY = 4  # about 0.4 GB each for a pruned SmolLM2 in float32
ID_BYTES, SIGNATURE_BYTES = 16, 16  # 128 random bits, and a 128-bit signature of them
KEY_FILE = "session-key"  # this server's signing key, under the cache folder, readable by its owner only
SESSION_COOKIE = "spap_session"
COOKIE_DAYS = 30


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signature(token: str, key: bytes) -> str:
    return _encode(hmac.new(key, token.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES])


def new_session_id(key: bytes | None = None) -> str:
    """A fresh id this server vouches for: a random token and its signature, cookie-safe."""
    token = _encode(secrets.token_bytes(ID_BYTES))
    return f"{token}.{_signature(token, key or server_key())}"


def is_session_id(value: object, key: bytes | None = None) -> bool:
    """Whether `value` is an id this server issued (its signature checks out)."""
    if not isinstance(value, str) or len(value) > 100 or value.count(".") != 1:
        return False
    token, signature = value.split(".")
    return len(token) >= 22 and hmac.compare_digest(signature, _signature(token, key or server_key()))


def owner_tag(session_id: str) -> str:
    """What a saved run records as its owner: a one-way digest of the session id, so a record that
    others can read (a shared run, its JSON download) never reveals an id that would open the session."""
    return hashlib.sha256(f"spap-owner:{session_id}".encode()).hexdigest()[:32]


_key: bytes | None = None
_key_lock = threading.Lock()


def server_key() -> bytes:
    """This server's signing key: read from the cache folder, or made there once (written to a
    private file beside it and renamed, so two processes starting together agree on one key).
    Kept across restarts, so a browser's saved runs stay its own."""
    global _key
    with _key_lock:
        if _key is None:
            file = cache_root() / KEY_FILE
            if not file.is_file():
                file.parent.mkdir(parents=True, exist_ok=True)
                partial = file.with_name(f".{KEY_FILE}.{secrets.token_hex(8)}")
                descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(secrets.token_bytes(32))
                try:
                    os.link(partial, file)  # fails if another process made it first: theirs is kept
                except FileExistsError:
                    pass
                finally:
                    partial.unlink()
            _key = file.read_bytes()
        return _key


@runtime_checkable
class Spillable(Protocol):
    """A kept value whose weights can leave memory: `in_memory` says whether they are there, `spill`
    writes them under a folder and drops them (a later read loads them back)."""

    @property
    def in_memory(self) -> bool: ...

    def spill(self, folder: Path) -> None: ...


def session_cookie(session_id: str, *, http_only: bool, secure: bool = False) -> str:
    """The Set-Cookie value that hands a browser its id: every path, 30 days, SameSite=Lax."""
    attributes = ["Path=/", f"Max-Age={COOKIE_DAYS * 86400}", "SameSite=Lax"]
    return "; ".join([f"{SESSION_COOKIE}={session_id}", *attributes, *(["HttpOnly"] if http_only else []),
                      *(["Secure"] if secure else [])])


class SessionCookieMiddleware:
    """ASGI middleware (serve.py) that issues the session cookie with the page: the answer to a page
    request (the browser asks for HTML) without a valid id (none, or one this server did not sign)
    carries a new one, HttpOnly and SameSite=Lax (and Secure over HTTPS), a "not modified" answer
    included. The assets a page loads at the same moment do not hand out ids of their own."""

    def __init__(self, app) -> None:  # noqa: ANN001 (any ASGI app)
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 (the ASGI interface)
        if (scope["type"] != "http" or b"text/html" not in (_header(scope, b"accept") or b"")
                or is_session_id(_cookie(scope, SESSION_COOKIE))):
            await self.app(scope, receive, send)
            return
        cookie = session_cookie(new_session_id(), http_only=True, secure=scope.get("scheme") == "https")

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _header(scope: dict, name: bytes) -> bytes | None:
    """The value of header `name` (lower case) of an ASGI request, if it has one."""
    return next((value for header, value in scope.get("headers", []) if header.lower() == name), None)


def _cookie(scope: dict, name: str) -> str | None:
    """The value of cookie `name` in an ASGI request's headers, if it has one."""
    for pair in (_header(scope, b"cookie") or b"").decode("latin-1").split(";"):
        key, _, found = pair.strip().partition("=")
        if key == name:
            return found
    return None


class BrowserSessions:
    """Each session's kept values by id. A session idle for `idle_seconds` is dropped (with its
    spilled weights); at most `max_sessions` are kept; at most `models_in_memory` hold weights in
    memory, the others' weights wait on disk under `spill_root`."""

    def __init__(self, max_sessions: int, idle_seconds: float, models_in_memory: int = DEFAULT_MODELS_IN_MEMORY,
                 spill_root: Path | None = None) -> None:
        self.max_sessions, self.idle_seconds, self.models_in_memory = max_sessions, idle_seconds, models_in_memory
        self.spill_root = spill_root or cache_root() / "sessions"
        self._kept: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def state(self, session_id: str) -> dict | None:
        """The kept values of `session_id` (an empty dict for a new one), marked as used now; None
        for a new session while `max_sessions` are kept (it keeps its values in its page load)."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if session_id not in self._kept and len(self._kept) >= self.max_sessions:
                return None
            _, values = self._kept.pop(session_id, (now, {}))
            self._kept[session_id] = (now, values)
            to_spill = self._over_memory()
        for folder_id, value in to_spill:  # slow (writes weights): outside the lock
            value.spill(self._spill_folder(folder_id))
        return values

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def describe(self) -> str:
        """What the registry promises, from its settings."""
        hours = self.idle_seconds / 3600
        return (f"The server keeps a browser's jobs, latest run and pruned weights across reloads until it has been "
                f"idle for {hours:g} h; the pruned weights of all but the {self.models_in_memory} most recently active "
                f"browsers wait on the server's disk meanwhile.")

    def _expire(self, now: float) -> None:
        """Drop the sessions idle past their time, oldest first; caller holds the lock."""
        while self._kept and now - next(iter(self._kept.values()))[0] > self.idle_seconds:
            session_id, _ = self._kept.popitem(last=False)
            shutil.rmtree(self._spill_folder(session_id), ignore_errors=True)

    def _over_memory(self) -> list[tuple[str, Spillable]]:
        """The in-memory weights past the `models_in_memory` most recently used; caller holds the lock."""
        holding = [(session_id, value) for session_id, (_, values) in reversed(self._kept.items())
                   for value in values.values() if isinstance(value, Spillable) and value.in_memory]
        return holding[self.models_in_memory:]

    def _spill_folder(self, session_id: str) -> Path:
        return self.spill_root / owner_tag(session_id)


_sessions: BrowserSessions | None = None
_sessions_lock = threading.Lock()


def browser_sessions() -> BrowserSessions:
    """The one registry of this server process (sized by SPAP_MAX_SESSIONS, SPAP_SESSION_IDLE_HOURS
    and SPAP_MODELS_IN_MEMORY)."""
    global _sessions
    with _sessions_lock:
        if _sessions is None:
            _sessions = BrowserSessions(int(_positive(MAX_SESSIONS_ENV, DEFAULT_MAX_SESSIONS)),
                                        3600 * _positive(SESSION_IDLE_HOURS_ENV, DEFAULT_IDLE_HOURS),
                                        int(_positive(MODELS_IN_MEMORY_ENV, DEFAULT_MODELS_IN_MEMORY)))
        return _sessions


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise SpapInputError(f"{name} must be a positive number (got {raw[:40]!r}).")
    return value
