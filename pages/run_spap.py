"""Run SPAP: every hyperparameter in one form (bound to the URL, so a link shares them), the run
as a background job with live progress and Cancel, and the results with downloads."""

import json
from functools import partial
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from pages._charts import show_chart
from pages._estimates import estimate_caption, recovery_estimate, time_estimate
from pages._job_progress import job_panel
from pages._jobs import refused_before_queueing, submit_job
from pages._model import require_model
from pages._recovery import recovery_figure, recovery_section
from pages._requests import (
    RUN_FORM,
    data_spec,
    form_defaults,
    form_request,
    form_values,
    preset_values,
    run_size_note,
    shown_recovery_parameters,
)
from pages._results import latest_outcome, mean_layer_error, pruned_model_at_hand
from pages._routing import ensure_routed
from pages._saved_runs import SHARED_RUN_PARAM, saved_runs_panel
from pages._state import PRESENTATION_PARAM, session
from pages._summaries import evaluation_caption, perplexity_intervals, result_label
from pages._text import plain
from pages._widgets import fill_form, form_is_fresh, ignored_url_parameters, link_parameters, parameter_widget
from spap_core.errors import SpapInputError
from spap_core.pipeline.parameters import GROUPS, RECOVERY_PARAMETERS, parameter
from spap_service.analysis import layer_table, time_breakdown, trace_table
from spap_service.compare import (
    dense_verdict_line,
    record_perplexity_text,
    recovery_cancelled_line,
    recovery_summary,
    recovery_verdict_line,
    seeds_reading,
)
from spap_service.executors import point_executor
from spap_service.limits import server_limits
from spap_service.presets import CLASS_DEMO
from spap_service.recovery import curve_from_record
from spap_service.runs import RunRequest, pruned_model_zip

ensure_routed()

st.title("Run SPAP")
loaded = require_model()
spec = data_spec()
st.caption(f"{run_size_note()} Data: calibration from {plain(spec.calibration.label)}, evaluation on "
           f"{plain(spec.evaluation.label)} (change both on Model & data).")
if (limits_text := server_limits().describe()) is not None:
    st.caption(limits_text)
defaults = form_defaults()
state = session()
preset_column, why_column, reset_column = st.columns([2, 5, 2], vertical_alignment="center")
if preset_column.button(f"{CLASS_DEMO.name} preset", icon=":material/school:", help="Fill the form with it."):
    state.pending_form = preset_values(CLASS_DEMO)
    st.rerun()
why_column.caption(f"{CLASS_DEMO.why} It sets {', '.join(CLASS_DEMO.fields())}; every other field to its default.")
if reset_column.button("Back to defaults", icon=":material/restart_alt:", help="Every field to its default."):
    state.pending_form = defaults
    st.rerun()
# The form shows exactly the settings of the run it shows: a preset or the defaults just asked for,
# a run opened from a link or the saved runs, else (on a fresh visit) the latest run.
shown_run = latest_outcome()
to_fill = state.pending_form
state.pending_form = None
if to_fill is None and shown_run is not None and form_is_fresh(RUN_FORM):
    to_fill = form_values(shown_run.request)
if to_fill is not None and (missing := fill_form(to_fill, RUN_FORM)):
    st.info(f"The run shown has no value for {', '.join(missing)} (not a run of this form's method): the form "
            "shows the defaults, none of its settings.", icon=":material/info:")
ignored = ignored_url_parameters(link_parameters(), known={SHARED_RUN_PARAM, PRESENTATION_PARAM}, form=RUN_FORM)
if ignored:
    st.warning("This link's settings were partly ignored; the form shows the defaults for these: "
               + "; ".join(ignored) + ".", icon=":material/link_off:")

# outside the form: choosing a recovery mode shows the settings it uses at once
values = recovery_section(defaults)
with st.form("spap_settings", enter_to_submit=False):  # Enter in a number box must not start a job
    # What a class varies first; everything else waits in the expander below.
    lead = [p for p in RUN_FORM if p.lead]
    for column, declared in zip(st.columns(len(lead), gap="medium"), lead):
        with column:
            values[declared.key] = parameter_widget(declared, defaults[declared.key])
    in_form = [p for p in RUN_FORM if p not in RECOVERY_PARAMETERS]
    rest = [group for group in GROUPS if any(p.group == group and not p.lead for p in in_form)]
    with st.expander("More settings: " + ", ".join(GROUPS[group].lower() for group in rest)):
        for column, group in zip(st.columns(len(rest), gap="medium"), rest):
            with column:
                st.markdown(f"**{GROUPS[group]}**")
                for declared in in_form:
                    if declared.group == group and not declared.lead:
                        values[declared.key] = parameter_widget(declared, defaults[declared.key])
    submitted = st.form_submit_button("Run SPAP", type="primary", icon=":material/play_arrow:")

try:
    request: RunRequest | None = form_request(values)
except SpapInputError as exc:
    request = None
    if submitted:
        st.error(plain(exc))
if request is not None:
    estimate = time_estimate(loaded, [request])
    # a form's values change when it is submitted: the estimate is for the settings shown as last submitted
    recovery = request.recovery
    st.caption(estimate_caption("This run", estimate, seeds=request.seeds,
                                recovery=recovery.describe() if recovery.enabled else None,
                                recovery_s=recovery_estimate(loaded, request) if recovery.enabled else None))
    if submitted:
        state.submitted_run = request
        if not refused_before_queueing(loaded, [request]):
            settings = request.settings
            head_note = f", {settings.head_sparsity:.0%} of heads" if settings.head_sparsity else ""
            asked = (f"a parameter budget of {request.budget.share:.0%}" if request.budget is not None
                     else f"{settings.sparsity:.0%} sparsity{head_note}")
            over_seeds = f" over {request.seeds} calibration seeds" if request.seeds > 1 else ""
            recovered = f", then {request.recovery.mode} recovery" if request.recovery.enabled else ""
            submit_job("run", f"SPAP run at {asked}{over_seeds}{recovered}",
                       partial(point_executor().run, loaded, request, owner=state.owner), estimate)

job_panel("run")
saved_runs_panel()
outcome = latest_outcome()  # a run that finished since the form was drawn included
if outcome is None:
    st.stop()

record = outcome.record
label = result_label(outcome)
st.subheader(f"Latest result: {label}")
metrics = st.columns(5)
metrics[0].metric("Perplexity, dense", f"{record['ppl_dense']:.2f}")
metrics[1].metric("Perplexity, pruned", f"{record['ppl']:.2f}", delta=f"{record['ppl'] - record['ppl_dense']:+.2f}",
                  delta_color="inverse")
metrics[2].metric("Parameters", f"{record['params_after'] / 1e6:.2f} M",
                  delta=f"{record['params_after'] / record['params_before'] - 1:+.1%} "
                        f"of {record['params_before'] / 1e6:.2f} M",
                  delta_color="off")
layer_error = mean_layer_error(outcome)
metrics[3].metric("Mean layer error", f"{layer_error:.4f}",
                  help="Mean over layers of each layer's objective ÷ ½‖Y‖² (the dashed line in the per-layer chart): "
                       "0 = every layer reproduces its dense MLP output, 1 = as bad as dropping the MLP.")
metrics[4].metric("Pruning time", f"{record['prune_seconds']:.1f} s")
st.caption(plain(perplexity_intervals(record)))
st.markdown(plain(dense_verdict_line(record)))
if (before_and_after := recovery_summary(record)) is not None:
    st.markdown(plain(before_and_after))
    st.markdown(plain(recovery_verdict_line(record)))
    if (curve := curve_from_record(record)) is not None:
        show_chart(recovery_figure(curve, len(curve)), subtitle=label)
if (cancelled := recovery_cancelled_line(record)) is not None:
    st.info(plain(cancelled), icon=":material/cancel:")
if (seeds_note := seeds_reading(record)) is not None:
    st.markdown(plain(f"Over its calibration seeds: {record_perplexity_text(record)}, windows and seeds combined. "
                      f"{seeds_note}"))
st.caption(evaluation_caption(record)
           + (" Dense perplexity came from the cache." if record["dense_ppl_cached"] else ""))
if outcome.result.heads is not None:
    heads = outcome.result.heads
    errors = [layer.relative_error for layer in heads.layers]
    st.caption(f"Attention heads: {heads.layout.describe()} in every layer; the heads' layer error (objective ÷ "
               f"½‖Y‖² of the attention output) is {np.mean(errors):.4f} on average ({min(errors):.4f}–"
               f"{max(errors):.4f}). Mask evolution and Scores show which heads went.")
if (budget := record.get("budget")) is not None:  # the split the run chose, as it recorded it
    pruned = outcome.result.settings
    weighed = budget["summed_layer_errors"]
    st.info(f"One parameter budget, split between channels and heads: {budget['param_sparsity']:.0%} of the decoder "
            f"layers' parameters, met by removing {pruned.sparsity:.1%} of the MLP channels and "
            f"{pruned.head_sparsity:.0%} of the heads ({budget['removed_of_layers']:.1%} of those parameters)."
            + ("" if not weighed else " Summed layer errors by heads removed per layer, the smallest chosen: "
               + ", ".join(f"{removed}: {float(error):.4g}" for removed, error in weighed.items()) + "."),
            icon=":material/call_split:")
for note in record.get("adjustments", []):
    st.info(f"This run: {note}", icon=":material/info:")

timing_column, layer_column = st.columns(2)
with timing_column:
    timings = time_breakdown(record, outcome.result.settings)
    figure = px.bar(x=list(timings.values()), y=list(timings), orientation="h",
                    title="Where the time went", labels={"x": "seconds", "y": ""})
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
    show_chart(figure, subtitle=label)
with layer_column:
    layers = layer_table(outcome.result)
    figure = px.bar(layers, x="layer", y="relative_error",
                    title="Relative reconstruction error per layer",
                    labels={"relative_error": "objective ÷ ½‖Y‖²"})
    figure.add_hline(y=layer_error, line_dash="dash", line_color="gray", annotation_text=f"mean {layer_error:.4f}")
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
    figure.update_xaxes(dtick=max(1, len(layers) // 10))
    show_chart(figure, subtitle=label)

st.markdown(f"**Downloads** (named after the run: `{outcome.file_stem}-…`)")
download_columns = st.columns(4)
if (why_not := pruned_model_at_hand(loaded, outcome, "to download them")) is None:
    download_columns[0].download_button("Pruned model (.zip)", data=partial(pruned_model_zip, outcome),
                                        file_name=f"{outcome.file_stem}-model.zip", mime="application/zip",
                                        icon=":material/folder_zip:", on_click="ignore")
else:
    download_columns[0].caption(why_not)
download_columns[1].download_button("Metrics (.json)", data=json.dumps(record, indent=2, default=float),
                                    file_name=f"{outcome.file_stem}-metrics.json", mime="application/json",
                                    on_click="ignore")
download_columns[2].download_button("ρ trace (.csv)", data=trace_table(outcome.result).to_csv(index=False),
                                    file_name=f"{outcome.file_stem}-trace.csv", mime="text/csv", on_click="ignore")
download_columns[3].download_button("Layers (.csv)", data=layers.to_csv(index=False),
                                    file_name=f"{outcome.file_stem}-layers.csv",
                                    mime="text/csv", on_click="ignore")

unused_recovery = {p.key for p in RECOVERY_PARAMETERS} - {
    p.key for p in shown_recovery_parameters(outcome.request.recovery.mode)}  # the form's defaults stand for them
shared = {key: parameter(key).format(value) if isinstance(value, bool) else value
          for key, value in form_values(outcome.request).items() if key not in unused_recovery}
st.markdown("**Share these settings**: this link opens this page with the form filled in as for this run.")
st.code(f"{st.context.url or ''}?{urlencode(shared)}", language=None, wrap_lines=True)
if outcome.saved_to is not None:
    st.markdown("**Share these results**: this link opens this run's saved results (every page but those that need "
                "the pruned weights: the model download, latency and dense vs pruned text).")
    st.code(f"{st.context.url or ''}?{urlencode({SHARED_RUN_PARAM: outcome.saved_to.name})}", language=None,
            wrap_lines=True)

st.markdown("**Runs in this session**")
st.dataframe(pd.DataFrame(session().run_history), hide_index=True, width="stretch")
