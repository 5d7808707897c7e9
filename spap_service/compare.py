"""The tables the Compare runs page draws from two or more saved runs: each run's perplexity with its
95% interval and its paired verdict against a reference run, read in one sentence; metrics, every
setting with the ones that differ marked, per-layer errors, how much the pruned channel (or head)
sets of the runs agree, and perplexity against sparsity for runs that differ only in their
sparsity. Also one run read against its own dense model and its calibration seeds (Run SPAP's
result), and the committed benchmark's curves, which the sweep page shows as a reference before any
live sweep."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spap_core.evaluation.intervals import (
    PairedComparison,
    SeededPerplexity,
    compare_runs,
    named_verdict,
    paired_comparison,
    seeded_perplexity,
)
from spap_core.methods.reconstruction import reconstruction_name
from spap_core.pipeline.parameters import BY_KEY, settings_values
from spap_core.pipeline.walk import LayerRecord
from spap_core.recovery.settings import RecoverySettings
from spap_service.analysis import pruned_channels, span
from spap_service.comparisons import WINDOW_LOSSES
from spap_service.runs import RunOutcome
from spap_service.uncertainty import NO_INTERVAL, number, perplexity_text, ratio_interval, ratio_text

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


def error_reading(errors: pd.DataFrame) -> str:
    """The per-layer error chart (`layer_errors`) in one plain sentence: which run's layers come
    closest to the dense model's output, in how many layers, and the runs' means it is read from."""
    means = errors.groupby("run", sort=False)["relative_error"].mean().sort_values(kind="stable")
    if means.empty:
        return "No run chosen here pruned this part, so there is no error to draw."
    lead = "Each line is one run: how far each pruned layer's output lies from the dense layer's (lower is closer)."
    if len(means) == 1:
        return f"{lead} Run {means.index[0]} is the only one drawn; its mean is {means.iloc[0]:.3g}."
    best, worst = str(means.index[0]), str(means.index[-1])
    per_layer = errors.pivot_table(index="layer", columns="run", values="relative_error")
    lowest_in = int((per_layer.idxmin(axis=1) == best).sum())
    return (f"{lead} Run {best} has the lowest mean, {means[best]:.3g} against {means[worst]:.3g} for run {worst}, "
            f"and is lowest in {lowest_in} of {len(per_layer)} layers.")


OVERLAP_COLUMNS = ["pair", "run_a", "run_b", "layer", "jaccard", "ceiling", "pruned_a", "pruned_b", "shared"]


def pruned_overlap(outcomes: list[RunOutcome], part: str = CHANNELS) -> pd.DataFrame:
    """Long table: for each pair of runs and each layer both pruned, the Jaccard overlap |A∩B| / |A∪B|
    of their pruned channel (or head) sets (1 = the same ones), its ceiling min(|A|, |B|) / max(|A|, |B|)
    (two sets of different sizes can agree no more: 0.40 for 307 channels against 768), and the
    counts it is computed from."""
    names, rows = run_names(outcomes), []
    for (name_a, a), (name_b, b) in itertools.combinations(zip(names, outcomes), 2):
        for layer_a, layer_b in zip(part_layers(a, part) or [], part_layers(b, part) or []):
            if layer_a.width != layer_b.width:
                continue  # another model: no channel corresponds
            pruned_a, pruned_b = pruned_channels(layer_a), pruned_channels(layer_b)
            union, larger = pruned_a | pruned_b, max(len(pruned_a), len(pruned_b))
            rows.append({"pair": f"{name_a[0]}–{name_b[0]}", "run_a": name_a, "run_b": name_b, "layer": layer_a.layer,
                         "jaccard": len(pruned_a & pruned_b) / len(union) if union else 1.0,
                         "ceiling": min(len(pruned_a), len(pruned_b)) / larger if larger else 1.0,
                         "pruned_a": len(pruned_a), "pruned_b": len(pruned_b), "shared": len(pruned_a & pruned_b)})
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def record_perplexity(record: Mapping[str, Any]) -> SeededPerplexity:
    """A run's pruned perplexity as its record keeps it: over every calibration seed (ppl_seeds, its
    interval with the windows' and the seeds' noise, and the seeds' range) when the run was repeated
    over seeds, as compare_runs compares it; else its own (ppl, ppl_ci95). The interval is None for a
    run saved without its window losses."""
    seeds = record.get("seeds")
    if isinstance(seeds, list) and len(seeds) > 1 and record.get("ppl_seeds") is not None:
        return SeededPerplexity(float(record["ppl_seeds"]), _bounds(record.get("ppl_seeds_ci95")),
                                _bounds(record.get("ppl_seed_range")), len(seeds))
    return SeededPerplexity(float(record["ppl"]), _bounds(record.get("ppl_ci95")), None, 1)


def record_perplexity_text(record: Mapping[str, Any]) -> str:
    """record_perplexity as every page writes it: '42.72 [41.90, 43.57]', with the seeds' range after it."""
    perplexity = record_perplexity(record)
    return perplexity_text(perplexity.perplexity, perplexity.ci95, perplexity.seed_range, perplexity.seeds)


def _bounds(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def _window_comparison(record: Mapping[str, Any], losses_a: str, losses_b: str) -> PairedComparison:
    """Two of a record's window-loss lists compared window by window (each window predicts eval_len − 1
    tokens); a missing list gives the comparison's 'no verdict'."""
    return paired_comparison(record.get(losses_a) or [], record.get(losses_b) or [], record["eval_len"] - 1)


def _verdict_line(what: str, comparison: PairedComparison, name_a: str, name_b: str) -> str:
    """'<what>, window by window: ratio r [low, high]: <verdict naming A and B>.'"""
    named = replace(comparison, verdict=named_verdict(comparison, name_a, name_b))
    return f"{what}, window by window: {ratio_text(named)}."


def dense_comparison(record: Mapping[str, Any]) -> PairedComparison:
    """A run's pruned perplexity (A) against its dense model's (B), window by window on the windows both
    were evaluated on."""
    return _window_comparison(record, "window_nll", "window_nll_dense")


def dense_verdict_line(record: Mapping[str, Any]) -> str:
    """dense_comparison in one line: 'Pruned against dense, window by window: ratio 1.084 [1.052, 1.117]:
    the dense model's perplexity is lower than the pruned model's'."""
    return _verdict_line("Pruned against dense", dense_comparison(record), "the pruned model", "the dense model")


NOT_RECOVERED = "–"  # a table's cell for a run without a recovery (an old run's record included)


def before_recovery_text(record: Mapping[str, Any]) -> str:
    """A recovered run's perplexity before its recovery with its 95% interval, '58.10 [56.90, 59.40]',
    or NOT_RECOVERED for a run without one."""
    before = record.get("ppl_before_recovery")
    if before is None:
        return NOT_RECOVERED
    return perplexity_text(float(before), _bounds(record.get("ppl_before_recovery_ci95")))


def recovery_summary(record: Mapping[str, Any]) -> str | None:
    """A recovered run before and after its recovery in one line: 'Pruned (before recovery): 58.10
    [56.90, 59.40]; after recovery: 52.31 [51.20, 53.40] (lora recovery: 100 steps, …; 100 steps in
    61.2 s, final training loss 3.214).' (its own seed's perplexities); None without a recovery."""
    recovery = record.get("recovery")
    if record.get("ppl_before_recovery") is None or not recovery:
        return None
    settings = RecoverySettings(**recovery["settings"])
    after = perplexity_text(float(record["ppl"]), _bounds(record.get("ppl_ci95")))
    return (f"Pruned (before recovery): {before_recovery_text(record)}; after recovery: {after} "
            f"({settings.describe()}; {recovery['steps_done']} steps in {recovery['seconds']:.1f} s, final training "
            f"loss {recovery['final_loss']:.3f}).")


def recovery_comparison(record: Mapping[str, Any]) -> PairedComparison | None:
    """A recovered run's perplexity after its recovery (A) against before it (B), window by window on
    the same evaluation windows; None for a run without a recovery."""
    if record.get("ppl_before_recovery") is None:
        return None
    return _window_comparison(record, "window_nll", "window_nll_before_recovery")


def recovery_verdict_line(record: Mapping[str, Any]) -> str | None:
    """recovery_comparison in one line: 'After recovery against before, window by window: ratio 0.812
    [0.790, 0.835]: the recovered model's perplexity is lower than the unrecovered model's'; None
    without a recovery."""
    comparison = recovery_comparison(record)
    if comparison is None:
        return None
    return _verdict_line("After recovery against before", comparison, "the recovered model", "the unrecovered model")


def recovery_cancelled_line(record: Mapping[str, Any]) -> str | None:
    """For a run whose recovery was cancelled, what its result shows: 'Recovery cancelled after 12 of
    100 steps: the pruned model is shown as it was before recovery.'; None for any other run (an
    old record, saved before cancelled recoveries were kept, included)."""
    cancelled = record.get("recovery_cancelled")
    if not cancelled:
        return None
    return (f"Recovery cancelled after {cancelled['steps_done']} of {cancelled['settings']['steps']} steps: the "
            "pruned model is shown as it was before recovery.")


def seeds_reading(record: Mapping[str, Any]) -> str | None:
    """For a run repeated over calibration seeds, one sentence on whether the seeds' spread is small or
    large against the evaluation windows' interval (the run's own seed's): the seeds' range inside that
    interval means the windows read matter more than the calibration tokens drawn; a range wider than
    it, the reverse; narrower but reaching past it, about as much. None for a run of one seed."""
    perplexity = record_perplexity(record)
    if perplexity.seed_range is None:
        return None
    low, high = perplexity.seed_range
    spread = f"The {perplexity.seeds} calibration seeds give {number(low)} to {number(high)}"
    window = _bounds(record.get("ppl_ci95"))
    if window is None:
        return f"{spread}; this run kept no window losses, so there is {NO_INTERVAL} to weigh them against."
    interval = f"the evaluation's interval [{number(window[0])}, {number(window[1])}]"
    if window[0] <= low and high <= window[1]:
        return (f"{spread}, inside {interval}: which calibration tokens were drawn matters less than which windows "
                "were read.")
    if high - low > window[1] - window[0]:
        return (f"{spread}, wider than {interval}: which calibration tokens were drawn matters more than which "
                "windows were read.")
    return (f"{spread}, reaching past {interval} though narrower than it: which calibration tokens were drawn "
            "matters about as much as which windows were read.")


PERPLEXITY_COLUMNS = ["run", "perplexity", "before recovery", "ppl", "ppl_ci95_low", "ppl_ci95_high", "seeds",
                      "against", "ratio", "ratio_ci95_low", "ratio_ci95_high", "verdict"]


def reference_comparisons(outcomes: Sequence[RunOutcome], reference: int = 0) -> dict[int, PairedComparison]:
    """Every run but the reference (by its index) against the reference run: run (A) over reference (B),
    paired when both were evaluated on the same windows, over their calibration seeds (compare_runs)."""
    return {index: compare_runs(outcome.record, outcomes[reference].record)
            for index, outcome in enumerate(outcomes) if index != reference}


def perplexity_table(outcomes: Sequence[RunOutcome], reference: int = 0) -> pd.DataFrame:
    """One row per run: its perplexity with its 95% interval (record_perplexity; NaN bounds without one),
    before its recovery (before_recovery_text: '–' for a run without one) and calibration seeds, then
    the ratio of its perplexity to the reference run's with the ratio's interval and the verdict
    (reference_comparisons); the reference's own row says it is the reference."""
    names = run_names(list(outcomes))
    letter = [f"run {name[0]}" for name in names]
    comparisons = reference_comparisons(outcomes, reference)
    rows = []
    for index, (name, outcome) in enumerate(zip(names, outcomes)):
        perplexity = record_perplexity(outcome.record)
        low, high = perplexity.ci95 or (np.nan, np.nan)
        row = {"run": name, "perplexity": record_perplexity_text(outcome.record),
               "before recovery": before_recovery_text(outcome.record), "ppl": perplexity.perplexity,
               "ppl_ci95_low": low, "ppl_ci95_high": high, "seeds": perplexity.seeds}
        comparison = comparisons.get(index)
        if comparison is None:
            row.update(against="the reference", ratio=np.nan, ratio_ci95_low=np.nan, ratio_ci95_high=np.nan,
                       verdict="the reference")
        else:
            ratio_low, ratio_high = comparison.ci95 or (np.nan, np.nan)
            named = replace(comparison, verdict=named_verdict(comparison, letter[index], letter[reference]))
            row.update(against=ratio_interval(comparison.ratio, comparison.ci95),
                       ratio=np.nan if comparison.ratio is None else comparison.ratio, ratio_ci95_low=ratio_low,
                       ratio_ci95_high=ratio_high, verdict=named.verdict)
        rows.append(row)
    return pd.DataFrame(rows, columns=PERPLEXITY_COLUMNS)


def verdict_sentence(names: Sequence[str], comparisons: Mapping[int, PairedComparison], reference: int = 0) -> str:
    """The verdicts of reference_comparisons in one sentence: 'Of 3 runs, run B is lower than run A; run C
    is not distinguishable from run A on these 2,040 tokens.' (perplexity: lower is better)."""
    base = f"run {names[reference][0]}"
    parts = []
    for index, comparison in comparisons.items():
        run = f"run {names[index][0]}"
        verdict = comparison.verdict
        why = named_verdict(comparison, run, base).partition(": ")[2]
        if verdict == "A is lower":
            parts.append(f"{run} is lower than {base}")
        elif verdict == "B is lower":
            parts.append(f"{run} is higher than {base}")
        elif verdict.startswith("not distinguishable"):
            parts.append(f"{run} is not distinguishable from {base}{verdict.removeprefix('not distinguishable')}")
        elif verdict.startswith("not comparable pairwise"):
            parts.append(f"{run} is not comparable pairwise with {base}: {why}")
        else:
            parts.append(f"{run} has no verdict against {base}: {why}")
    return f"Of {len(names)} runs, in perplexity (lower is better), " + "; ".join(parts) + "."


def run_in_words(name: str) -> str:
    """A run's name (run_names) in a sentence: 'run A (spap 20%)'."""
    letter, _, what = name.split(" ", 2)
    return f"run {letter} ({what})"


def containment_notes(overlap: pd.DataFrame, unit: str = "channel") -> list[str]:
    """For each pair of runs (a pruned_overlap table) whose smaller pruned set lies inside the larger
    one in most layers (more than half), that fact in words: then their agreement is exactly its
    ceiling, the smaller count over the larger, and a flat line at that value is what it looks like."""
    notes = []
    for _, rows in overlap.groupby("pair", sort=False):
        smaller = rows[["pruned_a", "pruned_b"]].min(axis=1)
        nested = rows[(rows["shared"] == smaller) & (smaller > 0)]
        if 2 * len(nested) <= len(rows):
            continue
        where = "In every layer" if len(nested) == len(rows) else f"In {len(nested)} of {len(rows)} layers"
        a_inside = nested["pruned_a"].sum() <= nested["pruned_b"].sum()
        inner, outer = ("a", "b") if a_inside else ("b", "a")
        inner_run, outer_run = run_in_words(rows[f"run_{inner}"].iloc[0]), run_in_words(rows[f"run_{outer}"].iloc[0])
        inner_counts, outer_counts = nested[f"pruned_{inner}"].tolist(), nested[f"pruned_{outer}"].tolist()
        if inner_counts == outer_counts:
            notes.append(f"{where}, {inner_run} and {outer_run} pruned the same {span(inner_counts)} {unit}s: "
                         "their agreement is 1.")
            continue
        if len(set(inner_counts)) == len(set(outer_counts)) == 1:
            ratio = f"{inner_counts[0]}/{outer_counts[0]} = {inner_counts[0] / outer_counts[0]:.2f}"
        else:
            ratio = f"the smaller count over the larger ({span_of(nested['ceiling'].tolist())} here)"
        notes.append(f"{where}, the {span(inner_counts)} {unit}s {inner_run} pruned are among the "
                     f"{span(outer_counts)} {outer_run} pruned: their agreement is {ratio}, the most two sets of "
                     "these sizes can reach (the dotted ceiling).")
    return notes


def span_of(values: list[float]) -> str:
    """'0.40' when every value rounds to it, '0.38–0.42' when they differ."""
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low}–{high}"


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


CURVE_COLUMNS = ["curve", "method", "run", "sparsity", "perplexity", "ppl_ci95_low", "ppl_ci95_high", "points"]


def sparsity_curves(outcomes: list[RunOutcome]) -> pd.DataFrame:
    """Perplexity against sparsity: one row per run, grouped into curves of runs that agree in every
    setting but the sparsity. A curve is named by its method and the settings in which it differs
    from another curve of that method ('spap, K = 4'), so a legend says what each line holds; `points`
    counts its runs (a curve of one point is no curve yet). Each perplexity is record_perplexity's, with
    its 95% interval (NaN bounds for a run saved without one)."""
    settings = settings_table(outcomes).drop(index=["sparsity"], errors="ignore").drop(columns="differs")
    groups = {name: tuple(settings[name]) for name in settings.columns}
    distinct = list(dict.fromkeys(groups.values()))
    rows = list(settings.index)
    method_of = {group: group[rows.index("method")] for group in distinct}
    naming = [index for index, row in enumerate(rows) if row != "method" and any(
        len({group[index] for group in distinct if method_of[group] == method}) > 1
        for method in set(method_of.values()))]  # the settings in which curves of one method differ
    label = {group: ", ".join([method_of[group], *(f"{rows[index]} = {group[index]}" for index in naming)])
             for group in distinct}
    sizes = pd.Series(list(groups.values())).value_counts()
    perplexities = [record_perplexity(outcome.record) for outcome in outcomes]
    return pd.DataFrame([{"curve": label[groups[name]], "method": outcome.request.settings.method, "run": name,
                          "sparsity": outcome.request.settings.sparsity, "perplexity": perplexity.perplexity,
                          "ppl_ci95_low": perplexity.ci95[0] if perplexity.ci95 else np.nan,
                          "ppl_ci95_high": perplexity.ci95[1] if perplexity.ci95 else np.nan,
                          "points": int(sizes[groups[name]])}
                         for name, outcome, perplexity in zip(run_names(outcomes), outcomes, perplexities)],
                        columns=CURVE_COLUMNS).sort_values(["curve", "sparsity"])


def lone_points_note(curves: pd.DataFrame) -> str | None:
    """What to add where runs (a sparsity_curves table) have no other run of the same settings at
    another sparsity, so no curve can be drawn through them; None when every run is on a curve."""
    lone = curves[curves["points"] < 2].sort_values("run")  # in the order of the runs
    if lone.empty:
        return None
    runs = ", ".join(f"run {row.run[0]} ({row.curve}, {row.sparsity:.0%})" for row in lone.itertuples())
    which = "it" if len(lone) == 1 else "each"
    return (f"No curve through {runs}: a curve needs two runs that differ only in their sparsity. Save a run of the "
            f"same settings at another sparsity to draw one through {which}.")


REFERENCE_TABLE = Path(__file__).resolve().parents[1] / "docs" / "results" / "quality.json"


@dataclass(frozen=True)
class ReferenceCurves:
    """Perplexity against sparsity of every method, measured by bench/quality.py on a fixed protocol
    (far larger than an interactive run), with that protocol in words."""

    # method, sparsity, text, perplexity, its 95% interval and seeds, and each seed's window losses with the
    # tokens they predicted (a sweep's columns, so its chart and sentence read it the same way); the rows
    # measured before the benchmark kept window losses have NaN bounds, no losses and 0 tokens
    table: pd.DataFrame
    dense: dict[str, float]
    protocol: str


def reference_row(row: Mapping[str, Any], text: str, tokens_per_window: int) -> dict[str, Any]:
    """One benchmark row's perplexity on `text` as a sweep's table holds it: with its interval over the
    windows and calibration seeds (seeded_perplexity) when the row kept each seed's window losses."""
    losses = (row.get("window_nll_by_seed") or {}).get(text) or []
    interval = seeded_perplexity(losses).ci95 if losses else None
    low, high = interval if interval is not None else (np.nan, np.nan)
    return {"method": row["method"], "sparsity": row["sparsity"], "text": text, "perplexity": row["ppl"][text],
            "ppl_ci95_low": low, "ppl_ci95_high": high, "seeds": len(losses) or 1, WINDOW_LOSSES: losses,
            "eval_tokens": tokens_per_window * len(losses[0]) if losses else 0}


def reference_curves(model_source: str, path: Path = REFERENCE_TABLE) -> ReferenceCurves | None:
    """The committed benchmark table's curves when it was measured on `model_source`, else None
    (another model's numbers would say nothing about this one)."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    args = stored["args"]
    if args.get("model") != model_source:
        return None
    rows = [reference_row(row, text, stored.get("tokens_per_window", {}).get(text, 0)) for row in stored["rows"]
            for text in row["ppl"]]
    measured = sorted(row["measured_at"] for row in stored["rows"] if row.get("measured_at"))
    when = f", measured {measured[0][:10]} to {measured[-1][:10]}" if measured else ""
    protocol = (f"precomputed by bench/quality.py (docs/results/quality.md): {args['nsamples']} × {args['seqlen']} "
                f"calibration tokens of WikiText-2's validation split (seed {args['seed']}), "
                f"the first {args['eval_windows']} × "
                f"{args['seqlen']}-token windows of each text, every method at its own defaults{when}")
    return ReferenceCurves(pd.DataFrame(rows), stored["dense"], protocol)
