"""A bug on a page shows as a one-line summary instead of a traceback, which goes to the server log;
`guarded` gives fragments, which rerun on their own, the same protection app.py gives every page."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import streamlit as st

from pages._text import plain

LOG = logging.getLogger("spap_explorer")


def report_unexpected(exc: Exception, where: str) -> None:
    """A bug's one-line summary on the page instead of a traceback (which goes to the server log)."""
    LOG.error("%s failed", where, exc_info=exc)
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    st.error(f"Something unexpected went wrong ({type(exc).__name__}: {plain(first_line)}). Try other settings; "
             "the details are in the server log.", icon=":material/bug_report:")


def guarded(function: Callable) -> Callable:
    """For fragments: they rerun on their own, outside the page-level error handler in app.py."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # streamlit's rerun/stop are BaseExceptions and pass through
            report_unexpected(exc, function.__name__)
            return None

    return run
