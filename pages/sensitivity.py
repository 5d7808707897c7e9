"""Sensitivity: vary one hyperparameter over a range with all others fixed and watch the mean
layer error (mean over layers of objective ÷ ½‖Y‖²) and the perplexity respond, each perplexity with
its 95% interval and its verdict against the value in the fixed settings (always one of the scan's
points). The latest scan's chart and a plain sentence about it open the page, above the form that
starts the next scan."""

from dataclasses import replace
from functools import partial
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._charts import interval_bars, show_chart
from pages._estimates import estimate_caption, executor_note, time_estimate
from pages._job_progress import job_panel
from pages._jobs import refused_before_queueing
from pages._requests import CALIBRATION_SEEDS
from pages._results import latest_table
from pages._routing import ensure_routed
from pages._tables import (
    comparison_header,
    failed_points_warning,
    fixed_settings_caption,
    form_state,
    request_table,
    restore_form,
    shown_table_differs,
)
from pages._text import plain
from pages._widgets import declared_range, unless_preset
from spap_core.errors import SpapInputError
from spap_core.schema import SHARES
from spap_service.analysis import readable_range, scan_picture
from spap_service.comparisons import (
    SCAN_PARAMETERS,
    SCAN_REFERENCE,
    default_scan_range,
    perplexity_cell,
    ratio_cell,
    request_value,
    request_with,
    scan_key,
    sensitivity_scan,
    table_csv,
    with_default_value,
)
from spap_service.runs import MAX_SEEDS

ensure_routed()

loaded, base = comparison_header("Sensitivity")
picture_slot = st.container()  # the latest scan's chart and its sentence, above the form that makes the next one
restore_form("scan")  # the choices of the scan shown below, when the page is opened again

key = st.selectbox("Hyperparameter to vary", list(SCAN_PARAMETERS), key="scan_parameter",
                   format_func=lambda k: f"{SCAN_PARAMETERS[k].label} — {SCAN_PARAMETERS[k].help}")
scanned = SCAN_PARAMETERS[key]
fixed_settings_caption(base, {key, "method"}, "value")
with st.form("scan_settings", enter_to_submit=False):
    columns = st.columns(3)
    step = 1.0 if scanned.kind is int else None
    low_bound, high_bound, _ = declared_range(scanned)
    bounds: dict[str, Any] = {"min_value": float(low_bound), "max_value": float(high_bound), "step": step,
                              "format": "%g"}
    low_key, high_key = f"scan_low_{key}", f"scan_high_{key}"
    sweep_low, sweep_high = default_scan_range(scanned)
    low = columns[0].number_input("From", value=unless_preset(low_key, float(sweep_low), "min"), key=low_key,
                                  **bounds)
    high = columns[1].number_input("To", value=unless_preset(high_key, float(sweep_high), "min"), key=high_key,
                                   **bounds)
    points = columns[2].slider("Points", 2, 10, unless_preset("scan_points", 4), key="scan_points",
                               help="How many values to space over the range; an integer parameter takes each whole "
                                    "value once, so it may get fewer.")
    seeds_column, run_column = st.columns([1, 2], vertical_alignment="bottom")
    seeds = seeds_column.number_input(CALIBRATION_SEEDS.label, 1, MAX_SEEDS,
                                      unless_preset("scan_seeds", base.seeds, "min"), key="scan_seeds",
                                      help=CALIBRATION_SEEDS.help)
    submitted = run_column.form_submit_button("Run scan", type="primary", icon=":material/play_arrow:")
base = replace(base, seeds=int(seeds))
valid_range = low < high and not (scanned.log_scale and low <= 0)
chosen = scanned.sweep_values(low, high, points) if valid_range else []
default_value = request_value(base, scanned)
values = with_default_value(base, key, chosen) if valid_range else []
estimate = None
if valid_range:  # the values the form holds, as the scan will run them (a form's values change on submit)
    added = (f", and {scanned.format(default_value)}, the value in the fixed settings, added to compare every value "
             "with" if len(values) > len(chosen) else "")
    st.caption(f"{len(chosen)} values, spaced {'logarithmically' if scanned.log_scale else 'evenly'}: "
               f"{', '.join(scanned.format(value) for value in chosen)}{added}; each one is a full pruning run plus a "
               "perplexity evaluation.")
    try:
        estimate = time_estimate(loaded, [request_with(base, scanned, value) for value in values])
        st.caption(estimate_caption("This scan", estimate, base.seeds) + " " + executor_note())
    except SpapInputError:  # refused with its reason when the scan is asked for
        pass

if submitted:
    if not valid_range:
        st.error("'From' must be below 'To'" + (" and above 0 (log spacing)." if scanned.log_scale else "."))
    else:
        try:
            table_key = scan_key(loaded, base, key, values)
            # refuse invalid values now, not halfway through the scan
            requests = [request_with(base, scanned, value) for value in values]
            refused = refused_before_queueing(loaded, requests)
        except SpapInputError as exc:
            st.error(f"{scanned.label}: {plain(exc)}")
        else:
            if not refused:
                request_table("scan", table_key, f"Scan of {scanned.label} ({len(values)} values)" + (
                                  f" × {base.seeds} calibration seeds" if base.seeds > 1 else ""),
                              {"parameter": key, "current": default_value, "added": len(values) > len(chosen),
                               "form": form_state(["scan_parameter", low_key, high_key, "scan_points",
                                                   "scan_seeds"])},
                              partial(sensitivity_scan, loaded, base, key, values), estimate)

job_panel("scan")
latest = latest_table("scan")
if latest is None:
    picture_slot.info("Pick a hyperparameter and a range below, then run the scan (a background job; other pages "
                      "stay usable).")
    st.stop()

table, context = latest
try:
    current_key = scan_key(loaded, base, key, values) if valid_range else None
except SpapInputError:  # said below, when the scan was asked for
    current_key = None
scanned = SCAN_PARAMETERS[context["parameter"]]
axis_title = scanned.label
error_range, error_spread = readable_range(table["mean_layer_error"])
ppl_range, ppl_spread = readable_range(table["perplexity"])
figure = make_subplots(rows=1, cols=2, subplot_titles=(f"mean layer error ({error_spread})",
                                                       f"perplexity ({ppl_spread})"))
figure.add_trace(go.Scatter(x=table["value"], y=table["mean_layer_error"], mode="lines+markers", showlegend=False),
                 row=1, col=1)
figure.add_trace(go.Scatter(x=table["value"], y=table["perplexity"], mode="lines+markers", showlegend=False,
                            error_y=interval_bars(table)),
                 row=1, col=2)
figure.update_yaxes(range=error_range, exponentformat="power", row=1, col=1)
figure.update_yaxes(range=ppl_range, row=1, col=2)
for column in (1, 2):
    figure.add_vline(x=context["current"], line_dash="dot", line_color="red", row=1, col=column)
    figure.update_xaxes(title_text=axis_title, type="log" if scanned.log_scale else "linear", row=1,
                        col=column, exponentformat="power", tickformat=".0%" if scanned.key in SHARES else None)
figure.update_layout(height=400, margin=dict(t=90, b=10, l=10, r=10),
                     title_text=f"Scan of {scanned.label}: {len(table)} values<br><sup>fixed: "
                                f"{table['settings'].iloc[0]}</sup>")
with picture_slot:
    show_chart(figure)
    st.markdown(scan_picture(table, scanned.label, share=scanned.key in SHARES))
    failed_points_warning(table, lambda row: f"value {row['value']:g}")
    if current_key is None or shown_table_differs("scan", current_key):
        st.caption(":material/info: The chart shows the scan last run, made with other choices than the ones below; "
                   "press Run scan for these.")
    seeds = int(table["seeds"].iloc[0])
    added = (" It was not among the values chosen, so the scan added it as a point: every value is compared with "
             "it." if context["added"] else "")
    st.caption(f"Red dotted line: the value in the fixed settings, {scanned.format(context['current'])}.{added} Each "
               "axis spans at least 5% of its mean, so small differences look small. Perplexity on "
               f"{int(table['eval_tokens'].iloc[0]):,} predicted tokens; its error bars are 95% intervals over the "
               f"evaluation windows{' and the ' + str(seeds) + ' calibration seeds' if seeds > 1 else ''}.")
    with st.expander("The maths"):
        st.caption("Mean layer error: the mean over layers of objective ÷ ½‖Y‖², the part of each layer's dense "
                   "MLP output ‖Y‖² the pruned layer fails to reproduce (0 = all of it reproduced, 1 = as bad as no "
                   "MLP). Perplexity: exp of the mean negative log-likelihood per predicted token.")
st.dataframe(table.assign(perplexity=table.apply(perplexity_cell, axis=1),
                          **{"vs the default value": table.apply(ratio_cell, axis=1, name=SCAN_REFERENCE)})
             [["value", "perplexity", "vs the default value", "mean_layer_error", "dense_perplexity", "settings",
               "model", "calibration", "evaluation", *(["error"] if "error" in table else [])]],
             hide_index=True, width="stretch")
st.download_button("Scan (.csv)", data=table_csv(table), mime="text/csv", on_click="ignore",
                   file_name=f"spap-scan-{scanned.key}-{scanned.format(table['value'].min())}-"
                             f"{scanned.format(table['value'].max())}.csv")
