"""Mask evolution: how SPAP's relaxed mask s moves across the ρ iterations, what the growing ρ
does to the output projection's columns, and the binary mask read out at the end — for one layer and for
all layers. The page opens with one layer's heatmap and a plain sentence about it (a projector's first
screen), the notation follows in "The maths". Every sentence is computed from the run it describes."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.subplots import make_subplots

from pages._charts import chart_columns, show_chart
from pages._layer_picker import layer_picker
from pages._results import require_outcome
from pages._routing import ensure_routed
from pages._summaries import result_label
from spap_service.analysis import (
    MASK_COLOUR_SCALE,
    changed_mind_counts,
    display_channels,
    final_norms,
    head_soft_masks,
    head_story,
    head_table,
    marked_share_of_final,
    mask_picture,
    mask_story,
    norm_paths,
    readout_masks,
    soft_masks,
    span,
    trace_table,
    violation_sentence,
)

ensure_routed()

READOUT = "read-out"
POWER_TICKS = dict(exponentformat="power", showexponent="all")  # 10⁻², not "10m"
DECADES = dict(dtick=1, **POWER_TICKS)  # one label per power of ten on a log axis

st.title("Mask evolution")
outcome = require_outcome(need_trace=True)
label = result_label(outcome)
result = outcome.result
masks = soft_masks(result)  # [layer, iteration, channel]
readouts = readout_masks(result)  # [layer, channel], 1 = pruned
trace = trace_table(result)
n_layers, n_iterations, width = masks.shape  # width: the widest layer's (a model pruned before may vary)
widths = [record.width for record in result.layers]

controls = st.columns([3, 2])  # one short row above the chart; the drawing options go under it
layer = layer_picker(n_layers, "mask_layer", controls[0])
picture_slot = st.container()  # the heatmap and its sentence, drawn once the options below are read
option_columns = st.columns([3, 2])
max_channels = option_columns[0].slider("Channels drawn (evenly spaced, to keep the page light)", 32, 256,
                                        min(128, width), 32, key="mask_channels")
sort_by_mask = option_columns[1].checkbox("Sort by final s", True, key="mask_sort",
                                          help="Channels sorted by their final s: the pruned ones gather on the "
                                               "right; unsorted keeps channel order.")

# Each layer's frames: s after every ρ iteration, then the binary read-out as a frame of its own.
with_readout = np.concatenate([masks, readouts[:, None, :]], axis=1)  # [layer, iteration + 1, channel]
frame_labels = [str(k) for k in range(1, n_iterations + 1)] + [READOUT]
layer_frames = with_readout[layer][:, :widths[layer]]  # the layer's own channels
channels = display_channels(layer_frames[-2], max_channels, sort_by_mask)
axis_title = "channel rank by final s" if sort_by_mask else "channel"
layer_trace = trace[trace["layer"] == layer]
layer_tick = max(1, n_layers // 10)

with picture_slot:
    figure = px.imshow(layer_frames[:, channels], zmin=0, zmax=1, aspect="auto",
                       color_continuous_scale=MASK_COLOUR_SCALE, y=frame_labels,
                       labels={"x": axis_title, "y": "ρ iteration", "color": "s"},
                       title=f"Layer {layer}: s over ρ iterations, then the binary read-out")
    figure.update_yaxes(type="category")
    figure.update_layout(height=400, margin=dict(t=50, b=10, l=10, r=10))
    show_chart(figure, subtitle=label)
    st.markdown(mask_picture(layer_frames[:, channels], layer, widths[layer],
                             widths[layer] - len(result.layers[layer].keep)))

with st.expander("The maths"):
    st.caption(f"Soft mask s (1 = pruned) of the latest run: {n_layers} layers × {n_iterations} ρ iterations × "
               f"{span(widths)} channels. " + mask_story(result, masks))
    # short panel titles: the expander is narrow on a projector (h̄ is defined in the caption below)
    figure = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                           subplot_titles=("penalty ρ ÷ h̄", "objective ½‖WZ−Y‖²", "violation Σ sᵢ‖W[:,i]‖²",
                                           "distance of s from read-out"))
    for row, column in enumerate(["rho", "objective", "violation", "readout_gap"], start=1):
        figure.add_scatter(x=layer_trace["iteration"], y=layer_trace[column], mode="lines+markers", name=column,
                           row=row, col=1, showlegend=False)
    figure.update_yaxes(type="log", row=1, col=1, **DECADES)
    figure.update_yaxes(rangemode="tozero", row=4, col=1)
    figure.update_xaxes(title_text="ρ iteration", dtick=1, row=4, col=1)
    figure.update_layout(height=480, margin=dict(t=30, b=10, l=10, r=10),
                         title=f"Layer {layer}: the penalty path, step by step")
    show_chart(figure, subtitle=label)
    st.caption(f"ρ is measured in h̄, the mean of diag H (H = ZZᵀ, so h̄ is the average ‖Zᵢ‖²). "
               f"Distance of s from its read-out: Σ|s − b(s)| ÷ λ, with b(s) the λ largest s set to 1 (0 = s is "
               f"binary); in this layer it goes from {layer_trace['readout_gap'].iloc[0]:.2f} to "
               f"{layer_trace['readout_gap'].iloc[-1]:.2f}. {violation_sentence(layer_trace['violation'].to_numpy())}")

st.subheader("What ρ does: it acts on W, not on s")
paths = norm_paths(result, layer)
after = final_norms(result.layers[layer])  # recorded with the dense norms that `paths` needs
if paths is None or after is None:
    st.info("This run was saved before column norms were recorded; run it again to see what ρ does to W.")
else:
    norm_column, mask_column, readout_column = chart_columns([2, 2, 1.3])
    figure = px.line(paths, x="rho", y="relative_norm", color="group", markers=True, log_x=True,
                     labels={"rho": "ρ (× mean diag H)", "relative_norm": "median ‖W[:,i]‖ ÷ ‖W₀[:,i]‖", "group": ""},
                     title=f"Layer {layer}: column norms of W (the output projection) as ρ grows")
    figure.add_hline(y=1, line_dash="dot", line_color="gray")
    figure.update_xaxes(**DECADES)
    figure.update_layout(height=460, margin=dict(t=50, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.3))
    show_chart(figure, norm_column, subtitle=label)
    figure = px.line(paths, x="rho", y="s", color="group", markers=True, log_x=True, range_y=[-0.03, 1.03],
                     labels={"rho": "ρ (× mean diag H)", "s": "median s", "group": ""},
                     title=f"Layer {layer}: s of the same groups")
    figure.update_xaxes(**DECADES)
    figure.update_layout(height=460, margin=dict(t=50, b=10, l=10, r=10), showlegend=False)
    show_chart(figure, mask_column, subtitle=label)
    figure = px.strip(after, x="status", y="relative_norm", color="status",
                      color_discrete_map={"pruned": "#d62728", "kept": "#1f77b4"},
                      labels={"relative_norm": "‖W[:,i]‖ ÷ ‖W₀[:,i]‖", "status": ""},
                      title="Read-out and refit")
    figure.update_layout(height=460, margin=dict(t=50, b=10, l=10, r=10), showlegend=False)
    show_chart(figure, readout_column, subtitle=label)
    last = paths[paths["iteration"] == paths["iteration"].max()]
    pruned_last = last[last["group"].str.startswith("pruned")]
    longest = pruned_last.loc[pruned_last["group"].map(lambda g: int(g.rsplit(" ", 1)[-1])).idxmin()]
    kept = after[after["status"] == "kept"]["relative_norm"]
    st.caption(
        f"At the last ρ = {last['rho'].iloc[0]:.3g}, the channels marked from iteration "
        f"{longest['group'].rsplit(' ', 1)[-1]} keep a median {longest['relative_norm']:.0%} of their dense column "
        "norm: the penalty (ρ/2)·Σ sᵢ‖W[:,i]‖² shrinks the marked columns and the unmarked ones take over what they "
        f"carried. The read-out then removes the λ channels with the largest s (norm 0) and refits the others: the "
        f"kept columns end at a median {kept.median():.0%} of their dense norm (range {kept.min():.0%}–"
        f"{kept.max():.0%}). ρ changes which channels are marked next only through W, via the scores.")

st.subheader("Animation")
bars_column, all_layers_column = st.columns(2)
n_frames = len(frame_labels)
with bars_column:
    frames = pd.DataFrame({"frame": np.repeat(frame_labels, len(channels)),
                           "position": np.tile(np.arange(len(channels)), n_frames),
                           "s": layer_frames[:, channels].reshape(-1)})
    figure = px.bar(frames, x="position", y="s", animation_frame="frame", range_y=[0, 1],
                    labels={"position": axis_title, "frame": "ρ iteration"},
                    title=f"Layer {layer}: s per channel, one frame per ρ iteration, then the read-out")
    figure.update_traces(marker_line_width=0)
    figure.update_layout(height=420, margin=dict(t=50, b=10, l=10, r=10), bargap=0)
    show_chart(figure, subtitle=label)
with all_layers_column:
    drawn = [with_readout[i][:, display_channels(masks[i, -1, :widths[i]], max_channels, sort_by_mask)]
             for i in range(n_layers)]
    columns = max(frames.shape[1] for frames in drawn)  # a narrower layer's row ends early (NaN: not drawn)
    per_layer = np.stack([np.pad(frames, ((0, 0), (0, columns - frames.shape[1])), constant_values=np.nan)
                          for frames in drawn], axis=1)  # [frame, layer, channel]
    figure = px.imshow(per_layer, animation_frame=0, zmin=0, zmax=1, aspect="auto",
                       color_continuous_scale=MASK_COLOUR_SCALE,
                       labels={"animation_frame": "ρ iteration", "x": axis_title, "y": "layer", "color": "s"},
                       title="All layers: s, one frame per ρ iteration, then the read-out")
    for step, frame_label in zip(figure.layout.sliders[0].steps, frame_labels):  # frames are numbered from 0
        step.label = frame_label
    figure.update_layout(height=420, margin=dict(t=50, b=10, l=10, r=10))
    figure.update_yaxes(dtick=layer_tick)
    show_chart(figure, subtitle=label)

st.subheader("All layers")
gap = trace.pivot(index="iteration", columns="layer", values="readout_gap")
identical = bool(np.allclose(gap.to_numpy(), gap.iloc[:, [0]].to_numpy(), atol=1e-6))
gap_column, share_column, mind_column = chart_columns(3)
with gap_column:
    if identical:
        figure = px.line(x=gap.index, y=gap.iloc[:, 0], markers=True,
                         labels={"x": "ρ iteration", "y": "Σ|s − b(s)| ÷ λ"},
                         title=f"Distance of s from its read-out:<br>the same in all {n_layers} layers")
    else:
        long = trace[["layer", "iteration", "readout_gap"]]
        figure = px.line(long, x="iteration", y="readout_gap", color="layer",
                         labels={"readout_gap": "Σ|s − b(s)| ÷ λ", "iteration": "ρ iteration"},
                         title="Distance of s from its read-out, per layer")
    figure.update_yaxes(rangemode="tozero")
    figure.update_xaxes(dtick=1)
    figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10))
    show_chart(figure, subtitle=label)
    st.caption("One line: every layer's s takes the same values, because α and the schedule alone set them; the "
               "layers differ only in which channels get which value (right)." if identical else
               "The layers differ: with this start and schedule the values s takes depend on the data.")
with share_column:
    share = marked_share_of_final(masks, readouts)
    figure = px.imshow(share.T, zmin=0, zmax=1, aspect="auto", color_continuous_scale="Blues",
                       x=np.arange(n_layers), y=np.arange(1, n_iterations + 1),
                       labels={"x": "layer", "y": "ρ iteration", "color": "share"},
                       title="Share of the finally pruned channels<br>already marked")
    figure.update_layout(height=380, margin=dict(t=50, b=10, l=10, r=10))
    show_chart(figure, subtitle=label)
with mind_column:
    changed = changed_mind_counts(masks, readouts)
    if changed.sum() == 0:
        st.markdown("**Channels marked at some iteration, kept in the end**")
        st.info("None, in any layer: every channel the path ever marked was pruned in the end. A marked channel's "
                "column shrinks under the penalty, which lowers its score further, so the path rarely changes its "
                "mind (How SPAP works has a toy layer where it does).", icon=":material/info:")
    else:
        figure = px.bar(x=np.arange(n_layers), y=changed, labels={"x": "layer", "y": "channels"},
                        title="Channels marked at some iteration,<br>kept in the end")
        figure.update_layout(height=380, margin=dict(t=60, b=10, l=10, r=10))
        show_chart(figure, subtitle=label)
        st.caption(f"{int(changed.sum())} channels over all layers (per layer {int(changed.min())}–"
                   f"{int(changed.max())}) changed the path's mind: marked early, their columns shrank, then others "
                   "scored lower and the read-out kept them.")

head_masks = head_soft_masks(result)
if head_masks.size:
    st.subheader("Attention heads")
    heads = head_table(result)
    st.caption("The same penalty path on each layer's heads, before its MLP: a head is a block of the attention "
               "output projection's columns, and (ρ/2)·s_h·‖W[:, block h]‖² acts on the whole block. "
               + head_story(result, heads))
    head_column, map_column = chart_columns(2)
    layer_heads = heads[heads["layer"] == layer]
    pruned = (layer_heads["status"] == "pruned").to_numpy(dtype=np.float32)
    figure = px.imshow(np.vstack([head_masks[layer], pruned]), zmin=0, zmax=1, aspect="auto",
                       color_continuous_scale=MASK_COLOUR_SCALE, x=layer_heads["label"].tolist(), y=frame_labels,
                       labels={"x": "head · its KV group", "y": "ρ iteration", "color": "s"},
                       title=f"Layer {layer}: s of each head over ρ iterations, then the read-out")
    figure.update_yaxes(type="category")
    figure.update_xaxes(type="category")
    figure.update_layout(height=420, margin=dict(t=50, b=10, l=10, r=10))
    show_chart(figure, head_column, subtitle=label)
    first = heads.pivot(index="layer", columns="label", values="first_marked")[layer_heads["label"].tolist()]
    status = heads.pivot(index="layer", columns="label", values="status")[first.columns]
    figure = px.imshow(first.to_numpy(), aspect="auto", color_continuous_scale="Reds_r", x=list(first.columns),
                       y=first.index, zmin=0, labels={"x": "head · its KV group", "y": "layer",
                                                      "color": "first marked"},
                       title="Every layer: the ρ iteration each head was first marked (0 = never)")
    figure.update_traces(text=np.where(status.to_numpy() == "pruned", "✕", ""), texttemplate="%{text}")
    figure.update_xaxes(type="category")
    figure.update_yaxes(dtick=layer_tick)
    figure.update_layout(height=420, margin=dict(t=50, b=10, l=10, r=10))
    show_chart(figure, map_column, subtitle=label)
    st.caption("✕ = pruned. Heads go within their KV group first; a whole group goes (with its key and value "
               "projections) only where the layout asks for fewer groups.")
