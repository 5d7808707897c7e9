"""Compare runs: two or more saved runs side by side. One sentence first says which runs' perplexities
differ from a reference run's beyond the noise (paired verdicts); the page then opens with the
picture, the per-layer errors (with one sentence on which run is closest to the dense model) beside
how much their pruned channels (or heads) agree; then every run's perplexity with its interval and
verdict, the metrics, the settings with the ones that differ marked, the pruned sets, and perplexity
against sparsity for runs that differ only in their sparsity."""

import plotly.express as px
import streamlit as st

from pages._charts import chart_columns, show_chart
from pages._links import PAGE_RUN
from pages._palette import method_style
from pages._routing import ensure_routed
from pages._saved_runs import saved_run_label
from pages._state import session
from pages._text import chart_text, plain
from spap_core.errors import UnreadableRunError
from spap_service.analysis import span
from spap_service.compare import (
    CHANNELS,
    PARTS,
    containment_notes,
    error_reading,
    layer_errors,
    lone_points_note,
    metrics_table,
    part_layers,
    perplexity_table,
    pruned_map,
    pruned_overlap,
    reference_comparisons,
    run_names,
    settings_table,
    sparsity_curves,
    verdict_sentence,
)
from spap_service.limits import server_limits
from spap_service.runs import load_saved_run, saved_run_folder, saved_runs

ensure_routed()

DIFFERS = "background-color: #fff3cd; font-weight: 600"  # the settings rows in which the runs differ

st.title("Compare runs")
shared = server_limits().share_runs
everyone = shared and st.toggle("Runs of every session", key="compare_everyone")
listed = saved_runs(owner=None if everyone else session().owner)
for fault in listed.unreadable:
    st.caption(f":warning: Skipped a saved run that cannot be read: {plain(fault.fault)}")
runs = listed.table
if len(runs) < 2:
    st.info(f"{len(runs)} saved run{'' if len(runs) == 1 else 's'} "
            f"{'on this server' if everyone else 'of this browser'}: "
            "comparing needs at least two. Every finished run on Run SPAP is saved.")
    st.page_link(PAGE_RUN, label="Go to Run SPAP", icon=":material/play_arrow:")
    st.stop()
labels = {row["run"]: saved_run_label(row) for row in runs.to_dict("records")}
chosen = st.multiselect("Runs to compare", list(labels), default=list(labels)[:2], format_func=labels.__getitem__,
                        key="compare_runs", help="The newest first; two or more.")
if len(chosen) < 2:
    st.info("Choose at least two runs.")
    st.stop()
folders = [saved_run_folder(name) for name in chosen]
found = [folder for folder in folders if folder is not None]
if len(found) < len(folders):
    st.error("A chosen run is no longer in the results folder; choose again.")
    st.stop()
try:
    outcomes = [load_saved_run(folder) for folder in found]
except UnreadableRunError as exc:
    st.error(f"A chosen run cannot be opened: {plain(exc)}")
    st.stop()
names = run_names(outcomes)
reference = st.selectbox("Compare each run's perplexity against", range(len(outcomes)), format_func=names.__getitem__,
                         key="compare_reference", help="The ratio and verdict of every other run are against this one.")
st.info(plain(verdict_sentence(names, reference_comparisons(outcomes, reference), reference)),
        icon=":material/balance:")

part = CHANNELS
if any(outcome.result.heads is not None for outcome in outcomes):
    part = st.radio("Per layer", PARTS, horizontal=True, key="compare_part",
                    help="What the charts below show: the MLP's channels or the attention heads.")
drawn = [(name, outcome, layers) for name, outcome in zip(names, outcomes)
         if (layers := part_layers(outcome, part)) is not None]
if len(drawn) < len(outcomes):
    left_out = [name[0] for name in names if name not in {drawn_name for drawn_name, _, _ in drawn}]
    st.caption(f"Run{'s' * (len(left_out) > 1)} {', '.join(left_out)} pruned no heads: not drawn below.")
unit = "channel" if part == CHANNELS else "head"

error_column, overlap_column = st.columns(2)
with error_column:
    figure = px.line(layer_errors(outcomes, part), x="layer", y="relative_error", color="run", markers=True,
                     title=f"Relative reconstruction error per layer: {part}",
                     labels={"relative_error": "objective ÷ ½‖Y‖²"})
    figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.25))
    show_chart(figure)
    st.markdown(plain(error_reading(layer_errors(outcomes, part))))
with overlap_column:
    overlap = pruned_overlap(outcomes, part)
    if len(drawn) < 2:
        st.info(f"Only run {drawn[0][0][0]} pruned heads: there is no pair to compare.")
    elif overlap.empty:
        st.info(f"These runs pruned models of different widths: their {unit}s do not correspond.")
    else:
        figure = px.line(overlap, x="layer", y="jaccard", color="pair", markers=True, range_y=[0, 1.05],
                         title=f"Agreement of the pruned {unit}s per layer",
                         labels={"jaccard": "Jaccard |A∩B| / |A∪B|"})
        for trace in list(figure.data):  # each pair's ceiling, dotted in its colour
            pair = overlap[overlap["pair"] == trace.name]
            figure.add_scatter(x=pair["layer"], y=pair["ceiling"], mode="lines", name=f"ceiling {trace.name}",
                               line=dict(color=trace.line.color, dash="dot"))
        figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.25))
        show_chart(figure)
        ceiling = (f"Dotted: the ceiling, the smaller count of pruned {unit}s over the larger; two sets of "
                   "different sizes can agree no more.")
        st.caption(plain(" ".join([*containment_notes(overlap, unit), ceiling])))

st.subheader("Perplexity, 95% intervals and verdicts")
perplexities = perplexity_table(outcomes, reference)
figure = px.scatter(perplexities, x="run", y="ppl", title="Pruned perplexity of each run, with its 95% interval",
                    labels={"ppl": "perplexity", "run": ""},
                    error_y=perplexities["ppl_ci95_high"] - perplexities["ppl"],
                    error_y_minus=perplexities["ppl"] - perplexities["ppl_ci95_low"])
figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
show_chart(figure)
st.dataframe(perplexities[["run", "perplexity", "before recovery", "against", "verdict"]].rename(
    columns={"against": f"ratio to run {names[reference][0]}"}), hide_index=True, width="stretch")
st.caption("A run's perplexity is over all its calibration seeds when it was repeated over several (the seeds' range "
           "after it); a recovered run's is after its recovery, its perplexity before recovery beside it (– for a "
           "run without one). The ratio is its perplexity over the reference's, its interval from the two runs' "
           "losses window by window; runs evaluated on other windows are not comparable pairwise.")
st.download_button("Perplexities and verdicts (.csv)", data=perplexities.to_csv(index=False),
                   file_name="spap-compare-perplexities.csv", mime="text/csv", on_click="ignore")

st.subheader("Metrics")
st.dataframe(metrics_table(outcomes).style.format("{:.4g}"), width="stretch")

st.subheader("Settings")
settings = settings_table(outcomes)
differing = settings[settings["differs"]].drop(columns="differs")
st.caption(f"The runs differ in {len(differing)} of {len(settings)} settings (highlighted, and listed first).")
ordered = settings.sort_values("differs", ascending=False, kind="stable")
st.dataframe(ordered.drop(columns="differs").style.apply(
    lambda row: [DIFFERS if ordered.loc[row.name, "differs"] else ""] * len(row), axis=1), width="stretch")

st.subheader(f"Pruned {unit}s")
for column, (name, outcome, layers) in zip(chart_columns(len(drawn)), drawn):
    grid, units = pruned_map(outcome, part)
    widths = [layer.width for layer in layers]
    evenly = f" ({len(units)} of {span(widths)}, evenly spaced)" if len(units) < max(widths) else ""
    figure = px.imshow(grid, x=units, zmin=0, zmax=1, aspect="auto", color_continuous_scale="Reds",
                       labels={"x": f"{unit}{evenly}", "y": "layer", "color": "pruned"}, title=name)
    figure.update_layout(height=300, margin=dict(t=40, b=10, l=10, r=10), coloraxis_showscale=False)
    show_chart(figure, column)

st.subheader("Perplexity against sparsity")
curves = sparsity_curves(outcomes)
drawable = curves[curves["points"] >= 2]
if not drawable.empty:
    method_of = dict(zip(drawable["curve"].map(chart_text), drawable["method"]))
    figure = px.line(drawable.assign(curve=drawable["curve"].map(chart_text)), x="sparsity", y="perplexity",
                     color="curve", line_dash="curve", markers=True, hover_data=["run"],
                     error_y=drawable["ppl_ci95_high"] - drawable["perplexity"],
                     error_y_minus=drawable["perplexity"] - drawable["ppl_ci95_low"],
                     color_discrete_map={curve: method_style(method).colour for curve, method in method_of.items()},
                     title="Runs that agree in every setting but the sparsity form one curve")
    figure.for_each_trace(lambda trace: trace.update(marker_symbol=method_style(method_of[trace.name]).marker))
    figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10))
    figure.update_xaxes(tickformat=".0%")
    show_chart(figure)
    st.caption("; ".join(f"**{plain(curve)}**: runs {', '.join(group['run'].str[0])}"
                         for curve, group in drawable.groupby("curve")))
if (missing := lone_points_note(curves)) is not None:
    st.info(plain(missing))
