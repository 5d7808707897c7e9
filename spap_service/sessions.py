"""What a browser session keeps on the server, by the session's id, so that reloading the page
finds it again: its jobs (a running one with its progress and Cancel), its latest run with the
pruned weights, its saved runs' ownership and its settings. Streamlit's own session state lives only
as long as one page load; this registry outlives it, bounded in number and time, so a class of
browsers cannot pile up pruned models forever."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import OrderedDict

from spap_core.errors import SpapInputError

MAX_SESSIONS_ENV = "SPAP_MAX_SESSIONS"
SESSION_IDLE_HOURS_ENV = "SPAP_SESSION_IDLE_HOURS"
DEFAULT_MAX_SESSIONS = 32  # each may hold one pruned model (about 0.5 GB for SmolLM2 in float32)
DEFAULT_IDLE_HOURS = 4.0
# An id is 24 random hex digits (96 bits): unguessable, so knowing one's own id reveals no other.
ID_PATTERN = re.compile(r"[0-9a-f]{24}")


def new_session_id() -> str:
    return secrets.token_hex(12)


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


class BrowserSessions:
    """Each session's kept values by id, least recently used dropped first once there are more than
    `max_sessions`, and any session idle for `idle_seconds` dropped with them."""

    def __init__(self, max_sessions: int, idle_seconds: float) -> None:
        self.max_sessions, self.idle_seconds = max_sessions, idle_seconds
        self._kept: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, session_id: str) -> dict:
        """The kept values of `session_id` (an empty dict for a new one), marked as used now."""
        now = time.monotonic()
        with self._lock:
            _, values = self._kept.pop(session_id, (now, {}))
            self._kept[session_id] = (now, values)
            while self._kept and (len(self._kept) > self.max_sessions
                                  or now - next(iter(self._kept.values()))[0] > self.idle_seconds):
                self._kept.popitem(last=False)
            return values

    def describe(self) -> str:
        hours = self.idle_seconds / 3600
        return (f"The server keeps a browser's jobs, latest run and pruned weights across reloads for {hours:g} h "
                f"after its last visit, for the {self.max_sessions} most recently active browsers.")


_sessions: BrowserSessions | None = None
_sessions_lock = threading.Lock()


def browser_sessions() -> BrowserSessions:
    """The one registry of this server process (sized by SPAP_MAX_SESSIONS and SPAP_SESSION_IDLE_HOURS)."""
    global _sessions
    with _sessions_lock:
        if _sessions is None:
            _sessions = BrowserSessions(int(_positive(MAX_SESSIONS_ENV, DEFAULT_MAX_SESSIONS)),
                                        3600 * _positive(SESSION_IDLE_HOURS_ENV, DEFAULT_IDLE_HOURS))
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
