"""Mask evolution: how SPAP's relaxed mask s moves from fractional to binary as ρ grows, for one
layer (heatmap, animation, ρ/objective/violation beside it) and for all layers at once."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.subplots import make_subplots

from pages._analysis import display_channels, soft_masks, trace_table
from pages._routing import ensure_routed
from pages._shared import layer_picker, require_outcome

ensure_routed()

st.title("Mask evolution")
outcome = require_outcome(need_trace=True)
masks = soft_masks(outcome.result)  # [layer, iteration, channel]
trace = trace_table(outcome.result)
n_layers, n_iterations, width = masks.shape
st.caption(f"Soft mask s (1 = pruned) of the latest run: {n_layers} layers × {n_iterations} ρ iterations × "
           f"{width} channels. Each iteration moves s a step α towards the λ lowest-scored channels while the "
           "penalty ρ grows, so s starts fractional (λ/n everywhere) and ends near 0/1.")

controls = st.columns([2, 2, 1])
layer = layer_picker(n_layers, "mask_layer", controls[0])
max_channels = controls[1].slider("Channels drawn (evenly spaced, to keep the page light)", 32, 256,
                                  min(128, width), 32, key="mask_channels")
sort_by_mask = controls[2].checkbox("Sort channels by final s", True, key="mask_sort",
                                    help="Pruned channels gather on the right; unsorted keeps channel order.")

layer_masks = masks[layer]  # [iteration, channel]
channels = display_channels(layer_masks[-1], max_channels, sort_by_mask)
axis_title = "channel rank by final s" if sort_by_mask else "channel"
layer_trace = trace[trace["layer"] == layer]
layer_tick = max(1, n_layers // 10)

heatmap_column, path_column = st.columns([3, 2])
with heatmap_column:
    figure = px.imshow(layer_masks[:, channels], zmin=0, zmax=1, aspect="auto", color_continuous_scale="Viridis",
                       labels={"x": axis_title, "y": "ρ iteration", "color": "s"},
                       y=np.arange(1, n_iterations + 1), title=f"Layer {layer}: s over ρ iterations")
    figure.update_layout(height=440, margin=dict(t=50, b=10, l=10, r=10))
    st.plotly_chart(figure, width="stretch")
with path_column:
    figure = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=("penalty ρ", "objective ½‖WZ−Y‖²", "violation Σ sᵢ‖W[:,i]‖²",
                                           "share of s within 1e-3 of 0 or 1"))
    for row, column in enumerate(["rho", "objective", "violation", "mask_binary_fraction"], start=1):
        figure.add_scatter(x=layer_trace["iteration"], y=layer_trace[column], mode="lines+markers", name=column,
                           row=row, col=1, showlegend=False)
    figure.update_yaxes(type="log", row=1, col=1)
    figure.update_yaxes(range=[0, 1.05], row=4, col=1)
    figure.update_xaxes(title_text="ρ iteration", row=4, col=1)
    figure.update_layout(height=440, margin=dict(t=30, b=10, l=10, r=10))
    figure.update_annotations(font_size=12)
    st.plotly_chart(figure, width="stretch")

st.subheader("Animation")
bars_column, all_layers_column = st.columns(2)
with bars_column:
    frames = pd.DataFrame({"iteration": np.repeat(np.arange(1, n_iterations + 1), len(channels)),
                           "position": np.tile(np.arange(len(channels)), n_iterations),
                           "s": layer_masks[:, channels].reshape(-1)})
    figure = px.bar(frames, x="position", y="s", animation_frame="iteration", range_y=[0, 1],
                    labels={"position": axis_title}, title=f"Layer {layer}: s per channel, one frame per ρ iteration")
    figure.update_traces(marker_line_width=0)
    figure.update_layout(height=420, margin=dict(t=50, b=10, l=10, r=10), bargap=0)
    st.plotly_chart(figure, width="stretch")
with all_layers_column:
    per_layer = np.stack([masks[i][:, display_channels(masks[i, -1], max_channels, sort_by_mask)]
                          for i in range(n_layers)], axis=1)  # [iteration, layer, channel]
    figure = px.imshow(per_layer, animation_frame=0, zmin=0, zmax=1, aspect="auto", color_continuous_scale="Viridis",
                       labels={"animation_frame": "ρ iteration", "x": axis_title, "y": "layer", "color": "s"},
                       title="All layers: s, one frame per ρ iteration")
    for step in figure.layout.sliders[0].steps:  # frames are numbered from 0; ρ iterations from 1
        step.label = str(int(step.label) + 1)
    figure.update_layout(height=420, margin=dict(t=50, b=10, l=10, r=10))
    figure.update_yaxes(dtick=layer_tick)
    st.plotly_chart(figure, width="stretch")

st.subheader("All layers")
final_column, binary_column = st.columns(2)
with final_column:
    figure = px.imshow(per_layer[-1], zmin=0, zmax=1, aspect="auto", color_continuous_scale="Viridis",
                       labels={"x": axis_title, "y": "layer", "color": "s"}, title="Final s per layer")
    figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10))
    figure.update_yaxes(dtick=layer_tick)
    st.plotly_chart(figure, width="stretch")
with binary_column:
    figure = px.line(trace, x="iteration", y="mask_binary_fraction", color="layer", range_y=[0, 1.05],
                     labels={"mask_binary_fraction": "share of s within 1e-3 of 0 or 1", "iteration": "ρ iteration"},
                     title="From fractional to binary, per layer")
    figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10))
    st.plotly_chart(figure, width="stretch")
