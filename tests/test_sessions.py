"""What a browser keeps on the server across page loads: its values by id, the least recently
used browser dropped first when there are too many, an idle one dropped after its time, and ids
that cannot be guessed."""

import pytest

import spap_service.sessions as sessions
from spap_core.errors import SpapInputError
from spap_service.sessions import BrowserSessions, is_session_id, new_session_id


def test_a_browser_gets_its_values_back_and_the_least_recently_used_goes_first():
    kept = BrowserSessions(max_sessions=2, idle_seconds=3600)
    kept.state("a")["run"] = 1
    kept.state("b")["run"] = 2
    assert kept.state("a")["run"] == 1  # a is now the most recently used
    kept.state("c")["run"] = 3  # three browsers: b, the least recently used, is forgotten
    assert kept.state("a")["run"] == 1 and kept.state("c")["run"] == 3
    assert kept.state("b") == {}


def test_an_idle_browser_is_forgotten(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: now[0])
    kept = BrowserSessions(max_sessions=8, idle_seconds=60)
    kept.state("a")["run"] = 1
    now[0] += 30
    assert kept.state("a")["run"] == 1  # used again, so its clock starts again
    now[0] += 61
    kept.state("b")
    assert kept.state("a") == {}


def test_ids_are_random_and_only_well_formed_ones_are_taken():
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_session_id(value) for value in ids)
    for forged in ("", "../../etc", "0" * 23, "g" * 24, None, 12):
        assert not is_session_id(forged)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "many"])
def test_a_bad_limit_is_refused_by_name(monkeypatch, value):
    monkeypatch.setattr(sessions, "_sessions", None)
    monkeypatch.setenv(sessions.MAX_SESSIONS_ENV, value)
    with pytest.raises(SpapInputError, match=f"{sessions.MAX_SESSIONS_ENV} must be a positive number"):
        sessions.browser_sessions()
    monkeypatch.setattr(sessions, "_sessions", None)
