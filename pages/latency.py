"""Latency & memory: the dense model and the latest run's pruned model timed on this device with
identical inputs (median with min/max over repeats), next to the ratios theory predicts from
linear-layer FLOPs and parameter counts."""

from functools import partial

import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.subplots import make_subplots

from pages._charts import chart_columns, panel_grid, show_chart
from pages._estimates import estimate_caption
from pages._job_progress import job_panel
from pages._jobs import submit_job
from pages._model import device_label, require_model
from pages._palette import DENSE_AND_PRUNED
from pages._results import latest_latency, require_outcome, require_pruned_model
from pages._routing import ensure_routed
from pages._summaries import result_label
from pages._widgets import bounded_number
from spap_core.evaluation.latency import context_where_attention_matches_mlp, prefill_flops_by_part
from spap_core.pipeline.parameters import LATENCY_PARAMETERS
from spap_service.analysis import speedup_verdict
from spap_service.comparisons import RATIO_LABELS, LatencyOptions, compare_latency
from spap_service.estimates import latency_seconds, model_speed
from spap_service.presets import interactive_run_size

ensure_routed()

COLORS = DENSE_AND_PRUNED
CONTEXT_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
WEIGHT_MEMORY_ROW = "weight memory (parameters), MB"  # the models' own memory: what the comparison is about

st.title("Latency & memory")
loaded = require_model()
outcome = require_outcome()
label = result_label(outcome)
require_pruned_model(loaded, outcome, "to time the pruned model")
settings = outcome.request.settings
removed = f"{settings.sparsity:.0%} of MLP channels" + (
    "" if outcome.result.heads is None else
    f" and {outcome.result.heads.layout.removed} of {outcome.result.heads.layout.heads} heads per layer")
st.caption(f"Measured on {device_label(loaded.device)}: the dense model against the latest run's pruned model "
           f"({removed} removed).")

with st.expander("Where the attention heads start to matter: a prefill's FLOPs per token against the context",
                 expanded=outcome.result.heads is not None):
    contexts = CONTEXT_LENGTHS
    models = {"dense": loaded.model, "pruned": outcome.pruned_model()}
    parts = pd.DataFrame([{"model": name, "context": context, "part": part, "GFLOPs per token": value}
                          for name, model in models.items() for context in contexts
                          for part, value in prefill_flops_by_part(model, context).items()])
    figure = px.area(parts, x="context", y="GFLOPs per token", color="part", facet_col="model", log_x=True,
                     labels={"context": "context (tokens)"},
                     title="A prefill's FLOPs per token, by where they are spent")
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    figure.update_layout(height=380, margin=dict(t=60, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.3))
    show_chart(figure, subtitle=label)
    crossings = {name: context_where_attention_matches_mlp(model) for name, model in models.items()}
    st.caption(f"The attention's context products (QKᵀ and attention-value, 2·layers·context·heads·head_dim per "
               f"token) grow with the context; MLP channels do not touch them, only pruned heads do. They cost as much "
               f"as the MLPs from {crossings['dense']:,} tokens of context on in the dense model and from "
               f"{crossings['pruned']:,} in the pruned one" + (
                   ": beyond that, removing heads saves more per token than removing channels."
                   if outcome.result.heads is not None else
                   "; this run kept every head (Run SPAP's head sparsity removes some)."))

with st.form("latency_settings", enter_to_submit=False):
    columns = st.columns(4)
    defaults = {"prefill_tokens": min(256, interactive_run_size(loaded.device).eval_len), "decode_tokens": 16,
                "repeats": 5, "warmup": 1}
    seqlen, decode_tokens, repeats, warmup = (
        bounded_number(declared, defaults[declared.key], f"latency_{declared.key}", container=column)
        for declared, column in zip(LATENCY_PARAMETERS, columns))
    submitted = st.form_submit_button("Measure", type="primary", icon=":material/timer:")
estimate = latency_seconds(model_speed(loaded), int(seqlen), int(decode_tokens), int(repeats), int(warmup))
st.caption(estimate_caption("This measurement", estimate))
if submitted:
    options = LatencyOptions(seqlen=int(seqlen), decode_tokens=int(decode_tokens), repeats=int(repeats),
                             warmup=int(warmup))
    submit_job("latency", "Latency: dense vs pruned", partial(compare_latency, loaded, outcome, options, label),
               estimate)

job_panel("latency")
comparison = latest_latency()
if comparison is None:
    st.info("Press Measure: both models are timed on the job queue, one after the other.")
    st.stop()
if comparison.run_finished_at != outcome.finished_at:
    st.caption("These numbers belong to an earlier run; press Measure to time the latest one.")
label = comparison.run_label  # the charts name the run that was measured

reports = {"dense": comparison.dense, "pruned": comparison.pruned}
grid_rows, grid_columns = panel_grid(4)
figure = make_subplots(rows=grid_rows, cols=grid_columns, horizontal_spacing=0.1, vertical_spacing=0.2, subplot_titles=(
    f"prefill of {comparison.options.seqlen} tokens (ms)", "decode (tokens/s)", "weights (MB)", "parameters (M)"))
cells = [(index // grid_columns + 1, index % grid_columns + 1) for index in range(4)]
for name, report in reports.items():
    for timing, (row, column) in ((report.prefill_ms, cells[0]), (report.decode_tokens_per_s, cells[1])):
        figure.add_bar(x=[name], y=[timing.median], marker_color=COLORS[name], showlegend=False, row=row, col=column,
                       error_y=dict(type="data", symmetric=False, array=[timing.high - timing.median],
                                    arrayminus=[timing.median - timing.low]))
    for value, (row, column) in ((report.weight_mb, cells[2]), (report.parameters / 1e6, cells[3])):
        figure.add_bar(x=[name], y=[value], marker_color=COLORS[name], showlegend=False, row=row, col=column)
figure.update_layout(height=360 * grid_rows, margin=dict(t=50, b=10, l=10, r=10))
show_chart(figure, subtitle=label)
st.caption(f"Bars: median of {comparison.options.repeats} timed repeats after {comparison.options.warmup} warm-up; "
           f"error bars: fastest and slowest repeat. Decoding greedily generates {comparison.options.decode_tokens} "
           f"tokens with a KV cache after a 32-token prompt. {comparison.dense.threads} CPU threads.")

verdicts = [
    speedup_verdict("Prefill", comparison.dense.prefill_ms, comparison.pruned.prefill_ms, "ms", lower_is_faster=True),
    speedup_verdict("Decode", comparison.dense.decode_tokens_per_s, comparison.pruned.decode_tokens_per_s,
                    "tokens/s", lower_is_faster=False),
]
for conclusive, sentence in verdicts:
    (st.success if conclusive else st.warning)(sentence, icon=":material/timer:" if conclusive else ":material/help:")
if not all(conclusive for conclusive, _ in verdicts):
    st.caption("For a conclusive measurement: more repeats (15 or more), a longer prefill window, and a quiet "
               "machine — nothing else on the job queue or the CPU while it runs; or, outside the app, "
               "`python bench/latency.py --repeats 21`, which times the models in alternation over many rounds.")

ratio_column, memory_column = chart_columns([3, 2], stack_from=2)
ratios = comparison.ratios()
inconclusive = {RATIO_LABELS["prefill_speedup"]: not verdicts[0][0], RATIO_LABELS["decode_speedup"]: not verdicts[1][0]}
with ratio_column:
    table = pd.DataFrame({"ratio": list(ratios), "dense ÷ pruned": list(ratios.values()),
                          "kind": ["measured, inconclusive" if inconclusive.get(name) else
                                   "measured" if "measured" in name else "theory" for name in ratios]})
    figure = px.bar(table, x="dense ÷ pruned", y="ratio", color="kind", orientation="h", text_auto=".2f",
                    color_discrete_map={"measured": "#1f77b4", "measured, inconclusive": "#c7c7c7",
                                        "theory": "#ff7f0e"},
                    title="Measured speed-ups next to the theoretical ratios")
    figure.add_vline(x=1, line_dash="dot", line_color="gray")
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10), yaxis_title="")
    show_chart(figure, subtitle=label)
with memory_column:
    st.markdown("**Memory and compute per token**")
    prefill_memory = comparison.dense.prefill_memory  # both models were measured on one device, alike
    # quantities as rows: two narrow columns fit beside the chart where four wide ones were cut off
    st.dataframe(pd.DataFrame({name: [f"{r.weight_mb:.4g}", f"{r.prefill_memory_mb:.4g}",
                                      f"{r.linear_gflops_per_token * 1e3:.4g}",
                                      f"{r.attention_gflops_per_token * 1e3:.4g}"] for name, r in reports.items()},
                              index=[WEIGHT_MEMORY_ROW, f"{prefill_memory.label}, MB", "linear MFLOPs / token",
                                     "attention MFLOPs / token"]), width="stretch")
    st.caption(f"{WEIGHT_MEMORY_ROW}: the bytes of each model's parameters, the memory pruning saves "
               f"(dense ÷ pruned: {comparison.dense.weight_mb / comparison.pruned.weight_mb:.2f}). "
               f"{prefill_memory.label}: {prefill_memory.meaning}. Linear FLOPs count every Linear layer "
               "(what pruning shrinks); attention FLOPs are the QKᵀ and attention-value products against the "
               "prefill context (Kaplan et al.'s 2·layers·context·d_attn), which pruning MLP channels leaves as they "
               + ("are and this run's pruned heads shrink. " if outcome.result.heads is not None else "are. ") +
               "The prefill FLOPs ratio counts both: the speed-up a compute-bound prefill could reach. Small "
               "models on CPUs are often bound by overheads instead.")
