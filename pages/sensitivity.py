"""Sensitivity: vary one hyperparameter over a range with all others fixed and watch the mean
layer error (mean over layers of objective ÷ ½‖Y‖²) and the perplexity respond."""

from functools import partial

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._routing import ensure_routed
from pages._shared import (
    comparison_header,
    fixed_settings_caption,
    job_panel,
    latest_table,
    refused_before_queueing,
    request_table,
)
from spap_core.errors import SpapInputError
from spap_service.analysis import readable_range
from spap_service.comparisons import SCAN_PARAMETERS, request_value, request_with, scan_key, sensitivity_scan

ensure_routed()

loaded, base = comparison_header("Sensitivity")

key = st.selectbox("Hyperparameter to vary", list(SCAN_PARAMETERS), key="scan_parameter",
                   format_func=lambda k: f"{SCAN_PARAMETERS[k].label} — {SCAN_PARAMETERS[k].help}")
scanned = SCAN_PARAMETERS[key]
fixed_settings_caption(base, {key, "method"}, "value")
with st.form("scan_settings"):
    columns = st.columns(3)
    step = 1.0 if scanned.kind is int else None
    bounds = {"min_value": float(scanned.low), "max_value": float(scanned.high), "step": step, "format": "%g"}
    low = columns[0].number_input("From", value=float(scanned.sweep[0]), key=f"scan_low_{key}", **bounds)
    high = columns[1].number_input("To", value=float(scanned.sweep[1]), key=f"scan_high_{key}", **bounds)
    points = columns[2].slider("Values", 2, 10, 4, key="scan_points")
    st.caption(f"Values are spaced {'logarithmically' if scanned.log_scale else 'evenly'}; each one is a full "
               "pruning run plus a perplexity evaluation.")
    submitted = st.form_submit_button("Run scan", type="primary", icon=":material/play_arrow:")

if submitted:
    if not low < high or (scanned.log_scale and low <= 0):
        st.error("'From' must be below 'To'" + (" and above 0 (log spacing)." if scanned.log_scale else "."))
    else:
        values = scanned.sweep_values(low, high, points)
        try:
            table_key = scan_key(loaded, base, key, values)
            # refuse invalid values now, not halfway through the scan
            requests = [request_with(base, scanned, value) for value in values]
            refused = refused_before_queueing(loaded, requests)
        except SpapInputError as exc:
            st.error(f"{scanned.label}: {exc}")
        else:
            if not refused:
                request_table("scan", table_key, f"Scan of {scanned.label} ({len(values)} values)",
                              {"parameter": key, "current": request_value(base, scanned)},
                              partial(sensitivity_scan, loaded, base, key, values))

job_panel("scan")
latest = latest_table("scan")
if latest is None:
    st.info("Pick a hyperparameter and a range, then run the scan (a background job; other pages stay usable).")
    st.stop()

table, context = latest
scanned = SCAN_PARAMETERS[context["parameter"]]
axis_title = scanned.label
error_range, error_spread = readable_range(table["mean_layer_error"])
ppl_range, ppl_spread = readable_range(table["perplexity"])
figure = make_subplots(rows=1, cols=2, subplot_titles=(f"mean layer error ({error_spread})",
                                                       f"perplexity ({ppl_spread})"))
figure.add_trace(go.Scatter(x=table["value"], y=table["mean_layer_error"], mode="lines+markers", showlegend=False),
                 row=1, col=1)
figure.add_trace(go.Scatter(x=table["value"], y=table["perplexity"], mode="lines+markers", showlegend=False),
                 row=1, col=2)
figure.update_yaxes(range=error_range, exponentformat="power", row=1, col=1)
figure.update_yaxes(range=ppl_range, row=1, col=2)
for column in (1, 2):
    figure.add_vline(x=context["current"], line_dash="dot", line_color="red", row=1, col=column)
    figure.update_xaxes(title_text=axis_title, type="log" if scanned.log_scale else "linear", row=1,
                        col=column, exponentformat="power")
figure.update_layout(height=400, margin=dict(t=50, b=10, l=10, r=10))
st.plotly_chart(figure, width="stretch")
dense = float(table["dense_perplexity"].iloc[0])
st.caption(f"Red dotted line: the value in the Run SPAP settings. Each axis spans at least 5% of its mean, so "
           f"small differences look small. Mean layer error: mean over layers of objective ÷ ½‖Y‖². Perplexity on "
           f"{int(table['eval_tokens'].iloc[0]):,} predicted tokens; the dense model's is {dense:.2f}.")
st.dataframe(table, hide_index=True, width="stretch")
