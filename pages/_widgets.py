"""Form widgets generated from the hyperparameter declarations (spap_core.pipeline.parameters): one widget
per parameter, keyed and bound to the URL by its key, so the Run form, its share link and the
settings summary can never disagree about a name, a range or a default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import streamlit as st

from pages._text import plain
from spap_core.errors import SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.parameters import BY_KEY, RECOVERY_PARAMETERS, Parameter, recovery_with_values

URL: Final = "query-params"  # a widget bound to the query parameter named by its key makes a setting shareable


def declared_range(parameter: Parameter) -> tuple[float, float, float]:
    """A numeric parameter's (low, high, step): every int or float one declares them
    (spap_core.pipeline.parameters), and its widget cannot be drawn without."""
    if parameter.low is None or parameter.high is None or parameter.step is None:
        raise ValueError(f"numeric parameter {parameter.key} declares no range or step")
    return parameter.low, parameter.high, parameter.step


def parameter_widget(parameter: Parameter, default: Any) -> Any:
    """The widget that fits the parameter (checkbox, select box, slider or number box) with its
    caption; returns the chosen value. A value already in the session state (a loaded run's, put
    there by `fill_form`) wins over `default`, which is then not passed at all: Streamlit warns
    when a widget gets both."""
    key, label = parameter.key, parameter.label
    preset = key in st.session_state
    value: bool | str | float
    if parameter.kind is bool:
        value = st.checkbox(label, False if preset else bool(default), key=key, bind=URL)
    elif parameter.choices:
        index = 0 if preset else parameter.choices.index(default)
        value = st.selectbox(label, list(parameter.choices), index=index, key=key, bind=URL)
    elif parameter.slider:
        number = parameter.kind
        low, high, step = declared_range(parameter)
        value = st.slider(label, number(low), number(high), None if preset else number(default), number(step), key=key,
                          bind=URL)
    elif parameter.kind is int:
        low, high, _ = declared_range(parameter)
        value = st.number_input(label, int(low), int(high), "min" if preset else int(default), key=key, bind=URL)
    else:
        low, high, step = declared_range(parameter)
        value = st.number_input(label, float(low), float(high), "min" if preset else float(default), step=float(step),
                                format="%g", key=key, bind=URL)
    st.caption(parameter.help)
    return value


def unless_preset(key: str, default: Any, neutral: Any = None) -> Any:
    """A widget's default, or `neutral` (what Streamlit takes for "no default": None, or index 0)
    when its key already holds a value (restored with the chart it belongs to): a widget given both
    makes Streamlit warn, and the kept value wins anyway."""
    return neutral if key in st.session_state else default


def fill_form(values: dict[str, Any], form: tuple[Parameter, ...]) -> list[str]:
    """Put `values` (a run's settings by key) into the form's widgets before they are drawn, so the
    form shows the run it came with (a preset, a results link, a loaded saved run): every field or,
    when `values` lacks some, none (a form half filled would run other settings than the run it
    shows). Returns the labels of the fields `values` lacks."""
    missing = [declared.label for declared in form if declared.key not in values]
    if not missing:
        for declared in form:
            st.session_state[declared.key] = values[declared.key]
    return missing


def form_is_fresh(form: tuple[Parameter, ...]) -> bool:
    """Whether none of the form's widgets holds a value yet: a first visit, or a page shown again
    (Streamlit forgets a page's widgets when another page is shown), and no link sets them."""
    return not any(declared.key in st.session_state or declared.key in st.query_params for declared in form)


def bounded_number(parameter: Parameter, default: int, key: str, label: str | None = None, container: Any = st) -> int:
    """A whole-number box (not bound to the URL) whose range is the parameter's declared one, the
    same the CLI and the share link enforce."""
    low, high, _ = declared_range(parameter)
    return container.number_input(label or parameter.label, int(low), int(high), int(default), key=key)


def link_parameters() -> dict[str, list[str]]:
    """Every query parameter of the page's link with all the values it was given, in order."""
    return {key: st.query_params.get_all(key) for key in st.query_params}


def ignored_url_parameters(params: Mapping[str, list[str]], known: set[str], form: tuple[Parameter, ...]) -> list[str]:
    """Which query parameters a link carried that the page's `form` cannot take, each with the
    reason, as Markdown that shows the link's own text verbatim: Streamlit drops an invalid bound
    value silently, a key given twice seeds nothing, and a key of another method's setting has no
    widget here, so this says what was ignored and why."""
    on_form = {declared.key: declared for declared in form}
    problems = []
    for key, values in params.items():
        if key in known:
            continue
        shown = plain(key[:40])
        if key not in on_form:
            owner = BY_KEY[key].method if key in BY_KEY else None
            problems.append(f"{shown}: " + (f"a setting of method {owner}, not of this page" if owner
                                            else "not a setting of this page"))
            continue
        if len(values) > 1:
            problems.append(f"{shown}: given {len(values)} times ({plain(', '.join(v[:40] for v in values[:5]))}); "
                            "a link gives each setting once")
            continue
        declared, raw = on_form[key], values[0]
        try:
            value = declared.coerce(raw)  # with the declared range
            if declared in RECOVERY_PARAMETERS:
                recovery_with_values({key: value})
            elif declared.path:
                declared.apply(PruneSettings(method=declared.method or "spap"), value)
        except SpapInputError as exc:
            problems.append(f"{shown} = {plain(raw[:40])}: {plain(str(exc).rstrip('.'))}")
    return problems
