"""The tables the Compare runs page draws from two or more saved runs: metrics first, then every
setting with the ones that differ marked, per-layer errors, how much the pruned channel (or head)
sets of the runs agree, and perplexity against sparsity for runs that differ only in their
sparsity. And the committed benchmark's curves, which the sweep page shows as a reference before
any live sweep."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spap_core.methods.reconstruction import reconstruction_name
from spap_core.pipeline.parameters import BY_KEY, settings_values
from spap_core.pipeline.walk import LayerRecord
from spap_service.analysis import pruned_channels
from spap_service.runs import RunOutcome

METRICS = ("perplexity, pruned", "perplexity, dense", "mean layer error", "parameters (M)", "pruning time (s)")
CHANNELS, HEADS = "MLP channels", "attention heads"
PARTS = (CHANNELS, HEADS)  # what a run prunes in each layer, each with its own per-layer decisions


def part_layers(outcome: RunOutcome, part: str) -> list[LayerRecord] | None:
    """The run's per-layer decisions on `part` (None: a run that pruned no heads)."""
    if part == HEADS:
        return None if outcome.result.heads is None else outcome.result.heads.layers
    return outcome.result.layers


def run_names(outcomes: list[RunOutcome]) -> list[str]:
    """A short, unique name per run for columns and legends: 'A 07:12 spap 30%'."""
    letters = (chr(ord("A") + index) for index in itertools.count())
    return [f"{letter} {time.strftime('%H:%M', time.localtime(outcome.finished_at))} "
            f"{outcome.request.settings.method} {outcome.request.settings.sparsity:.0%}"
            for letter, outcome in zip(letters, outcomes)]


def metrics_table(outcomes: list[RunOutcome]) -> pd.DataFrame:
    """One column per run, one row per headline metric."""
    columns = {}
    for name, outcome in zip(run_names(outcomes), outcomes):
        record = outcome.record
        columns[name] = [record["ppl"], record["ppl_dense"], record.get("mean_layer_error", np.nan),
                         record["params_after"] / 1e6, record.get("prune_seconds", np.nan)]
    return pd.DataFrame(columns, index=list(METRICS))


def settings_table(outcomes: list[RunOutcome]) -> pd.DataFrame:
    """One column per run, one row per setting (every method's parameters, the weight update,
    the allocation, the calibration and evaluation data), and a last column saying whether the
    runs differ in it. A setting a run's method does not have reads '–'."""
    rows: dict[str, list[str]] = {}
    for index, outcome in enumerate(outcomes):
        request, values = outcome.request, settings_values(outcome.request.settings)
        shown = {"method": request.settings.method,
                 **{BY_KEY[key].symbol: BY_KEY[key].format(value) for key, value in values.items()},
                 "weight update": reconstruction_name(request.settings.reconstruction),
                 "allocation": request.settings.allocation,
                 "calibration": f"{request.data.nsamples} × {request.data.seqlen} of {request.data.calibration.label}",
                 "seed": str(request.seed),
                 "evaluation": f"{outcome.record['eval_windows']} × {outcome.record['eval_len']} of "
                               f"{outcome.record['eval_source']}",
                 "model": str(outcome.record.get("model", "?"))}
        for key, value in shown.items():
            rows.setdefault(key, ["–"] * len(outcomes))[index] = value
    table = pd.DataFrame(rows, index=run_names(outcomes)).T
    table["differs"] = table.nunique(axis=1) > 1
    return table


def layer_errors(outcomes: list[RunOutcome], part: str = CHANNELS) -> pd.DataFrame:
    """Long table: run, layer, relative error (objective ÷ ½‖Y‖²) of `part`, for the runs that pruned it."""
    return pd.DataFrame([{"run": name, "layer": layer.layer, "relative_error": layer.relative_error}
                         for name, outcome in zip(run_names(outcomes), outcomes)
                         for layer in part_layers(outcome, part) or []], columns=["run", "layer", "relative_error"])


def pruned_overlap(outcomes: list[RunOutcome], part: str = CHANNELS) -> pd.DataFrame:
    """Long table: for each pair of runs and each layer both pruned, the Jaccard overlap |A∩B| / |A∪B|
    of their pruned channel (or head) sets (1 = the same ones)."""
    names, rows = run_names(outcomes), []
    for (name_a, a), (name_b, b) in itertools.combinations(zip(names, outcomes), 2):
        for layer_a, layer_b in zip(part_layers(a, part) or [], part_layers(b, part) or []):
            if layer_a.width != layer_b.width:
                continue  # another model: no channel corresponds
            pruned_a, pruned_b = pruned_channels(layer_a), pruned_channels(layer_b)
            union = pruned_a | pruned_b
            rows.append({"pair": f"{name_a[0]}–{name_b[0]}", "layer": layer_a.layer,
                         "jaccard": len(pruned_a & pruned_b) / len(union) if union else 1.0})
    return pd.DataFrame(rows, columns=["pair", "layer", "jaccard"])


def pruned_map(outcome: RunOutcome, part: str = CHANNELS, max_units: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """[layer, unit] 1 where the run pruned the channel (or head), and the number of each column's
    unit: every unit, or `max_units` evenly spaced ones of a wider layer (so an axis can show the
    channels' own numbers, not the columns'). Units past a narrower layer's width (a model pruned
    before, with per-layer widths) are NaN: that layer has no such unit."""
    layers = part_layers(outcome, part)
    if layers is None:
        raise ValueError(f"the run pruned no {part}")
    widest = max(layer.width for layer in layers)
    shown = np.linspace(0, widest - 1, min(max_units, widest)).round().astype(int)
    grid = np.full((len(layers), len(shown)), np.nan)
    for row, layer in enumerate(layers):
        pruned = np.zeros(layer.width)
        pruned[sorted(pruned_channels(layer))] = 1
        inside = shown < layer.width
        grid[row, inside] = pruned[shown[inside]]
    return grid, shown


def sparsity_curves(outcomes: list[RunOutcome]) -> pd.DataFrame:
    """Perplexity against sparsity, one curve per group of runs that agree in every setting but the
    sparsity (a single run is a curve of one point)."""
    settings = settings_table(outcomes).drop(index=["sparsity"], errors="ignore").drop(columns="differs")
    groups = {name: " · ".join(settings[name].tolist()) for name in settings.columns}
    curve_of = {key: f"curve {index + 1}" for index, key in enumerate(dict.fromkeys(groups.values()))}
    return pd.DataFrame([{"curve": curve_of[groups[name]], "run": name, "sparsity": outcome.request.settings.sparsity,
                          "perplexity": outcome.record["ppl"]}
                         for name, outcome in zip(run_names(outcomes), outcomes)]).sort_values(["curve", "sparsity"])


REFERENCE_TABLE = Path(__file__).resolve().parents[1] / "docs" / "results" / "quality.json"


@dataclass(frozen=True)
class ReferenceCurves:
    """Perplexity against sparsity of every method, measured by bench/quality.py on a fixed protocol
    (far larger than an interactive run), with that protocol in words."""

    table: pd.DataFrame  # method, sparsity, text, perplexity
    dense: dict[str, float]
    protocol: str


def reference_curves(model_source: str, path: Path = REFERENCE_TABLE) -> ReferenceCurves | None:
    """The committed benchmark table's curves when it was measured on `model_source`, else None
    (another model's numbers would say nothing about this one)."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    args = stored["args"]
    if args.get("model") != model_source:
        return None
    rows = [{"method": row["method"], "sparsity": row["sparsity"], "text": text, "perplexity": value}
            for row in stored["rows"] for text, value in row["ppl"].items()]
    measured = sorted(row["measured_at"] for row in stored["rows"] if row.get("measured_at"))
    when = f", measured {measured[0][:10]} to {measured[-1][:10]}" if measured else ""
    protocol = (f"precomputed by bench/quality.py (docs/results/quality.md): {args['nsamples']} × {args['seqlen']} "
                f"calibration tokens of WikiText-2's validation split (seed {args['seed']}), "
                f"the first {args['eval_windows']} × "
                f"{args['seqlen']}-token windows of each text, every method at its own defaults{when}")
    return ReferenceCurves(pd.DataFrame(rows), stored["dense"], protocol)
