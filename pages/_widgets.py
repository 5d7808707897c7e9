"""Form widgets generated from the hyperparameter declarations (spap_core.parameters): one widget
per parameter, keyed and bound to the URL by its key, so the Run form, its share link and the
settings summary can never disagree about a name, a range or a default."""

from __future__ import annotations

from typing import Any

import streamlit as st

from spap_core.errors import SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.parameters import BY_KEY, Parameter

URL = "query-params"  # a widget bound to the query parameter named by its key makes a setting shareable


def parameter_widget(parameter: Parameter, default: Any) -> Any:
    """The widget that fits the parameter (checkbox, select box, slider or number box) with its
    caption; returns the chosen value."""
    key, label = parameter.key, parameter.label
    if parameter.kind is bool:
        value = st.checkbox(label, bool(default), key=key, bind=URL)
    elif parameter.choices:
        value = st.selectbox(label, list(parameter.choices), index=parameter.choices.index(default), key=key,
                             bind=URL)
    elif parameter.slider:
        number = parameter.kind
        value = st.slider(label, number(parameter.low), number(parameter.high), number(default),
                          number(parameter.step), key=key, bind=URL)
    elif parameter.kind is int:
        value = st.number_input(label, int(parameter.low), int(parameter.high), int(default), key=key, bind=URL)
    else:
        value = st.number_input(label, float(parameter.low), float(parameter.high), float(default),
                                step=float(parameter.step), format="%g", key=key, bind=URL)
    st.caption(parameter.help)
    return value


def bounded_number(parameter: Parameter, default: int, key: str, label: str | None = None, container: Any = st) -> int:
    """A whole-number box (not bound to the URL) whose range is the parameter's declared one, the
    same the CLI and the share link enforce."""
    return container.number_input(label or parameter.label, int(parameter.low), int(parameter.high), int(default),
                                  key=key)


def ignored_url_parameters(params: dict[str, str], known: set[str], form: tuple[Parameter, ...]) -> list[str]:
    """Which query parameters a link carried that the page's `form` cannot take, each with the
    reason: Streamlit drops an invalid bound value silently, and a key of another method's setting
    has no widget here, so this says what was ignored and why."""
    on_form = {declared.key for declared in form}
    problems = []
    for key, raw in params.items():
        if key in known:
            continue
        if key not in on_form:
            owner = BY_KEY[key].method if key in BY_KEY else None
            problems.append(f"`{key}`: " + (f"a setting of method {owner}, not of this page" if owner
                                            else "not a setting of this page"))
            continue
        declared = BY_KEY[key]
        try:
            value = declared.coerce(raw)  # with the declared range
            if declared.path:
                declared.apply(PruneSettings(method=declared.method or "spap"), value)
        except SpapInputError as exc:
            problems.append(f"`{key}={raw[:40]}`: {str(exc).rstrip('.')}")
    return problems
