"""Table rows measured over calibration seeds, and the cells that say how sure each number is.

Every perplexity table of the benches (quality, sensitivity, variants, heads, matched) keeps, per
row, each seed's window losses on each text, and prints its perplexities as "ppl [low, high]" with
the seeds' range beside them and its comparisons as "ratio [low, high] verdict"
(spap_core.evaluation.intervals). A row is measured one seed at a time and written after each, so a
cut bench loses at most the run in progress and `--resume` measures only the seeds a row lacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spap_core.evaluation.intervals import PairedComparison, named_verdict, seeded_comparison, seeded_perplexity


def add_seeds_arg(parser) -> None:
    parser.add_argument("--seeds", type=int, default=1, choices=range(1, 11), metavar="N",
                        help="calibration seeds per row: --seed, --seed+1, ...; the interval adds their spread")


def seed_list(args) -> list[int]:
    """The calibration seeds a bench's flags ask for: --seed and the next --seeds − 1."""
    return [args.seed + offset for offset in range(args.seeds)]


def pending(keys: Iterable[Hashable], rows: dict, seeds: Sequence[int]) -> list[tuple[Hashable, int]]:
    """(key, seed) of every seed a row lacks, row by row in the order of `keys`."""
    return [(key, seed) for key in keys for seed in seeds if seed not in rows.get(key, {}).get("seeds", [])]


def with_seed(row: dict | None, identity: dict, seed: int, measured: dict) -> dict:
    """A table row with one more calibration seed's measurement (common.measure's dict): its
    `identity` fields, every seed's perplexities, window losses and prune time in seed order, the
    perplexity over all seeds (exp of the mean loss) as the row's `ppl`, and the layer error, time
    split and parameters of its lowest seed. A recovered run's measurement (common.measured) adds,
    seed by seed, its window losses before the recovery (`window_nll_before_recovery_by_seed`, as
    `window_nll_by_seed` is after it) and the recovery's record (`recovery_by_seed`)."""
    by_seed = {} if row is None else {seed_of: index for index, seed_of in enumerate(row["seeds"])}
    first = row if row is not None and min(by_seed) < seed else measured
    entries = [] if row is None else [_seed_entry(row, index, seed_of) for seed_of, index in by_seed.items()]
    entries = sorted([*entries, {**measured, "seed": seed}], key=lambda entry: entry["seed"])
    names = list(measured["ppl"])
    window_nll_by_seed = {name: [entry["window_nll"][name] for entry in entries] for name in names}
    recovered = {} if "recovery" not in measured else {
        "window_nll_before_recovery_by_seed": {name: [entry["window_nll_before_recovery"][name] for entry in entries]
                                               for name in names},
        "recovery_by_seed": [entry["recovery"] for entry in entries]}
    return {**identity, **recovered, "seeds": [entry["seed"] for entry in entries],
            "ppl": {name: seeded_perplexity(window_nll_by_seed[name]).perplexity for name in names},
            "ppl_by_seed": {name: [entry["ppl"][name] for entry in entries] for name in names},
            "window_nll_by_seed": window_nll_by_seed,
            "prune_seconds": sum(entry["prune_seconds"] for entry in entries) / len(entries),
            "prune_seconds_by_seed": [entry["prune_seconds"] for entry in entries],
            "relative_error": first["relative_error"], "timings": first["timings"],
            "params_after": first["params_after"], "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _seed_entry(row: dict, index: int, seed: int) -> dict:
    """The measurement of the row's `index`-th seed, as with_seed takes it."""
    entry = {"ppl": {name: values[index] for name, values in row["ppl_by_seed"].items()},
             "window_nll": {name: values[index] for name, values in row["window_nll_by_seed"].items()},
             "prune_seconds": row["prune_seconds_by_seed"][index], "seed": seed}
    if "recovery_by_seed" in row:
        entry["window_nll_before_recovery"] = {name: values[index] for name, values
                                               in row["window_nll_before_recovery_by_seed"].items()}
        entry["recovery"] = row["recovery_by_seed"][index]
    return entry


def tokens_per_window(dense: dict) -> dict[str, int]:
    """Predicted tokens per evaluation window of each text, from the protocol's dense evaluations."""
    return {name: result.tokens // result.windows for name, result in dense.items()}


def interval_cell(row: dict, name: str) -> str:
    """'ppl [low, high]' over the row's seeds and windows; a row measured before the window losses
    were recorded has its perplexity only."""
    losses = row.get("window_nll_by_seed", {}).get(name)
    if not losses:
        return f"{row['ppl'][name]:.2f} (no interval)"
    combined = seeded_perplexity(losses)
    if combined.ci95 is None:
        return f"{combined.perplexity:.2f} (no interval)"
    return f"{combined.perplexity:.2f} [{combined.ci95[0]:.2f}, {combined.ci95[1]:.2f}]"


def seed_range_cell(row: dict, name: str) -> str:
    """The lowest and highest one-seed perplexity, and how many seeds there were."""
    by_seed = row.get("ppl_by_seed", {}).get(name)
    if not by_seed:
        return "–"
    if len(by_seed) == 1:
        return "1 seed"
    return f"{min(by_seed):.2f}–{max(by_seed):.2f} ({len(by_seed)} seeds)"


def comparison(row_a: dict, row_b: dict, name: str, tokens: int) -> PairedComparison:
    """Row A's perplexity on `name` against row B's, window by window, the seeds paired when both
    rows ran the same ones."""
    return seeded_comparison(row_a.get("window_nll_by_seed", {}).get(name, []),
                             row_b.get("window_nll_by_seed", {}).get(name, []), tokens,
                             seeds_pair=row_a.get("seeds") == row_b.get("seeds"))


def ratio_words(compared: PairedComparison) -> str:
    """'ratio [low, high]' of a comparison, or what of it exists."""
    ratio = "" if compared.ratio is None else f"{compared.ratio:.3f}"
    interval = "" if compared.ci95 is None else f" [{compared.ci95[0]:.3f}, {compared.ci95[1]:.3f}]"
    return ratio + interval


def comparison_cell(row_a: dict, row_b: dict, name: str, tokens: int, name_a: str, name_b: str) -> str:
    """'ratio [low, high] verdict' of row A against row B, the verdict naming both."""
    compared = comparison(row_a, row_b, name, tokens)
    return " ".join(part for part in (ratio_words(compared), named_verdict(compared, name_a, name_b)) if part)


def verdict_group(compared: PairedComparison) -> str:
    """'lower', 'higher' (A against B), 'not distinguishable', or 'none' when there is no interval."""
    if compared.ci95 is None:
        return "none"
    return {"A is lower": "lower", "B is lower": "higher"}.get(compared.verdict, "not distinguishable")


def earlier_payload(path: Path, args: dict, protocol_args: Sequence[str], dense_ppl: dict[str, float]) -> dict | None:
    """The JSON an earlier run of a bench wrote to `path`, if any; refuses one of another protocol
    (a flag in `protocol_args` differs, or the dense perplexity) rather than mix them."""
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    different = [arg for arg in protocol_args if earlier["args"].get(arg) != args[arg]]
    # The dense perplexity checks that model and windows are the same; a change of the evaluation's
    # batching moves it by float rounding only (~1e-5 relative), far below the tables' two decimals.
    if different or any(abs(earlier["dense"][name] - value) > 1e-4 * value for name, value in dense_ppl.items()):
        raise SystemExit(f"{path} was measured on another protocol ({', '.join(different) or 'dense perplexity'}); "
                         "write to a new --out instead of --resume.")
    return earlier


def measure_rows(points: Mapping[Any, tuple[dict, Any]], rows: dict, seeds: Sequence[int],
                 measure_all: Callable[[list, list[int]], Iterable[tuple[int, dict]]],
                 written: Callable[[dict], None]) -> dict:
    """Measure every seed the rows lack: `points` maps a row's key to (its identity fields, its
    settings); `measure_all(settings, seeds)` yields (index, measured) as common.measure_each does;
    `written(rows)` is called after each seed. Returns the rows by key."""
    todo = pending(points, rows, seeds)
    for index, measured in measure_all([points[key][1] for key, _ in todo], [seed for _, seed in todo]):
        key, seed = todo[index]
        rows[key] = with_seed(rows.get(key), points[key][0], seed, measured)
        print(json.dumps({**points[key][0], "seed": seed, "ppl": measured["ppl"]}), flush=True)
        written(rows)
    return rows
