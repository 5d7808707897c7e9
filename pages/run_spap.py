"""Run SPAP: every hyperparameter in one form (bound to the URL, so a link shares them), the run
as a background job with live progress and Cancel, and the results with downloads."""

import json
from dataclasses import replace
from functools import partial
from urllib.parse import urlencode

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._routing import ensure_routed
from pages._shared import (
    SHARED_RUN_PARAM,
    data_spec,
    evaluation_caption,
    job_panel,
    latest_outcome,
    mean_layer_error,
    require_model,
    run_size_note,
    saved_runs_panel,
    session_id,
    submit_job,
    target_device,
)
from spap_core.errors import SpapInputError
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.problem import PRECISIONS, PRIORS, RefitSettings
from spap_core.methods.registry import PruneSettings
from spap_core.methods.spap import SCHEDULES, SCORES, STARTS, PenaltySettings
from spap_service.analysis import layer_table, trace_table
from spap_service.presets import interactive_settings
from spap_service.runs import RunRequest, pruned_model_zip, run_pruning

ensure_routed()

URL = "query-params"  # every form widget is bound to a query parameter named by its key

st.title("Run SPAP")
loaded = require_model()
spec = data_spec()
st.caption(f"{run_size_note()} Data: calibration from {spec.calibration.label}, evaluation on "
           f"{spec.evaluation.label} (change both on Model & data).")

defaults = interactive_settings(target_device())
penalty, refit, altmin = defaults.penalty, defaults.refit, defaults.altmin


def pick(label: str, options: tuple[str, ...], default: str, key: str) -> str:
    """A choice between named variants, bound to the URL like every other setting."""
    return st.selectbox(label, list(options), index=options.index(default), key=key, bind=URL)


with st.form("spap_settings"):
    # What a class varies first; everything else waits in the expander below.
    lead_columns = st.columns(4, gap="medium")
    with lead_columns[0]:
        sparsity = st.slider("Sparsity", 0.05, 0.95, defaults.sparsity, 0.05, key="sparsity", bind=URL)
        st.caption("Fraction λ/n of MLP channels removed from every layer (uniform).")
    with lead_columns[1]:
        iterations = st.slider("K: ρ iterations", 1, 60, penalty.iterations, key="K", bind=URL)
        st.caption("How many times s steps and ρ grows; with the ramp, the blocks channels are marked in.")
    with lead_columns[2]:
        tau = st.slider("τ: penalty growth", 1.05, 8.0, penalty.tau, 0.05, key="tau", bind=URL)
        st.caption("ρ ← τ·ρ after every iteration: how hard the marked columns of W are pushed to zero.")
    with lead_columns[3]:
        momentum = st.slider("α: mask momentum", 0.05, 1.0, penalty.momentum, 0.05, key="alpha", bind=URL)
        st.caption("Step of s towards the marked channels; 1 jumps straight to the marks.")
    with st.expander("More settings: penalty start, channel selection, refit, alternating minimization, calibration"):
        penalty_column, selection_column, refit_column, altmin_column, calibration_column = st.columns(5, gap="medium")
        with penalty_column:
            st.markdown("**Penalty path**")
            rho0 = st.number_input("ρ⁽⁰⁾: initial penalty", 1e-6, 1e3, penalty.rho0, step=0.005, format="%g",
                                   key="rho0", bind=URL)
            st.caption("First weight of the penalty Σ sᵢ‖W[:,i]‖², relative to mean diag H.")
            start = pick("Start s⁽⁰⁾", STARTS, penalty.start, "start")
            st.caption("zero = nothing marked (the paper); centre = λ/n everywhere (on the capped simplex).")
        with selection_column:
            st.markdown("**Channel selection**")
            balance = st.slider("t: score balance", 0.0, 3.0, penalty.balance, 0.1, key="t", bind=URL)
            st.caption("Score ‖W[:,i]‖·mᵢᵗ: how much the activation magnitude mᵢ counts.")
            score = pick("Magnitude mᵢ in the score", SCORES, penalty.score, "score")
            st.caption("marginal = ‖Zᵢ‖; centred = ‖Zᵢ − mean‖ (what the bias cannot absorb); partial = what "
                       "channel i adds beyond the others (1/√[A⁻¹]ᵢᵢ).")
            schedule = pick("Marking schedule", SCHEDULES, penalty.schedule, "schedule")
            st.caption("fixed = mark λ channels every step; ramp = ⌈λk/K⌉ at step k, removed in blocks.")
        with refit_column:
            st.markdown("**Refit and targets**")
            ridge = st.number_input("δ: ridge", 0.0, 100.0, refit.ridge, step=0.005, format="%g", key="delta",
                                    bind=URL)
            st.caption("δ·h̄ added to every solve, for stability (relative to mean diag H).")
            prior = pick("Refit prior", PRIORS, refit.prior, "prior")
            st.caption("The ridge pulls refitted weights towards the dense ones or towards zero.")
            bias = st.checkbox("Bias compensation", refit.bias, key="bias", bind=URL)
            st.caption("A down_proj bias absorbs the mean output of the pruned channels.")
            precision = pick("Solver precision", PRECISIONS, refit.precision, "precision")
            st.caption("float32 solves faster; float64 is safer on ill-conditioned layers.")
            correction = st.slider("β: target correction", 0.0, 1.0, defaults.target_correction, 0.05, key="beta",
                                   bind=URL)
            st.caption("Each layer also repairs β of the error earlier pruned layers left in the stream.")
        with altmin_column:
            st.markdown("**Alternating minimization**")
            rounds = st.slider("Rounds", 0, 10, altmin.rounds, key="am_rounds", bind=URL)
            st.caption("0 = off. Each round: Adam on gate/up, then an exact down_proj refit.")
            steps = st.slider("Adam steps per round", 1, 200, altmin.steps, key="am_steps", bind=URL)
            st.caption("Gradient steps on gate_proj and up_proj in every round.")
            learning_rate = st.number_input("Step size (lr)", 1e-7, 1.0, altmin.lr, step=1e-5, format="%g",
                                            key="am_lr", bind=URL)
            st.caption("Adam learning rate for gate/up.")
            batch_tokens = st.number_input("Tokens per Adam step", 16, 65536, altmin.batch_tokens, key="am_batch",
                                           bind=URL)
            st.caption("Calibration tokens sampled for each gradient step.")
        with calibration_column:
            st.markdown("**Calibration**")
            nsamples = st.number_input("Samples", 1, 1024, spec.nsamples, key="nsamples", bind=URL)
            st.caption("Random windows of the calibration text.")
            seqlen = st.number_input("Tokens per sample", 8, 8192, spec.seqlen, key="seqlen", bind=URL)
            st.caption("Length of each window; samples × tokens = calibration tokens.")
            seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="seed", bind=URL)
            st.caption("Chooses the calibration windows (and the Adam batches).")
    submitted = st.form_submit_button("Run SPAP", type="primary", icon=":material/play_arrow:")

if submitted:
    try:
        settings = PruneSettings(
            method="spap", sparsity=float(sparsity), target_correction=float(correction),
            penalty=PenaltySettings(iterations=int(iterations), rho0=float(rho0), tau=float(tau),
                                    balance=float(balance), momentum=float(momentum), score=score,
                                    schedule=schedule, start=start),
            refit=RefitSettings(ridge=float(ridge), prior=prior, bias=bool(bias), precision=precision),
            altmin=AltMinSettings(rounds=int(rounds), steps=int(steps), lr=float(learning_rate),
                                  batch_tokens=int(batch_tokens)),
        )
    except SpapInputError as exc:
        st.error(str(exc))
    else:
        spec = replace(spec, nsamples=int(nsamples), seqlen=int(seqlen))
        st.session_state.update(data_spec=spec, prune_settings=settings, run_seed=int(seed))
        request = RunRequest(settings=settings, seed=int(seed), data=spec)
        submit_job("run", f"SPAP run at {settings.sparsity:.0%} sparsity",
                   partial(run_pruning, loaded, request, owner=session_id()))

job_panel("run")
saved_runs_panel()
outcome = latest_outcome()
if outcome is None:
    st.stop()

record = outcome.record
st.subheader("Latest result")
metrics = st.columns(5)
metrics[0].metric("Perplexity, dense", f"{record['ppl_dense']:.2f}")
metrics[1].metric("Perplexity, pruned", f"{record['ppl']:.2f}", delta=f"{record['ppl'] - record['ppl_dense']:+.2f}",
                  delta_color="inverse")
metrics[2].metric("Parameters", f"{record['params_after'] / 1e6:.2f} M",
                  delta=f"{record['params_after'] / record['params_before'] - 1:+.1%} of {record['params_before'] / 1e6:.2f} M",
                  delta_color="off")
layer_error = mean_layer_error(outcome)
metrics[3].metric("Mean layer error", f"{layer_error:.4f}",
                  help="Mean over layers of each layer's objective ÷ ½‖Y‖² (the dashed line in the per-layer chart): "
                       "0 = every layer reproduces its dense MLP output, 1 = as bad as dropping the MLP.")
metrics[4].metric("Pruning time", f"{record['prune_seconds']:.1f} s")
st.caption(evaluation_caption(record) + (" Dense perplexity came from the cache." if record["dense_ppl_cached"] else ""))

timing_column, layer_column = st.columns(2)
with timing_column:
    timings = {**{f"prune: {k}": v for k, v in record["timings"].items()},
               "pruned perplexity": record["eval_seconds"], "dense perplexity": record["dense_eval_seconds"]}
    figure = px.bar(x=list(timings.values()), y=list(timings), orientation="h", title="Where the time went",
                    labels={"x": "seconds", "y": ""})
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
    st.plotly_chart(figure, width="stretch")
with layer_column:
    layers = layer_table(outcome.result)
    figure = px.bar(layers, x="layer", y="relative_error", title="Relative reconstruction error per layer",
                    labels={"relative_error": "objective ÷ ½‖Y‖²"})
    figure.add_hline(y=layer_error, line_dash="dash", line_color="gray", annotation_text=f"mean {layer_error:.4f}")
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10))
    figure.update_xaxes(dtick=max(1, len(layers) // 10))
    st.plotly_chart(figure, width="stretch")

st.markdown("**Downloads**")
download_columns = st.columns(4)
if outcome.has_model:
    download_columns[0].download_button("Pruned model (.zip)", data=partial(pruned_model_zip, outcome),
                                        file_name="spap-pruned-model.zip", mime="application/zip",
                                        icon=":material/folder_zip:", on_click="ignore")
else:
    download_columns[0].caption("Reloaded run: the pruned weights are not kept; run it again to download them.")
download_columns[1].download_button("Metrics (.json)", data=json.dumps(record, indent=2, default=float),
                                    file_name="spap-metrics.json", mime="application/json", on_click="ignore")
download_columns[2].download_button("ρ trace (.csv)", data=trace_table(outcome.result).to_csv(index=False),
                                    file_name="spap-trace.csv", mime="text/csv", on_click="ignore")
download_columns[3].download_button("Layers (.csv)", data=layers.to_csv(index=False), file_name="spap-layers.csv",
                                    mime="text/csv", on_click="ignore")

settings = outcome.request.settings
shared = {
    "sparsity": settings.sparsity, "K": settings.penalty.iterations, "rho0": settings.penalty.rho0,
    "tau": settings.penalty.tau, "alpha": settings.penalty.momentum, "t": settings.penalty.balance,
    "score": settings.penalty.score, "schedule": settings.penalty.schedule, "start": settings.penalty.start,
    "delta": settings.refit.ridge, "prior": settings.refit.prior, "bias": str(settings.refit.bias).lower(),
    "precision": settings.refit.precision, "beta": settings.target_correction,
    "am_rounds": settings.altmin.rounds, "am_steps": settings.altmin.steps, "am_lr": settings.altmin.lr,
    "am_batch": settings.altmin.batch_tokens, "nsamples": outcome.request.data.nsamples,
    "seqlen": outcome.request.data.seqlen, "seed": outcome.request.seed,
}
st.markdown("**Share these settings**: this link opens this page with the form filled in as for this run.")
st.code(f"{st.context.url or ''}?{urlencode(shared)}", language=None, wrap_lines=True)
if outcome.saved_to is not None:
    st.markdown("**Share these results**: this link opens this run's saved results (every page but the model "
                "download and latency works on them).")
    st.code(f"{st.context.url or ''}?{urlencode({SHARED_RUN_PARAM: outcome.saved_to.name})}", language=None,
            wrap_lines=True)

st.markdown("**Runs in this session**")
st.dataframe(pd.DataFrame(st.session_state.get("run_history", [])), hide_index=True, width="stretch")
