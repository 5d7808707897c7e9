"""Comparisons built from many runs or timings: perplexity-vs-sparsity sweeps, one-hyperparameter
sensitivity scans and dense-vs-pruned latency, each a plain function the job queue runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import pandas as pd

from spap_core.latency import LatencyReport, latency_ratios, measure_latencies
from spap_core.models import LoadedModel
from spap_service.data import dense_perplexity, model_key, prepare_data
from spap_service.jobs import ProgressReporter
from spap_service.runs import RunOutcome, RunRequest, experiment_with_progress


def sweep_sparsities(loaded: LoadedModel, base: RunRequest, methods: list[str], sparsities: list[float],
                     progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Perplexity of every method at every sparsity, all on the same calibration and evaluation
    windows as `base`. One row per (method, sparsity); pruned models are dropped at once."""
    progress.update(phase="tokenizing calibration and evaluation text")
    data = prepare_data(loaded, base.data, base.seed)
    dense, _ = dense_perplexity(loaded, base.data, data.evaluation, progress, cancel)
    rows = []
    points = [(method, sparsity) for method in methods for sparsity in sparsities]
    for index, (method, sparsity) in enumerate(points, start=1):
        progress.update(step=index, n_steps=len(points))
        request = replace(base, settings=replace(base.settings, method=method, sparsity=sparsity))
        experiment = experiment_with_progress(loaded, data, request, dense, progress, cancel)
        rows.append({"method": method, "sparsity": sparsity, "perplexity": experiment.pruned.perplexity,
                     "dense_perplexity": dense.perplexity, "mean_layer_error": experiment.result.mean_layer_error,
                     "params_after": experiment.result.params_after, "eval_tokens": experiment.pruned.tokens})
        del experiment
    return pd.DataFrame(rows)


def sweep_key(loaded: LoadedModel, base: RunRequest, methods: list[str], sparsities: list[float]) -> str:
    """Identifies a sweep's table: model, data and every setting except the swept method/sparsity."""
    neutral = replace(base, settings=replace(base.settings, method="spap", sparsity=0.5))
    return f"sweep|{model_key(loaded)}|{neutral.cache_key}|{sorted(methods)}|{sorted(sparsities)}"


@dataclass(frozen=True)
class ScanParameter:
    """A hyperparameter the sensitivity page can vary: how to read it from a RunRequest, how to
    set it, and a sensible range."""

    label: str
    read: Callable[[RunRequest], float]
    apply: Callable[[RunRequest, float], RunRequest]
    low: float
    high: float
    integer: bool = False
    log_scale: bool = False
    summary_key: str = ""  # the item of the settings summary this parameter sets (left out while it varies)

    def values(self, low: float, high: float, points: int) -> list[float]:
        grid = np.geomspace(low, high, points) if self.log_scale else np.linspace(low, high, points)
        if self.integer:
            return sorted({int(round(v)) for v in grid})
        return [float(f"{v:.4g}") for v in grid]


def _with_settings(request: RunRequest, **changes: Any) -> RunRequest:
    return replace(request, settings=replace(request.settings, **changes))


def _with_penalty(request: RunRequest, **changes: Any) -> RunRequest:
    return _with_settings(request, penalty=replace(request.settings.penalty, **changes))


def _with_refit(request: RunRequest, **changes: Any) -> RunRequest:
    return _with_settings(request, refit=replace(request.settings.refit, **changes))


def _with_altmin(request: RunRequest, **changes: Any) -> RunRequest:
    return _with_settings(request, altmin=replace(request.settings.altmin, **changes))


SCAN_PARAMETERS: dict[str, ScanParameter] = {
    parameter.label: parameter
    for parameter in [
        ScanParameter("sparsity", lambda r: r.settings.sparsity,
                      lambda r, v: _with_settings(r, sparsity=float(v)), 0.1, 0.6, summary_key="sparsity"),
        ScanParameter("K (ρ iterations)", lambda r: r.settings.penalty.iterations,
                      lambda r, v: _with_penalty(r, iterations=int(v)), 1, 40, integer=True, summary_key="K"),
        ScanParameter("ρ⁽⁰⁾ (initial penalty)", lambda r: r.settings.penalty.rho0,
                      lambda r, v: _with_penalty(r, rho0=float(v)), 1e-4, 10.0, log_scale=True, summary_key="rho0"),
        ScanParameter("τ (penalty growth)", lambda r: r.settings.penalty.tau,
                      lambda r, v: _with_penalty(r, tau=float(v)), 1.05, 8.0, summary_key="tau"),
        ScanParameter("t (score balance)", lambda r: r.settings.penalty.balance,
                      lambda r, v: _with_penalty(r, balance=float(v)), 0.0, 2.0, summary_key="t"),
        ScanParameter("α (mask momentum)", lambda r: r.settings.penalty.momentum,
                      lambda r, v: _with_penalty(r, momentum=float(v)), 0.05, 1.0, summary_key="alpha"),
        ScanParameter("δ (ridge)", lambda r: r.settings.refit.ridge,
                      lambda r, v: _with_refit(r, ridge=float(v)), 1e-3, 1.0, log_scale=True, summary_key="delta"),
        ScanParameter("β (target correction)", lambda r: r.settings.target_correction,
                      lambda r, v: _with_settings(r, target_correction=float(v)), 0.0, 1.0, summary_key="beta"),
        ScanParameter("alternating-minimization rounds", lambda r: r.settings.altmin.rounds,
                      lambda r, v: _with_altmin(r, rounds=int(v)), 0, 4, integer=True, summary_key="altmin"),
        ScanParameter("calibration samples", lambda r: r.data.nsamples,
                      lambda r, v: replace(r, data=replace(r.data, nsamples=int(v))), 2, 32, integer=True,
                      summary_key="calibration"),
    ]
}


def scan_key(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float]) -> str:
    """Identifies a scan's table: model, data and every setting except the scanned one."""
    neutral = SCAN_PARAMETERS[parameter].apply(base, values[0])
    return f"scan|{model_key(loaded)}|{neutral.cache_key}|{parameter}|{values}"


def sensitivity_scan(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float],
                     progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Vary one hyperparameter (others as in `base`): mean layer error and perplexity per value. Invalid values are refused before any work starts (SpapInputError)."""
    scan = SCAN_PARAMETERS[parameter]
    requests = [scan.apply(base, value) for value in values]  # dataclass checks run here
    rows = []
    for index, (value, request) in enumerate(zip(values, requests), start=1):
        progress.update(step=index, n_steps=len(values), phase="tokenizing calibration and evaluation text")
        data = prepare_data(loaded, request.data, request.seed)
        dense, _ = dense_perplexity(loaded, request.data, data.evaluation, progress, cancel)
        experiment = experiment_with_progress(loaded, data, request, dense, progress, cancel)
        rows.append({"value": value, "mean_layer_error": experiment.result.mean_layer_error,
                     "perplexity": experiment.pruned.perplexity, "dense_perplexity": dense.perplexity,
                     "eval_tokens": experiment.pruned.tokens})
        del experiment
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyOptions:
    seqlen: int
    decode_tokens: int
    repeats: int
    warmup: int


RATIO_LABELS = {
    "prefill_speedup": "prefill speed-up (measured)",
    "decode_speedup": "decode speed-up (measured)",
    "theoretical_flops_ratio": "prefill FLOPs ratio (theory)",
    "linear_flops_ratio": "linear-layer FLOPs ratio (theory)",
    "theoretical_params_ratio": "parameter ratio (theory)",
    "weight_memory_ratio": "weight memory ratio",
}


@dataclass(frozen=True)
class LatencyComparison:
    run_finished_at: float  # identifies the run whose pruned model was measured
    options: LatencyOptions
    dense: LatencyReport
    pruned: LatencyReport

    def ratios(self) -> dict[str, float]:
        """Dense ÷ pruned (speed-ups and savings > 1 mean the pruned model is better)."""
        ratios = latency_ratios(self.dense, self.pruned)
        return {label: ratios[key] for key, label in RATIO_LABELS.items()}


def compare_latency(loaded: LoadedModel, outcome: RunOutcome, options: LatencyOptions,
                    progress: ProgressReporter, cancel: threading.Event) -> LatencyComparison:
    """Time the dense and the pruned model on the current device with identical inputs, in
    alternation so that both see the same machine load."""
    progress.update(phase="timing the dense and the pruned model in turn")
    dense, pruned = measure_latencies(
        [loaded.model, outcome.result.model], seqlen=options.seqlen, decode_tokens=options.decode_tokens,
        repeats=options.repeats, warmup=options.warmup, cancel=cancel)
    return LatencyComparison(run_finished_at=outcome.finished_at, options=options, dense=dense, pruned=pruned)
