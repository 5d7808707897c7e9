"""Perplexity vs sparsity: SPAP and the baselines pruned at several sparsities, all on the same
calibration and evaluation windows, with the dense model as the reference line. The page opens with
its picture (the latest sweep, else the curves measured in advance on this model) and what it shows
in one sentence; the sweep's form follows. Sweeps run as background jobs and are cached, so coming
back to the same sweep is instant."""

from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from pages._charts import show_chart
from pages._estimates import estimate_caption, executor_note, recovery_estimate, time_estimate
from pages._job_progress import job_panel
from pages._jobs import refused_before_queueing
from pages._palette import DENSE, method_colours, method_markers, method_style
from pages._requests import CALIBRATION_SEEDS, comparison_recovery
from pages._results import latest_table
from pages._routing import ensure_routed
from pages._summaries import evaluation_budget
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
from pages._widgets import parameter_widget, unless_preset
from spap_core.errors import SpapInputError
from spap_core.methods.allocation import ALLOCATIONS
from spap_core.methods.allocation import DESCRIPTIONS as ALLOCATION_DESCRIPTIONS
from spap_core.methods.reconstruction import OWN, RECONSTRUCTIONS, REFIT, REFIT_ALTMIN, Reconstruction
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.pipeline.parameters import allocation_parameters, method_parameters, with_values
from spap_core.recovery.settings import RecoverySettings
from spap_service.analysis import weight_update_note
from spap_service.compare import ReferenceCurves, reference_curves
from spap_service.comparisons import (
    BEFORE_RECOVERY,
    SWEEP_REFERENCE,
    ScaleSplit,
    by_sparsity,
    method_settings,
    perplexity_by_sparsity,
    ratio_cell,
    recovered,
    split_off_scale,
    sweep_key,
    sweep_reading,
    sweep_sparsities,
    table_csv,
    value_ranges,
)
from spap_service.runs import MAX_SEEDS

ensure_routed()

STEPS = [0.05, 0.1, 0.2]

loaded, base = comparison_header("Perplexity vs sparsity", offers_recovery=True)
restore_form("sweep")  # the choices of the sweep shown, when the page is opened again
picture = st.container()  # the chart comes first; it is drawn once the form below has said which sweep it is

# No form: the time estimate follows the choices as they are made, before anything starts.
method_column, sparsity_column, step_column = st.columns([2, 2, 1])
methods = method_column.multiselect("Methods", list(METHODS), default=unless_preset("sweep_methods", ["spap", "flap"]),
                                    key="sweep_methods",
                                    help="fasp = Wanda-sp selection + least-squares refit; flap adds a bias.")
low, high = sparsity_column.slider("Sparsity range", 0.05, 0.9, unless_preset("sweep_range", (0.1, 0.5)), 0.05,
                                   key="sweep_range")
step = step_column.selectbox("Step", STEPS, index=unless_preset("sweep_step", STEPS.index(0.2), 0), key="sweep_step")
sparsities = [round(float(v), 4) for v in np.arange(low, high + 1e-9, step)]
reconstruction = st.radio(
    "Weight update after each method's selection", RECONSTRUCTIONS, horizontal=True, key="sweep_reconstruction",
    help=f"{OWN}: each method's own (SPAP: refit + alternating minimization; FASP: least squares; FLAP: a mean "
         f"bias; magnitude and Wanda-sp: none). {REFIT}: SPAP's refit for every method (ridge towards the dense "
         f"weights, bias). {REFIT_ALTMIN}: that plus SPAP's alternating minimization. With the same update for "
         "all, the curves compare the selections alone.")
allocation = st.radio(
    "Sparsity per layer", ALLOCATIONS, horizontal=True, key="sweep_allocation",
    help=" ".join(f"{name}: {description}." for name, description in ALLOCATION_DESCRIPTIONS.items()))
# The chosen allocation's own settings, one widget each, generated from its declarations.
spread = {}
if spread_parameters := allocation_parameters(allocation):
    with st.expander(f"Settings of the {allocation} allocation"):
        for declared in spread_parameters:
            spread[declared.key] = parameter_widget(declared, declared.read(PruneSettings(allocation=allocation)))
# The baselines' own settings (SPAP's are those last submitted on Run SPAP), one widget each,
# generated from the declarations and bound to the URL by their keys.
with_settings = [method for method in methods if method != base.settings.method and METHODS[method].parameters]
values = {}
if with_settings:
    with st.expander("Settings of " + ", ".join(with_settings)):
        for column, method in zip(st.columns(len(with_settings)), with_settings):
            with column:
                st.markdown(f"**{method}**")
                for declared in method_parameters(method):
                    if declared.method == method:
                        values[declared.key] = parameter_widget(declared, declared.read(PruneSettings(method=method)))
try:
    updated = replace(base.settings, reconstruction=Reconstruction.named(reconstruction))
    base = replace(base, settings=with_values(updated.with_allocation(allocation), spread))
    settings = {method: method_settings(base.settings, method, values) for method in methods}
except SpapInputError as exc:
    st.error(plain(exc))
    st.stop()
fixed_settings_caption(base, {"method", "sparsity"}, f"point ({weight_update_note(base.settings.reconstruction)})")
seeds_column, run_column = st.columns([1, 3])
seeds = seeds_column.number_input(CALIBRATION_SEEDS.label, 1, MAX_SEEDS,
                                  unless_preset("sweep_seeds", base.seeds, "min"), key="sweep_seeds",
                                  help=CALIBRATION_SEEDS.help)
# Offered only when the kept Run SPAP settings recover: the same recovery after every point.
kept_recovery = comparison_recovery()
recovers = kept_recovery.enabled and run_column.checkbox(
    f"Recover every point after pruning ({kept_recovery.mode}, {kept_recovery.steps} steps)", value=True,
    key="sweep_recovery",
    help=f"The recovery of the Run SPAP settings this page keeps ({kept_recovery.describe()}), after every point "
         "(every method, sparsity and calibration seed): the chart and the table then show each point before and "
         "after it. Each point trains its adapters and measures its perplexity a second time, which multiplies the "
         "sweep's time (the estimate below counts it).")
base = replace(base, seeds=int(seeds), recovery=kept_recovery if recovers else RecoverySettings())
key = sweep_key(loaded, base, settings, sparsities)
points = [replace(base, settings=replace(settings[method], sparsity=sparsity))
          for method in methods for sparsity in sparsities]
estimate = time_estimate(loaded, points)
# the recovery's share of the estimate: every point's, or none claimed when the model cannot be timed
recovery_s = [seconds for point in points if (seconds := recovery_estimate(loaded, point)) is not None] \
    if recovers else []
run_column.caption(estimate_caption(
    f"{len(points)} runs (methods × sparsities)", estimate, base.seeds,
    recovery=base.recovery.describe() if recovers else None,
    recovery_s=sum(recovery_s) if recovers and len(recovery_s) == len(points) else None)
    + " " + executor_note() if points else "Nothing to run: choose at least one method.")
if run_column.button("Run sweep", type="primary", icon=":material/play_arrow:"):
    if not methods:
        st.error("Choose at least one method.")
    elif not refused_before_queueing(loaded, points):
        label = f"Sweep: {len(methods)} methods × {len(sparsities)} sparsities" + (
            f" × {base.seeds} calibration seeds" if base.seeds > 1 else "")
        form = form_state(["sweep_methods", "sweep_range", "sweep_step", "sweep_reconstruction", "sweep_allocation",
                           "sweep_seeds", "sweep_recovery", *spread, *values])
        request_table("sweep", key, label, {"budget": evaluation_budget(base.data), "form": form},
                      partial(sweep_sparsities, loaded, base, settings, sparsities), estimate)

job_panel("sweep")
latest = latest_table("sweep")
reference = reference_curves(loaded.source)


def perplexity_figure(table: pd.DataFrame, title: str, dense: dict[str, float], panel: str | None = None
                      ) -> tuple[go.Figure, ScaleSplit]:
    """Perplexity against sparsity on a log axis: one curve per method in its palette colour and
    marker, a panel per value of `panel` (one chart when None), the dense model's perplexity of each
    panel (`dense`, by panel value; the key "" without panels) as the dashed neutral line, and the
    methods far above the others (spap_service.comparisons.split_off_scale) left off the axis and
    written, with their values, in each panel's corner. Sparsity reads as a percentage on every axis.
    Every point with a 95% interval (windows and calibration seeds) carries it as an error bar. When
    the points recovered after pruning, the solid curves are the perplexities after recovery and each
    method's perplexities before it are a dashed curve in its colour, the legend naming each."""
    split = split_off_scale(table, panel)
    methods = list(dict.fromkeys(split.shown["method"]))
    measured, bars = split.shown, {}
    if "ppl_ci95_low" in measured:  # the 95% intervals (NaN, so no bar, for a reference row measured without them)
        measured = measured.assign(ci95_above=measured["ppl_ci95_high"] - measured["perplexity"],
                                   ci95_below=measured["perplexity"] - measured["ppl_ci95_low"])
        bars = {"error_y": "ci95_above", "error_y_minus": "ci95_below"}
    figure = px.line(measured, x="sparsity", y="perplexity", color="method", symbol="method", facet_col=panel,
                     markers=True, log_y=True, title=title, color_discrete_map=method_colours(methods),
                     symbol_map=method_markers(methods), **bars)
    if before_too := recovered(table):
        figure.for_each_trace(lambda trace: trace.update(name=f"{trace.name}, after recovery"))
    span = [table["sparsity"].min(), table["sparsity"].max()]
    panels = list(dict.fromkeys(table[panel])) if panel else [""]
    # one legend entry for the dense lines of every panel: the grey dashes mean one thing
    dense_name = "dense " + ", ".join(f"{dense[name]:.2f}" + (f" on {name}" if name else "") for name in panels)
    for column, name in enumerate(panels, start=1):
        # a trace, not add_hline: shapes on a log axis take log10 coordinates
        figure.add_scatter(x=span, y=[dense[name]] * 2, mode="lines", row=1, col=column, line=DENSE.line(),
                           name=dense_name, legendgroup="dense", showlegend=column == 1)
        in_panel = measured[measured[panel] == name] if panel else measured
        for method in methods if before_too else ():
            rows, style = in_panel[in_panel["method"] == method], method_style(method)
            figure.add_scatter(x=rows["sparsity"], y=rows[BEFORE_RECOVERY.perplexity], mode="lines+markers",
                               row=1, col=column, line=replace(style, dash="dash").line(),
                               marker_symbol=style.marker, name=f"{method}, before recovery",
                               legendgroup=f"{method} before", showlegend=column == 1)
        off = split.panel(panel, name).off_scale if panel else split.off_scale
        if not off.empty:
            axis = "" if column == 1 else str(column)
            only = list(dict.fromkeys(off["method"]))
            colour = method_style(only[0]).colour if len(only) == 1 else DENSE.colour
            figure.add_annotation(text=f"off the axis, far above:<br>{value_ranges(off)}", showarrow=False,
                                  xref=f"x{axis} domain", yref=f"y{axis} domain", x=0.02, y=0.98, xanchor="left",
                                  yanchor="top", align="left", font_color=colour, bgcolor="rgba(255,255,255,0.8)")
    figure.update_xaxes(tickformat=".0%")
    return figure, split


def reference_section(curves: ReferenceCurves) -> None:
    """The committed benchmark's curves for this model, labelled as such, and what they show in one
    sentence (of the first text): what a lesson can show at once, before (or instead of) a live sweep."""
    figure, split = perplexity_figure(curves.table, "Reference curves (precomputed, not this session's data)",
                                      curves.dense, panel="text")
    figure.update_layout(height=420, margin=dict(t=90, b=10, l=10, r=10))
    show_chart(figure, subtitle=plain(loaded.description))
    first = str(curves.table["text"].iloc[0])
    st.markdown(plain(sweep_reading(split.panel("text", first), curves.dense[first], where=f"on {first}, ")))


def protocol_caption(curves: ReferenceCurves) -> None:
    st.caption(f"Protocol: {curves.protocol}. A live sweep here uses this session's smaller data, so its numbers "
               "are higher; the order of the methods is what to compare.")


def sweep_section(table: pd.DataFrame, context: dict) -> None:
    """The latest sweep: its chart with the intervals, what it shows in one sentence, its numbers
    ("ppl [low, high]", before and after the recovery when its points recovered, and each method's
    verdict against spap) and its CSV (numbers, with each seed's window losses JSON-encoded)."""
    failed_points_warning(table, lambda row: f"{row['method']} at {row['sparsity']:.0%}")
    if shown_table_differs("sweep", key):
        st.caption(":material/info: The chart shows the sweep last run, made with other choices than the ones "
                   "below; press Run sweep for these.")
    dense = float(table["dense_perplexity"].iloc[0])
    figure, split = perplexity_figure(
        table, f"Perplexity vs sparsity ({int(table['eval_tokens'].iloc[0]):,} evaluation tokens)<br>"
               f"<sup>weight update: {table['reconstruction'].iloc[0]}; {table['allocation'].iloc[0]} allocation; "
               f"evaluation: {context['budget']}</sup>", {"": dense})
    figure.update_layout(height=460, margin=dict(t=70, b=70, l=10, r=10))
    show_chart(figure)
    st.markdown(plain(sweep_reading(split, dense)))
    seeds = int(table["seeds"].iloc[0])
    after = " after recovery" if recovered(table) else ""
    st.caption(f"Error bars{' (solid lines, after recovery)' * bool(after)}: 95% intervals over the evaluation "
               f"windows{' and the calibration seeds' * (seeds > 1)} ({seeds} seed{'s' * (seeds > 1)})."
               + (" The dashed lines are the same points before recovery; their intervals are in the table below."
                  * bool(after)))
    with st.expander("The numbers, and each curve's settings"):
        st.markdown(f"**Perplexity [95% interval]**{', after recovery and before it' * bool(after)} "
                    f"(dense: {dense:.2f})" + (
                        f"; with {seeds} calibration seeds, their lowest and highest one-seed perplexity after it"
                        if seeds > 1 else ""))
        st.dataframe(perplexity_by_sparsity(table), width="stretch")
        baselines = table[table["method"] != SWEEP_REFERENCE]
        if "verdict_vs_spap" in table and not baselines.empty:
            st.markdown(f"**Against spap at the same sparsity{after}**: each method's perplexity ÷ spap's, its 95% "
                        "interval from the windows' paired differences, and the verdict")
            st.dataframe(by_sparsity(baselines, baselines.apply(ratio_cell, axis=1, name=SWEEP_REFERENCE)),
                         width="stretch")
        shown = sorted(table["sparsity"].unique())
        st.download_button("Sweep (.csv)", data=table_csv(table), mime="text/csv", on_click="ignore",
                           file_name=f"spap-sweep-{'-'.join(dict.fromkeys(table['method']))}-"
                                     f"{shown[0]:.2f}-{shown[-1]:.2f}.csv")
        curves = table.drop_duplicates("method")[["method", "settings"]]
        st.caption("Each curve's settings (also in the CSV): " + "; ".join(
            f"**{row.method}**: {row.settings or 'its defaults'}" for row in curves.itertuples()))


with picture:
    if latest is not None:
        sweep_section(*latest)
    elif reference is not None:
        reference_section(reference)
        with st.expander("How the reference curves were measured"):
            protocol_caption(reference)
        st.caption("No sweep yet: choose methods and a sparsity range below and run one on this session's data. "
                   "Each point is one pruning run plus one perplexity evaluation, so a sweep takes a while on a CPU; "
                   "other pages stay usable meanwhile.")
    else:
        st.info("Choose methods and a sparsity range below, then run the sweep. Each point is one pruning run plus "
                "one perplexity evaluation, so a sweep takes a while on a CPU; other pages stay usable meanwhile.")

if latest is not None and reference is not None:
    with st.expander("Reference curves, precomputed on this model with a larger protocol"):
        reference_section(reference)
        protocol_caption(reference)
