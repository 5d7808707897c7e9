"""The recovery after pruning on Run SPAP: its section of the form, generated from
RECOVERY_PARAMETERS like the method's own settings; while a run recovers, its growing loss chart
with the step, the time so far and the time left; and a finished run's curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._charts import show_chart
from pages._requests import shown_recovery_parameters
from pages._widgets import parameter_widget
from spap_core.pipeline.parameters import GROUPS, RECOVERY_PARAMETERS
from spap_core.recovery.loop import RecoveryStep
from spap_core.recovery.settings import RECOVERY_MODE
from spap_service.recovery import curve_from_steps, recovery_progress_text

RECOVERY_CHART_TITLE = "Recovery: training loss per step, held-out perplexity"


def recovery_section(defaults: dict[str, Any]) -> dict[str, Any]:
    """The form's recovery settings, every RECOVERY_PARAMETERS key: the mode's widget, the others'
    only where the mode uses them (a hidden one keeps the value it holds, else its default). Drawn
    outside the form, so choosing a mode shows its settings at once."""
    mode_parameter = next(p for p in RECOVERY_PARAMETERS if p.key == RECOVERY_MODE)
    values: dict[str, Any] = {}
    with st.expander(GROUPS[mode_parameter.group], expanded=st.session_state.get(RECOVERY_MODE, "none") != "none"):
        values[RECOVERY_MODE] = parameter_widget(mode_parameter, defaults[RECOVERY_MODE])
        shown = shown_recovery_parameters(values[RECOVERY_MODE])
        columns = st.columns(3, gap="medium")
        for index, declared in enumerate(p for p in shown if p.key != RECOVERY_MODE):
            with columns[index % len(columns)]:
                values[declared.key] = parameter_widget(declared, defaults[declared.key])
    for declared in RECOVERY_PARAMETERS:
        values.setdefault(declared.key, st.session_state.get(declared.key, defaults[declared.key]))
    return values


def recovery_figure(curve: pd.DataFrame, steps: int) -> go.Figure:
    """Training loss per step (left axis) and the held-out perplexity at the steps it was measured
    (right axis), on an x axis as long as the `steps` asked, so the chart grows into it."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_scatter(x=curve["step"], y=curve["loss"], mode="lines+markers", name="training loss",
                       secondary_y=False)
    measured = curve.dropna(subset=["heldout_ppl"])
    figure.add_scatter(x=measured["step"], y=measured["heldout_ppl"], mode="lines+markers",
                       name="held-out perplexity", line=dict(dash="dot"), secondary_y=True)
    figure.update_layout(title_text=RECOVERY_CHART_TITLE, height=300, margin=dict(t=40, b=10, l=10, r=10))
    figure.update_xaxes(title_text="recovery step", range=[0.5, steps + 0.5])
    figure.update_yaxes(title_text="training loss", secondary_y=False)
    figure.update_yaxes(title_text="held-out perplexity", secondary_y=True)
    return figure


def live_recovery(steps: Sequence[RecoveryStep]) -> None:
    """A running recovery's step, time so far and left, and its curve so far."""
    latest = steps[-1]
    st.caption(recovery_progress_text(latest))
    show_chart(recovery_figure(curve_from_steps(steps), latest.steps))
