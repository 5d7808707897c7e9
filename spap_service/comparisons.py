"""Comparisons built from many runs or timings: perplexity-vs-sparsity sweeps, one-hyperparameter
sensitivity scans and dense-vs-pruned latency, each a plain function the job queue runs; and what a
sweep's chart needs to be read: the methods too far above the others to share their axis, and its
reading in one sentence."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from spap_core.evaluation.latency import LatencyReport, latency_ratios, measure_latencies
from spap_core.methods.reconstruction import reconstruction_name
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.parameters import BY_KEY, SCANNED, Parameter, describe, with_values
from spap_service.cache import BoundedCache
from spap_service.data import model_key
from spap_service.executors import point_executor
from spap_service.jobs import ProgressReporter
from spap_service.runs import RunOutcome, RunRequest


def method_settings(base: PruneSettings, method: str, values: dict[str, Any]) -> PruneSettings:
    """The settings one method of a sweep runs with: the base's sparsity, reconstruction and
    allocation, the method's own options (the base's when it is the base's method, else its
    defaults), with the `values` of its own declared parameters applied (others are not its own)."""
    own = {key: value for key, value in values.items() if key in BY_KEY and BY_KEY[key].method == method}
    return with_values(base.for_method(method), own)


def sweep_sparsities(loaded: LoadedModel, base: RunRequest, methods: dict[str, PruneSettings],
                     sparsities: list[float], progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Perplexity of every method (with its settings) at every sparsity, all on the same calibration
    and evaluation windows as `base`, its points run by the executor $SPAP_RAY_ADDRESS chooses. One
    row per (method, sparsity), with the settings it ran with; a point that failed on its worker
    has no numbers and says why in `error`."""
    points = [(method, sparsity) for method in methods for sparsity in sparsities]
    requests = [replace(base, settings=replace(methods[method], sparsity=sparsity)) for method, sparsity in points]
    progress.update(phase="tokenizing calibration and evaluation text")
    results = point_executor().measure(loaded, requests, progress, cancel)
    rows = []
    for (method, sparsity), request, result in zip(points, requests, results):
        rows.append({"method": method, "sparsity": sparsity, "perplexity": result.perplexity,
                     "settings": describe(request.settings, omit={"method", "sparsity"}),
                     **provenance_columns(loaded, request),
                     "reconstruction": reconstruction_name(request.settings.reconstruction),
                     "allocation": request.settings.allocation,
                     "dense_perplexity": result.dense_perplexity, "mean_layer_error": result.mean_layer_error,
                     "params_after": result.params_after, "eval_tokens": result.eval_tokens,
                     **({"error": result.error} if result.error else {})})
    return pd.DataFrame(rows)


def provenance_columns(loaded: LoadedModel, request: RunRequest) -> dict[str, str]:
    """The model and the data a sweep's or a scan's row was measured on, as its CSV carries them, so a
    downloaded table still says what it measured once it is set beside another model's."""
    data = request.data
    evaluation = "the whole text" if data.eval_windows == 0 else f"{data.eval_windows} × {data.eval_len}"
    return {"model": loaded.description,
            "calibration": f"{data.nsamples} × {data.seqlen} tokens of {data.calibration.label}, seed {request.seed}",
            "evaluation": f"{evaluation} tokens of {data.evaluation.label}"}


def sweep_key(loaded: LoadedModel, base: RunRequest, methods: dict[str, PruneSettings], sparsities: list[float]) -> str:
    """Identifies a sweep's table: model, data and every method's settings but the swept sparsity."""
    settings = sorted(f"{method}:{asdict(replace(options, sparsity=0.5))}" for method, options in methods.items())
    return f"sweep|{model_key(loaded)}|{base.data.cache_key}|seed={base.seed}|{settings}|{sorted(sparsities)}"


# A method is off the scale when its lowest value is more than this many times the highest median
# below it: on a log axis it would then take at least one decade of its own and squeeze the rest.
OFF_SCALE_FACTOR = 10.0


@dataclass(frozen=True)
class ScaleSplit:
    """A perplexity table cut in two: the methods that share one axis, and those far above them."""

    shown: pd.DataFrame
    off_scale: pd.DataFrame

    @property
    def off_scale_methods(self) -> list[str]:
        return list(dict.fromkeys(self.off_scale["method"]))

    def panel(self, column: str, value: object) -> ScaleSplit:
        """The rows of one panel of the chart (`column` equal to `value`), split the same way."""
        return ScaleSplit(shown=self.shown[self.shown[column] == value],
                          off_scale=self.off_scale[self.off_scale[column] == value])


def split_off_scale(table: pd.DataFrame, panel: str | None = None, factor: float = OFF_SCALE_FACTOR) -> ScaleSplit:
    """Take the methods whose perplexities lie far above the others off their common axis. The rule,
    in each panel (`panel` names the column that splits the table into panels, e.g. the evaluation
    text): order the methods by their median perplexity; going up from the lowest, the first method
    whose lowest perplexity is more than `factor` times the highest median below it is off the scale,
    and so is every method above it. A method off the scale in any panel is off it in every panel, so
    a legend means the same everywhere. The lowest method always stays, so the axis is never empty;
    failed points (no perplexity) count for nothing."""
    measured = table.dropna(subset=["perplexity"])
    panels = [rows for _, rows in measured.groupby(panel)] if panel else [measured]
    off: set[str] = set()
    for rows in panels:
        by_method = rows.groupby("method")["perplexity"]
        medians, lowest = by_method.median().sort_values(), by_method.min()
        for position, method in enumerate(medians.index[1:], start=1):
            if lowest[method] > factor * medians.iloc[:position].max():
                off.update(medians.index[position:])
                break
    far = table["method"].isin(off)
    return ScaleSplit(shown=table[~far], off_scale=table[far])


def readable(perplexity: float) -> str:
    """A perplexity as a room reads it: '65.0', '17,690'."""
    return f"{perplexity:,.0f}" if perplexity >= 1000 else f"{perplexity:.1f}"


def value_ranges(rows: pd.DataFrame) -> str:
    """Each method's perplexities in `rows` as a range: 'magnitude (17,690 to 14,288,015)'."""
    ranges = rows.dropna(subset=["perplexity"]).groupby("method", sort=False)["perplexity"].agg(["min", "max"])
    return ", ".join(f"{method} ({readable(low)})" if low == high else f"{method} ({readable(low)} to {readable(high)})"
                     for method, (low, high) in ranges.iterrows())


def sweep_reading(split: ScaleSplit, dense: float | None = None, where: str = "") -> str:
    """What a perplexity-vs-sparsity chart shows, in one sentence computed from its table (one panel's
    rows, `where` naming the panel): which method is lowest at the highest sparsity measured for two or
    more of them, and by how much; the dense model's perplexity; and which methods are off the chart's
    scale, with their values."""
    measured = split.shown.dropna(subset=["perplexity"])
    compared = measured.groupby("sparsity")["method"].nunique()
    if (compared >= 2).any():
        at = compared[compared >= 2].index.max()
        ranked = measured[measured["sparsity"] == at].sort_values("perplexity")
        best, runner_up = ranked.iloc[0], ranked.iloc[1]
        reading = (f"{where}at {at:.0%} sparsity, {best['method']} has the lowest perplexity, "
                   f"{readable(best['perplexity'])}: {readable(runner_up['perplexity'] - best['perplexity'])} below "
                   f"{runner_up['method']}, the next.")
    elif not measured.empty:
        method, points = measured["method"].iloc[0], measured.sort_values("sparsity")
        first, last = points.iloc[0], points.iloc[-1]
        later = f" and {readable(last['perplexity'])} at {last['sparsity']:.0%}" if len(points) > 1 else ""
        reading = (f"{where}the perplexity of {method} is {readable(first['perplexity'])} at {first['sparsity']:.0%} "
                   f"sparsity{later}.")
    else:
        reading = f"{where}no method has a perplexity on this chart's scale."
    if dense is not None and np.isfinite(dense):
        reading += f" The dense model's is {readable(dense)} (dashed)."
    if not split.off_scale.empty:
        reading += f" Off the axis, far above the others: {value_ranges(split.off_scale)}."
    return reading[:1].upper() + reading[1:]


# Finished sweep and scan tables by their key (model, data, every setting): coming back to the same
# sweep, in any session, shows it at once.
RESULT_TABLES = BoundedCache(max_entries=64)

SCAN_PARAMETERS: dict[str, Parameter] = {parameter.key: parameter for parameter in SCANNED}


def default_scan_range(parameter: Parameter) -> tuple[float, float]:
    """The range a scan of `parameter` starts from: every one of SCAN_PARAMETERS declares it."""
    if parameter.sweep is None:
        raise ValueError(f"{parameter.key} is not a scanned parameter")
    return parameter.sweep


def request_value(request: RunRequest, parameter: Parameter) -> Any:
    """The parameter's value in a run request (a calibration parameter lives in its data spec)."""
    if parameter.path:
        return parameter.read(request.settings)
    return request.seed if parameter.key == "seed" else getattr(request.data, parameter.key)


def request_with(request: RunRequest, parameter: Parameter, value: Any) -> RunRequest:
    """The request with one parameter changed, validated by the settings' own checks."""
    if parameter.path:
        return replace(request, settings=parameter.apply(request.settings, value))
    if parameter.key == "seed":
        return replace(request, seed=parameter.coerce(value))
    return replace(request, data=replace(request.data, **{parameter.key: parameter.coerce(value)}))


def scan_key(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float]) -> str:
    """Identifies a scan's table: model, data and every setting except the scanned one."""
    neutral = request_with(base, SCAN_PARAMETERS[parameter], values[0])
    return f"scan|{model_key(loaded)}|{neutral.cache_key}|{parameter}|{values}"


def sensitivity_scan(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float],
                     progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Vary one hyperparameter (`parameter` is its key; the others as in `base`): mean layer error
    and perplexity per value, the points run by the executor $SPAP_RAY_ADDRESS chooses. Invalid
    values are refused before any work starts (SpapInputError)."""
    scanned = SCAN_PARAMETERS[parameter]
    requests = [request_with(base, scanned, value) for value in values]  # the settings' checks run here
    progress.update(phase="tokenizing calibration and evaluation text")
    results = point_executor().measure(loaded, requests, progress, cancel)
    return pd.DataFrame([{"value": value, "mean_layer_error": result.mean_layer_error, "perplexity": result.perplexity,
                          "dense_perplexity": result.dense_perplexity, "eval_tokens": result.eval_tokens,
                          "settings": describe(request.settings, omit={parameter}),
                          **provenance_columns(loaded, request),
                          **({"error": result.error} if result.error else {})}
                         for value, request, result in zip(values, requests, results)])


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
    run_label: str = ""  # what made that run, as its result view names it

    def ratios(self) -> dict[str, float]:
        """Dense ÷ pruned (speed-ups and savings > 1 mean the pruned model is better)."""
        ratios = latency_ratios(self.dense, self.pruned)
        return {label: ratios[key] for key, label in RATIO_LABELS.items()}


def compare_latency(loaded: LoadedModel, outcome: RunOutcome, options: LatencyOptions, run_label: str,
                    progress: ProgressReporter, cancel: threading.Event) -> LatencyComparison:
    """Time the dense and the pruned model on the current device with identical inputs, in
    alternation so that both see the same machine load."""
    progress.update(phase="timing the dense and the pruned model in turn")
    dense, pruned = measure_latencies(
        [loaded.model, outcome.pruned_model()], seqlen=options.seqlen, decode_tokens=options.decode_tokens,
        repeats=options.repeats, warmup=options.warmup, cancel=cancel)
    return LatencyComparison(run_finished_at=outcome.finished_at, options=options, dense=dense, pruned=pruned,
                             run_label=run_label)
