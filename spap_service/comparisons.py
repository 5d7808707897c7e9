"""Comparisons built from many runs or timings: perplexity-vs-sparsity sweeps, one-hyperparameter
sensitivity scans and dense-vs-pruned latency, each a plain function the job queue runs; and what a
sweep's chart needs to be read: the methods too far above the others to share their axis, and its
reading in one sentence.

Every point of a sweep or a scan runs over the base request's calibration seeds (RunRequest.seeds):
its perplexity is the seeds' combined one, with a 95% interval that holds both the evaluation
windows' and the seeds' noise (spap_core.evaluation.intervals.seeded_perplexity), the seeds' range
beside it, and each seed's window losses kept in the row. Each point is then compared window by
window with its reference (SPAP at the same sparsity; the scanned parameter's default value), so a
table and its sentence say whether a difference is beyond that noise (verdict_columns). A sweep whose
base request recovers after pruning runs that recovery at every point: each row then also keeps the
perplexity before the recovery (BEFORE_RECOVERY's columns), and the verdicts compare the final ones."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from spap_core.evaluation.intervals import PairedComparison, seeded_comparison, seeded_perplexity
from spap_core.evaluation.latency import LatencyReport, latency_ratios, measure_latencies
from spap_core.methods.reconstruction import reconstruction_name
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.parameters import BY_KEY, SCANNED, Parameter, describe, with_values
from spap_service.cache import BoundedCache
from spap_service.data import model_key
from spap_service.executors import PointResult, point_executor
from spap_service.jobs import ProgressReporter
from spap_service.runs import RunOutcome, RunRequest
from spap_service.uncertainty import perplexity_text, ratio_interval


def method_settings(base: PruneSettings, method: str, values: dict[str, Any]) -> PruneSettings:
    """The settings one method of a sweep runs with: the base's sparsity, reconstruction and
    allocation, the method's own options (the base's when it is the base's method, else its
    defaults), with the `values` of its own declared parameters applied (others are not its own)."""
    own = {key: value for key, value in values.items() if key in BY_KEY and BY_KEY[key].method == method}
    return with_values(base.for_method(method), own)


def sweep_sparsities(loaded: LoadedModel, base: RunRequest, methods: dict[str, PruneSettings],
                     sparsities: list[float], progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Perplexity of every method (with its settings) at every sparsity, all on the same calibration
    and evaluation windows as `base` and over its calibration seeds, its points run by the executor
    $SPAP_RAY_ADDRESS chooses. One row per (method, sparsity), with the settings it ran with, its
    interval and seed columns (seeded_columns) and, when SPAP is among the methods, its verdict
    against SPAP at the same sparsity (verdict_columns; each seed's calibration tokens are the same
    for every method, so the seeds pair up). A point that failed on its worker has no numbers and
    says why in `error`."""
    points = [(method, sparsity) for method in methods for sparsity in sparsities]
    requests = [replace(base, settings=replace(methods[method], sparsity=sparsity)) for method, sparsity in points]
    rows = []
    for (method, sparsity), request, measured in zip(points, requests, measure_seeded(loaded, requests, progress,
                                                                                       cancel)):
        rows.append({"method": method, "sparsity": sparsity, **measured.leading,
                     "settings": describe(request.settings, omit={"method", "sparsity"}),
                     **provenance_columns(loaded, request),
                     "reconstruction": reconstruction_name(request.settings.reconstruction),
                     "allocation": request.settings.allocation, **measured.trailing})
    table = pd.DataFrame(rows)
    if SWEEP_REFERENCE not in methods:
        return table
    return verdict_columns(table, table["method"] == SWEEP_REFERENCE, SWEEP_REFERENCE, SWEEP_REFERENCE,
                           within="sparsity", seeds_pair=True)


# The method every other method of a sweep is compared with, at each sparsity.
SWEEP_REFERENCE = "spap"


@dataclass(frozen=True)
class SeededPoint:
    """One point of a sweep or a scan over its calibration seeds, as the columns of its row: the
    perplexity and its interval first, the rest after the row's settings."""

    leading: dict[str, Any]
    trailing: dict[str, Any]


def measure_seeded(loaded: LoadedModel, requests: list[RunRequest], progress: ProgressReporter,
                   cancel: threading.Event) -> list[SeededPoint]:
    """Every request over its calibration seeds (RunRequest.seed_requests): all the one-seed runs go
    to the executor as one list, so Ray runs them side by side, and come back folded into one point
    per request (seeded_columns)."""
    by_request = [request.seed_requests() for request in requests]
    progress.update(phase="tokenizing calibration and evaluation text")
    results = iter(point_executor().measure(loaded, [one for seeds in by_request for one in seeds], progress, cancel))
    return [seeded_columns([next(results) for _ in seeds], [one.seed for one in seeds]) for seeds in by_request]


@dataclass(frozen=True)
class PerplexityColumns:
    """The columns that hold one perplexity of a sweep's or scan's row: the perplexity over every
    seed and window, its 95% interval (windows and seeds combined), the lowest and highest one-seed
    perplexity, and each seed's window losses (a list of lists)."""

    perplexity: str
    ci95_low: str
    ci95_high: str
    seed_low: str
    seed_high: str
    window_losses: str

    def numbers(self, window_nll_by_seed: list[list[float]]) -> dict[str, float]:
        """The perplexity, interval and seed-range columns of these seeds' window losses (NaN where
        there is none: no losses, fewer than 2 windows, one seed)."""
        combined = seeded_perplexity(window_nll_by_seed) if window_nll_by_seed else None
        low, high = combined.ci95 if combined is not None and combined.ci95 is not None else (math.nan, math.nan)
        seed_low, seed_high = combined.seed_range if combined is not None and combined.seed_range is not None \
            else (math.nan, math.nan)
        return {self.perplexity: math.nan if combined is None else combined.perplexity, self.ci95_low: low,
                self.ci95_high: high, self.seed_low: seed_low, self.seed_high: seed_high}


# The column of a sweep's or scan's table that keeps each seed's window losses (a list of lists).
WINDOW_LOSSES = "window_nll_by_seed"
# The final model's perplexity (after its recovery, when the points recovered), which every verdict compares.
FINAL = PerplexityColumns("perplexity", "ppl_ci95_low", "ppl_ci95_high", "ppl_seed_low", "ppl_seed_high",
                          WINDOW_LOSSES)
# The pruned model's perplexity before its recovery: columns only a sweep whose points recovered has.
BEFORE_RECOVERY = PerplexityColumns("ppl_before_recovery", "ppl_before_recovery_ci95_low",
                                    "ppl_before_recovery_ci95_high", "ppl_before_recovery_seed_low",
                                    "ppl_before_recovery_seed_high", "window_nll_before_recovery_by_seed")


def recovered(table: pd.DataFrame) -> bool:
    """Whether a sweep's points recovered after pruning (its table has the before-recovery columns)."""
    return BEFORE_RECOVERY.perplexity in table


def seeded_columns(results: list[PointResult], seeds: list[int]) -> SeededPoint:
    """One point's row from its seeds' results (`seeds[i]` gave `results[i]`): `perplexity` over every
    seed and window, `ppl_ci95_low`/`ppl_ci95_high` its 95% interval (windows and seeds combined),
    `seeds`, `ppl_seed_low`/`ppl_seed_high` the lowest and highest one-seed perplexity (NaN with one
    seed), the mean layer error averaged over the seeds, and `window_nll_by_seed` (each seed's
    window losses). When the runs recovered after pruning, the same numbers of the perplexity before
    the recovery follow (BEFORE_RECOVERY's columns); a point without a recovery has none of them. A
    seed that failed fails the point: no numbers, and `error` says which seed and why (the reason
    alone with one seed)."""
    failed = [(seed, result.error) for seed, result in zip(seeds, results) if result.error is not None]
    if failed:
        reason = failed[0][1] if len(seeds) == 1 else "; ".join(f"calibration seed {seed}: {error}"
                                                                  for seed, error in failed)
        return _point(PointResult(error=reason), len(seeds), [], [])
    layer_error = float(np.mean([result.mean_layer_error for result in results]))
    before = [list(result.window_nll_before_recovery) for result in results]
    return _point(replace(results[0], mean_layer_error=layer_error), len(seeds),
                  [list(result.window_nll) for result in results], before if all(before) else [])


def _point(result: PointResult, seeds: int, window_nll_by_seed: list[list[float]],
           before_recovery_by_seed: list[list[float]]) -> SeededPoint:
    final = FINAL.numbers(window_nll_by_seed)
    before = BEFORE_RECOVERY.numbers(before_recovery_by_seed) if before_recovery_by_seed else {}
    return SeededPoint(
        leading={FINAL.perplexity: final[FINAL.perplexity], FINAL.ci95_low: final[FINAL.ci95_low],
                 FINAL.ci95_high: final[FINAL.ci95_high], "seeds": seeds, FINAL.seed_low: final[FINAL.seed_low],
                 FINAL.seed_high: final[FINAL.seed_high], **before},
        trailing={"dense_perplexity": result.dense_perplexity, "mean_layer_error": result.mean_layer_error,
                  "params_after": result.params_after, "eval_tokens": result.eval_tokens,
                  WINDOW_LOSSES: window_nll_by_seed,
                  **({BEFORE_RECOVERY.window_losses: before_recovery_by_seed} if before else {}),
                  **({"error": result.error} if result.error else {})})


def compare_points(row: pd.Series, reference: pd.Series, seeds_pair: bool) -> PairedComparison:
    """A row's perplexity against a reference row's, window by window over their seeds (A is `row`,
    B the reference). Every window predicts as many tokens (eval_len − 1), so a row's predicted
    tokens divided by its windows is that number."""
    rows, reference_rows = row[WINDOW_LOSSES], reference[WINDOW_LOSSES]
    tokens_per_window = int(row["eval_tokens"]) // len(rows[0]) if rows else 0
    return seeded_comparison(rows, reference_rows, tokens_per_window, seeds_pair=seeds_pair)


def verdict_columns(table: pd.DataFrame, is_reference: pd.Series, name: str, called: str, within: str | None,
                    seeds_pair: bool) -> pd.DataFrame:
    """`table` with every row compared with its reference (compare_points): the row where
    `is_reference` holds, in the same group of `within` (one column, e.g. the sparsity) or in the
    whole table when None. Adds `ratio_vs_{name}` (the row's perplexity over the reference's), its
    95% interval `ratio_vs_{name}_ci95_low`/`_high`, and `verdict_vs_{name}`: "lower than {called}",
    "higher than {called}", the comparison's own words when it cannot tell ("not distinguishable on
    these N tokens …") or has no verdict, and "reference" on the reference's own row."""
    failed = table["error"].notna() if "error" in table else pd.Series(False, index=table.index)
    columns = []
    for index, row in table.iterrows():
        group = table.index if within is None else table.index[table[within] == row[within]]
        references = [other for other in group if is_reference[other]]
        if is_reference[index]:
            columns.append((math.nan, math.nan, math.nan, "reference"))
        elif not references or failed[references[0]]:
            columns.append((math.nan, math.nan, math.nan, f"no verdict: {called} has no result here"))
        elif failed[index]:
            columns.append((math.nan, math.nan, math.nan, "no verdict: this point has no result"))
        else:
            comparison = compare_points(row, table.loc[references[0]], seeds_pair)
            low, high = comparison.ci95 if comparison.ci95 is not None else (math.nan, math.nan)
            words = {"A is lower": f"lower than {called}", "B is lower": f"higher than {called}"}
            columns.append((math.nan if comparison.ratio is None else comparison.ratio, low, high,
                            words.get(comparison.verdict, comparison.verdict)))
    ratio = f"ratio_vs_{name}"
    names = [ratio, f"{ratio}_ci95_low", f"{ratio}_ci95_high", f"verdict_vs_{name}"]
    return table.assign(**{column: [values[position] for values in columns] for position, column in enumerate(names)})


def perplexity_cell(row: pd.Series, columns: PerplexityColumns = FINAL) -> str:
    """A row's perplexity (`columns` says which: the final one, or BEFORE_RECOVERY's) as a table on
    screen shows it: '42.72 [41.90, 43.57]', with its seeds' range after it when it ran over more than
    one ('; 3 seeds 42.10 to 43.30'), '(no interval)' without one; a failed point's is 'nan (no interval)'."""
    interval = None if pd.isna(row[columns.ci95_low]) else (row[columns.ci95_low], row[columns.ci95_high])
    seed_range = None if pd.isna(row[columns.seed_low]) else (row[columns.seed_low], row[columns.seed_high])
    return perplexity_text(row[columns.perplexity], interval, seed_range, int(row["seeds"]))


def ratio_cell(row: pd.Series, name: str) -> str:
    """A row's comparison with its reference (verdict_columns' `name`) as a table on screen shows it:
    '1.084 [1.020, 1.150]: higher than spap' ('(no interval)' in place of the brackets without one), or
    its verdict alone without a ratio."""
    ratio, verdict = row[f"ratio_vs_{name}"], row[f"verdict_vs_{name}"]
    if pd.isna(ratio):
        return verdict
    return f"{ratio_interval(ratio, (row[f'ratio_vs_{name}_ci95_low'], row[f'ratio_vs_{name}_ci95_high']))}: {verdict}"


def table_csv(table: pd.DataFrame) -> str:
    """A sweep's or scan's table as its download: every number as measured (before and after the
    recovery, when its points recovered), and each seed's window losses JSON-encoded in their columns
    (a list of lists), so the file can be compared again."""
    losses = [columns.window_losses for columns in (FINAL, BEFORE_RECOVERY) if columns.window_losses in table]
    return table.assign(**{column: table[column].map(json.dumps) for column in losses}).to_csv(index=False)


def by_sparsity(table: pd.DataFrame, cells: pd.Series) -> pd.DataFrame:
    """`cells` (one text per row of `table`) laid out as a sweep's table on screen: a row per sparsity
    ('30%'), a column per method in the table's order."""
    pivot = table.assign(cell=cells).pivot(index="sparsity", columns="method", values="cell")
    pivot.index = [f"{sparsity:.0%}" for sparsity in pivot.index]
    return pivot[list(dict.fromkeys(table["method"]))]


def perplexity_by_sparsity(table: pd.DataFrame) -> pd.DataFrame:
    """A sweep's perplexities as its table on screen shows them (by_sparsity of perplexity_cell); when
    its points recovered, each method has two columns side by side, '{method}, after recovery' and
    '{method}, before recovery'."""
    final = by_sparsity(table, table.apply(perplexity_cell, axis=1))
    if not recovered(table):
        return final
    before = by_sparsity(table, table.apply(perplexity_cell, axis=1, columns=BEFORE_RECOVERY))
    return pd.DataFrame({f"{method}, {when} recovery": cells[method] for method in final.columns
                         for when, cells in (("after", final), ("before", before))})


def provenance_columns(loaded: LoadedModel, request: RunRequest) -> dict[str, str]:
    """The model and the data a sweep's or a scan's row was measured on, as its CSV carries them, so a
    downloaded table still says what it measured once it is set beside another model's."""
    data = request.data
    evaluation = "the whole text" if data.eval_windows == 0 else f"{data.eval_windows} × {data.eval_len}"
    return {"model": loaded.description,
            "calibration": f"{data.nsamples} × {data.seqlen} tokens of {data.calibration.label}, seed {request.seed}",
            "evaluation": f"{evaluation} tokens of {data.evaluation.label}"}


def sweep_key(loaded: LoadedModel, base: RunRequest, methods: dict[str, PruneSettings], sparsities: list[float]) -> str:
    """Identifies a sweep's table: model, data, seed and calibration seeds, every method's settings
    but the swept sparsity, and the recovery every point runs after pruning (when it runs one)."""
    settings = sorted(f"{method}:{asdict(replace(options, sparsity=0.5))}" for method, options in methods.items())
    recovery = f"|recovery={asdict(base.recovery)}" if base.recovery.enabled else ""
    return (f"sweep|{model_key(loaded)}|{base.data.cache_key}|seed={base.seed}|seeds={base.seeds}|{settings}|"
            f"{sorted(sparsities)}{recovery}")


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


def lowest_two(best: pd.Series, runner_up: pd.Series, comparison: PairedComparison | None) -> str:
    """The two lowest perplexities of a sweep at one sparsity, as its verdict allows (`comparison`:
    `best` against `runner_up`, None when the table keeps no window losses): the lowest named as
    such, and by how much, only when the 95% interval of their ratio excludes 1; else that the two
    are not distinguishable on the tokens and seeds measured."""
    lowest = f"{best['method']} has the lowest perplexity, {readable(best['perplexity'])}"
    gap = f"{readable(runner_up['perplexity'] - best['perplexity'])} below {runner_up['method']}, the next"
    if comparison is None:
        return f"{lowest}: {gap} (no interval: these perplexities were kept without their window losses)."
    if comparison.ci95 is None:
        return f"{lowest}: {gap} ({comparison.verdict})."
    ratio = ratio_interval(comparison.ratio, comparison.ci95)
    if comparison.distinguishable:
        return f"{lowest}: {gap}, a difference beyond the noise (their ratio, {ratio}, excludes 1 at 95%)."
    on_what = comparison.verdict.removeprefix("not distinguishable ")
    return (f"{best['method']}'s perplexity, {readable(best['perplexity'])}, is not distinguishable from "
            f"{runner_up['method']}'s, {readable(runner_up['perplexity'])}, the next, {on_what} (their ratio, "
            f"{ratio}, holds 1 at 95%).")


def sweep_reading(split: ScaleSplit, dense: float | None = None, where: str = "") -> str:
    """What a perplexity-vs-sparsity chart shows, computed from its table (one panel's rows, `where`
    naming the panel): at the highest sparsity measured for two or more methods, which is lowest and
    by how much, or that the two lowest are not distinguishable (lowest_two); the dense model's
    perplexity; and which methods are off the chart's scale, with their values. When the points
    recovered after pruning, that reading is of the perplexities after the recovery (the solid
    lines, which the verdicts compare), and one more sentence says whether the methods rank in the
    same order before the recovery (recovery_order)."""
    after = " after recovery" if recovered(split.shown) else ""
    measured = split.shown.dropna(subset=["perplexity"])
    compared = measured.groupby("sparsity")["method"].nunique()
    if (compared >= 2).any():
        at = compared[compared >= 2].index.max()
        ranked = measured[measured["sparsity"] == at].sort_values("perplexity")
        best, runner_up = ranked.iloc[0], ranked.iloc[1]
        kept = WINDOW_LOSSES in ranked and all(len(row[WINDOW_LOSSES]) for row in (best, runner_up))
        comparison = compare_points(best, runner_up, seeds_pair=True) if kept else None
        reading = f"{where}at {at:.0%} sparsity{after}, {lowest_two(best, runner_up, comparison)}"
    elif not measured.empty:
        method, points = measured["method"].iloc[0], measured.sort_values("sparsity")
        first, last = points.iloc[0], points.iloc[-1]
        later = f" and {readable(last['perplexity'])} at {last['sparsity']:.0%}" if len(points) > 1 else ""
        reading = (f"{where}the perplexity of {method}{after} is {readable(first['perplexity'])} at "
                   f"{first['sparsity']:.0%} sparsity{later}.")
    else:
        reading = f"{where}no method has a perplexity on this chart's scale."
    if dense is not None and np.isfinite(dense):
        reading += f" The dense model's is {readable(dense)} ({'the grey dashes' if after else 'dashed'})."
    if not split.off_scale.empty:
        reading += f" Off the axis, far above the others: {value_ranges(split.off_scale)}."
    if after and (order := recovery_order(pd.concat([split.shown, split.off_scale]))) is not None:
        reading += f" {order}"
    return reading[:1].upper() + reading[1:]


def recovery_order(table: pd.DataFrame) -> str | None:
    """Whether a recovered sweep's methods rank in the same order before the recovery as after it,
    in one sentence: at each sparsity where two or more methods have both perplexities, the methods
    ordered by each (the measured values: the verdicts compare only the perplexities after
    recovery). 'By their perplexities, recovery keeps the methods' order at every sparsity: spap is
    lowest at each, before recovery and after it.', or where it changes the order and how ('… at
    40%, flap is lowest after recovery and spap before it (spap < flap before, flap < spap after)').
    None where no sparsity has two such methods."""
    measured = table.dropna(subset=[FINAL.perplexity, BEFORE_RECOVERY.perplexity])
    orders = {sparsity: (list(rows.sort_values(BEFORE_RECOVERY.perplexity, kind="stable")["method"]),
                         list(rows.sort_values(FINAL.perplexity, kind="stable")["method"]))
              for sparsity, rows in measured.groupby("sparsity") if len(rows) >= 2}
    if not orders:
        return None
    changed = {sparsity: order for sparsity, order in orders.items() if order[0] != order[1]}
    if not changed:
        every = "every sparsity" if len(orders) > 1 else f"{next(iter(orders)):.0%}"
        lowest = {before[0] for before, _ in orders.values()}
        at_each = f": {lowest.pop()} is lowest{' at each' * (len(orders) > 1)}, before recovery and after it" \
            if len(lowest) == 1 else " (lowest: " + ", ".join(
                f"{before[0]} at {sparsity:.0%}" for sparsity, (before, _) in orders.items()) + ")"
        return f"By their perplexities, recovery keeps the methods' order at {every}{at_each}."

    def change(sparsity: float, before: list[str], after: list[str]) -> str:
        both = f"({' < '.join(before)} before, {' < '.join(after)} after)"
        if before[0] != after[0]:
            return f"at {sparsity:.0%}, {after[0]} is lowest after recovery and {before[0]} before it {both}"
        return f"at {sparsity:.0%}, {before[0]} is lowest before and after recovery, the others reorder {both}"

    kept = [f"{sparsity:.0%}" for sparsity in orders if sparsity not in changed]
    keeps = f"; it keeps it at {', '.join(kept)}" if kept else ""
    return ("By their perplexities, recovery changes the methods' order: "
            + "; ".join(change(sparsity, *order) for sparsity, order in changed.items()) + f"{keeps}.")


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
    """Identifies a scan's table: model, data and every setting except the scanned one (the
    calibration seeds included, through the request's cache_key)."""
    neutral = request_with(base, SCAN_PARAMETERS[parameter], values[0])
    return f"scan|{model_key(loaded)}|{neutral.cache_key}|{parameter}|{values}"


def with_default_value(base: RunRequest, parameter: str, values: list[float]) -> list[float]:
    """The values a scan of `parameter` runs: `values`, and the base request's own value of it (what
    every other value is compared with) when they do not hold it, in increasing order."""
    default = request_value(base, SCAN_PARAMETERS[parameter])
    if any(math.isclose(value, default, rel_tol=1e-9, abs_tol=0.0) for value in values):
        return list(values)
    return sorted([*values, default])


def sensitivity_scan(loaded: LoadedModel, base: RunRequest, parameter: str, values: list[float],
                     progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Vary one hyperparameter (`parameter` is its key; the others as in `base`, over its calibration
    seeds): mean layer error and perplexity per value, with the interval and seed columns
    (seeded_columns), the points run by the executor $SPAP_RAY_ADDRESS chooses. The base request's own
    value is always among them (with_default_value; `default` marks its row) and every other value is
    compared with it (verdict_columns, name "default"); the seeds pair up unless the scanned
    parameter is the seed itself. Invalid values are refused before any work starts (SpapInputError)."""
    scanned = SCAN_PARAMETERS[parameter]
    default = request_value(base, scanned)
    values = with_default_value(base, parameter, values)
    requests = [request_with(base, scanned, value) for value in values]  # the settings' checks run here
    measured = measure_seeded(loaded, requests, progress, cancel)
    table = pd.DataFrame([{"value": value, "default": math.isclose(value, default, rel_tol=1e-9, abs_tol=0.0),
                           **point.leading, "settings": describe(request.settings, omit={parameter}),
                           **provenance_columns(loaded, request), **point.trailing}
                          for value, request, point in zip(values, requests, measured)])
    return verdict_columns(table, table["default"], SCAN_REFERENCE, "the default value", within=None,
                           seeds_pair=parameter != "seed")


# What every value of a scan is compared with: the base request's own value of the scanned parameter.
SCAN_REFERENCE = "default"


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
