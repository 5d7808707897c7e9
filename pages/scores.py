"""Scores: how SPAP's channel scores (first and last ρ iteration) and the baselines' metrics are
distributed in a layer, where each metric's λ-threshold falls, and how far the channel sets they
would prune overlap with the set SPAP actually pruned. The distribution chart and a plain sentence
open the page; the notation and the raw thresholds are in "The maths"; every caption names the
layer or the mean it quotes."""

import numpy as np
import plotly.express as px
import streamlit as st

from pages._charts import show_chart
from pages._layer_picker import layer_picker
from pages._palette import metric_style
from pages._results import require_outcome
from pages._routing import ensure_routed
from pages._summaries import result_label
from spap_service.analysis import (
    head_table,
    jaccard_matrix,
    normalized_scores,
    overlap_scope,
    overlap_story,
    score_threshold,
    scores_picture,
)

ensure_routed()

st.title("Scores")
outcome = require_outcome()
label = result_label(outcome)
layers = outcome.result.layers

controls = st.columns([3, 2])
layer = layer_picker(len(layers), "scores_layer", controls[0])
chart = controls[1].radio("Chart", ["Histogram", "Violin", "ECDF"], horizontal=True, key="scores_chart")
record = layers[layer]
pruned_count = record.width - len(record.keep)
table = normalized_scores(record)
table["log10_relative"] = np.log10(table["relative_score"])
axis = {"log10_relative": "log₁₀(score ÷ λ-threshold)", "metric": ""}

title = f"Layer {layer}: {record.width} channels, λ = {pruned_count} pruned"
styles = {metric: metric_style(metric) for metric in table["metric"].unique()}
colours = {metric: style.colour for metric, style in styles.items()}
if chart == "Histogram":
    figure = px.histogram(table, x="log10_relative", color="metric", facet_row="metric", nbins=60,
                          color_discrete_map=colours, labels=axis, title=title)
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    figure.update_yaxes(title_text="")
    figure.add_vline(x=0, line_dash="dash", line_color="red")
    height = 110 * table["metric"].nunique() + 80
elif chart == "Violin":
    figure = px.violin(table, x="metric", y="log10_relative", color="metric", box=True, points=False,
                       color_discrete_map=colours, labels=axis, title=title)
    figure.add_hline(y=0, line_dash="dash", line_color="red", annotation_text="λ-threshold")
    height = 460
else:
    figure = px.ecdf(table, x="log10_relative", color="metric", line_dash="metric", color_discrete_map=colours,
                     line_dash_map={metric: style.dash for metric, style in styles.items()}, labels=axis, title=title)
    figure.add_vline(x=0, line_dash="dash", line_color="red", annotation_text="λ-threshold")
    figure.add_hline(y=pruned_count / record.width, line_dash="dot", line_color="gray",
                     annotation_text="λ/n")
    height = 460
figure.update_layout(height=height, margin=dict(t=50, b=10, l=10, r=10), showlegend=chart == "ECDF")
show_chart(figure, subtitle=label)
st.markdown(scores_picture(record, "below" if chart == "Violin" else "left of"))

with st.expander("The maths"):
    st.caption("Low score = cheap to prune. spap_first/spap_last: SPAP's score ‖W[:,i]‖·‖Zᵢ‖ᵗ before its first ρ "
               "iteration (the unpenalised W) and after its last; magnitude, wanda-sp and flap: the baselines' "
               "metrics on the same calibration data. Each metric is divided by its own λ-threshold (its λ-th "
               "lowest value), so every threshold sits at 0 on the log axis and the metrics share one axis although "
               "their scales differ. The red dashed line marks these thresholds:")
    thresholds = {metric: score_threshold(np.asarray(scores), pruned_count) for metric, scores in record.scores.items()}
    st.dataframe({"metric": list(thresholds),
                  f"λ-th lowest in layer {layer}": [f"{v:.4g}" for v in thresholds.values()]},
                 hide_index=True, width="stretch")

st.subheader("Which channels would each method prune?")
scope = st.radio("Overlap over", ["this layer", "all layers (mean)"], horizontal=True, key="scores_scope")
overlap = jaccard_matrix([record] if scope == "this layer" else layers)
overlap_column, note_column = st.columns([3, 2], gap="large")
scope_name = overlap_scope(layer if scope == "this layer" else None, len(layers))
figure = px.imshow(overlap, text_auto=".2f", zmin=0, zmax=1, color_continuous_scale="Blues",
                   labels={"color": "Jaccard"},
                   title=f"Jaccard overlap |A∩B| / |A∪B| of pruned channel sets, {scope_name}")
figure.update_layout(height=480, margin=dict(t=50, b=10, l=10, r=10))
show_chart(figure, overlap_column, subtitle=label)
note_column.caption("Each metric's set is its λ lowest channels; \"SPAP (actual pruned set)\" is the complement of the "
                    "channels the run kept.")
if (story := overlap_story(overlap, scope_name)) is not None:
    note_column.markdown(story)

if outcome.result.heads is not None:
    st.subheader("Attention heads")
    heads = head_table(outcome.result)
    layer_heads = heads[heads["layer"] == layer]
    head_record = outcome.result.heads.layers[layer]
    metrics = list(head_record.scores)
    removed = head_record.width - len(head_record.keep)
    relative = normalized_scores(head_record).merge(layer_heads[["head", "label", "status"]], left_on="channel",
                                                    right_on="head")
    figure = px.bar(relative, x="label", y="relative_score", color="metric", barmode="group", log_y=True,
                    pattern_shape="status", pattern_shape_map={"pruned": "x", "kept": ""},
                    labels={"label": "head · its KV group", "relative_score": "score ÷ λ-threshold", "metric": ""},
                    title=f"Layer {layer}: each metric's score of the {head_record.width} heads, {removed} pruned")
    figure.add_hline(y=1, line_dash="dash", line_color="red")
    figure.update_layout(height=440, margin=dict(t=50, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.25))
    show_chart(figure, subtitle=label)
    pruned_labels = ", ".join(layer_heads.loc[layer_heads["status"] == "pruned", "label"])
    st.caption(f"SPAP scores a head by ‖W[:, block]‖·‖Z_block‖ᵗ (Frobenius norms of its block of the output "
               f"projection and of its outputs); Wanda-sp and FLAP sum their columns' scores, magnitude takes the "
               f"block's norm. Hatched: the heads this run pruned in layer {layer} ({pruned_labels}). Each metric is "
               f"divided by its λ-th lowest head score (λ = {removed}); the run's choice also had to keep "
               f"{outcome.result.heads.layout.describe()}, so it can differ from any metric's λ lowest.")
