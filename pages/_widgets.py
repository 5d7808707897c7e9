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
    caption; returns the chosen value. A value already in the session state (a loaded run's, put
    there by `fill_form`) wins over `default`, which is then not passed at all: Streamlit warns
    when a widget gets both."""
    key, label = parameter.key, parameter.label
    preset = key in st.session_state
    if parameter.kind is bool:
        value = st.checkbox(label, False if preset else bool(default), key=key, bind=URL)
    elif parameter.choices:
        index = 0 if preset else parameter.choices.index(default)
        value = st.selectbox(label, list(parameter.choices), index=index, key=key, bind=URL)
    elif parameter.slider:
        number = parameter.kind
        value = st.slider(label, number(parameter.low), number(parameter.high), None if preset else number(default),
                          number(parameter.step), key=key, bind=URL)
    elif parameter.kind is int:
        value = st.number_input(label, int(parameter.low), int(parameter.high), "min" if preset else int(default),
                                key=key, bind=URL)
    else:
        value = st.number_input(label, float(parameter.low), float(parameter.high),
                                "min" if preset else float(default), step=float(parameter.step), format="%g", key=key,
                                bind=URL)
    st.caption(parameter.help)
    return value


def unless_preset(key: str, default: Any, neutral: Any = None) -> Any:
    """A widget's default, or `neutral` (what Streamlit takes for "no default": None, or index 0)
    when its key already holds a value (restored with the chart it belongs to): a widget given both
    makes Streamlit warn, and the kept value wins anyway."""
    return neutral if key in st.session_state else default


def fill_form(values: dict[str, Any], form: tuple[Parameter, ...]) -> None:
    """Put `values` (a run's settings by key) into the form's widgets before they are drawn, so the
    form shows the run it came with (a results link, a loaded saved run)."""
    for declared in form:
        if declared.key in values:
            st.session_state[declared.key] = values[declared.key]


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
