"""Perplexity of every method × sparsity on one protocol (default settings of each method),
written as a Markdown table plus the raw rows as JSON. The model, the token windows and the dense
perplexity are prepared once; each (method, sparsity) prunes a fresh copy of the dense model.

    SPAP_DATA_DIR=../shared/data python bench/quality.py --sparsities 0.3 --nsamples 16 \
        --eval-windows 8 --out docs/results/methods_at_30.md

A run of all 30 pairs takes about 2 h on 2 CPU cores, so `--resume` keeps the rows of an earlier
run's JSON (the protocol must match exactly, and the dense perplexity is checked again) and
measures only the missing pairs, and the rows whose alternating minimization differs from today's
default; each row records when it was measured and the recovery it ran.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import plotly.graph_objects as go
from common import (
    add_protocol_args,
    load_protocol,
    measure_each,
    protocol_arguments,
    recovery_description,
    recovery_record,
    rows_of_current_recovery,
)
from plotly.subplots import make_subplots

from spap_core.evaluation.intervals import PairedComparison, named_verdict, seeded_comparison, seeded_perplexity
from spap_core.methods.registry import METHODS, PruneSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=1,
                        help="calibration seeds per (method, sparsity): --seed, --seed+1, … each draws its own "
                             "calibration windows and prunes once; the table's interval combines them")
    add_protocol_args(parser, sparsities=[0.1, 0.2, 0.3, 0.4, 0.5], texts=["wikitext2"])
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    kept = earlier_rows(Path(args.out).with_suffix(".json"), vars(args), protocol.dense_ppl) if args.resume else []
    kept = rows_of_current_recovery(kept, lambda row: PruneSettings(method=row["method"], sparsity=row["sparsity"]))
    grid = [(method, sparsity) for sparsity in args.sparsities for method in args.methods]
    seeds = [args.seed + offset for offset in range(args.seeds)]
    # rows of a run over seeds continue where they stopped; rows without window losses are measured again
    rows = {key(row): row for row in kept if key(row) in grid and row.get("seeds")}
    todo = [(PruneSettings(method=method, sparsity=sparsity), seed) for method, sparsity in grid for seed in seeds
            if seed not in rows.get((method, sparsity), {}).get("seeds", [])]
    payload = {"description": protocol.description, "dense": protocol.dense_ppl,
               "tokens_per_window": {name: result.tokens // result.windows for name, result in protocol.dense.items()},
               "args": vars(args)}
    points = measure_each(protocol, protocol_arguments(args), [one for one, _ in todo], [seed for _, seed in todo],
                          args.ray)
    for index, measured in points:
        settings, seed = todo[index]
        point = (settings.method, settings.sparsity)
        rows[point] = with_seed(rows.get(point), settings, seed, measured)
        print(json.dumps({"method": settings.method, "sparsity": settings.sparsity, "seed": seed,
                          "ppl": measured["ppl"]}), flush=True)
        # after every seed, with the kept rows not reached yet: a cut run loses at most the run in progress
        write_outputs(Path(args.out), {**payload, "rows": table_rows(rows, kept)})
    write_outputs(Path(args.out), {**payload, "rows": table_rows(rows, kept)})
    print(Path(args.out).read_text())


PROTOCOL_ARGS = ("model", "eval", "nsamples", "seqlen", "eval_windows", "seed")


def key(row: dict) -> tuple[str, float]:
    return row["method"], row["sparsity"]


def with_seed(row: dict | None, settings: PruneSettings, seed: int, measured: dict) -> dict:
    """A table row with one more calibration seed's measurement: every seed's perplexities, window
    losses and prune time in seed order, the perplexity over all seeds (exp of the mean loss) as the
    row's `ppl`, and the layer error, time split and parameters of its first seed."""
    by_seed = {} if row is None else {seed_of: index for index, seed_of in enumerate(row["seeds"])}
    first = row if row is not None and min(by_seed) < seed else measured
    entries = [] if row is None else [
        {"ppl": {name: values[index] for name, values in row["ppl_by_seed"].items()},
         "window_nll": {name: values[index] for name, values in row["window_nll_by_seed"].items()},
         "prune_seconds": row["prune_seconds_by_seed"][index], "seed": seed_of} for seed_of, index in by_seed.items()]
    entries = sorted([*entries, {**measured, "seed": seed}], key=lambda entry: entry["seed"])
    names = list(measured["ppl"])
    window_nll_by_seed = {name: [entry["window_nll"][name] for entry in entries] for name in names}
    return {"method": settings.method, "sparsity": settings.sparsity, "altmin": recovery_record(settings),
            "seeds": [entry["seed"] for entry in entries],
            "ppl": {name: seeded_perplexity(window_nll_by_seed[name]).perplexity for name in names},
            "ppl_by_seed": {name: [entry["ppl"][name] for entry in entries] for name in names},
            "window_nll_by_seed": window_nll_by_seed,
            "prune_seconds": sum(entry["prune_seconds"] for entry in entries) / len(entries),
            "prune_seconds_by_seed": [entry["prune_seconds"] for entry in entries],
            "relative_error": first["relative_error"], "timings": first["timings"],
            "params_after": first["params_after"], "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table_rows(rows: dict[tuple[str, float], dict], kept: list[dict]) -> list[dict]:
    """The measured rows and the kept rows of an earlier run they do not replace, by sparsity and then
    in the methods' registry order."""
    order = list(METHODS)
    every = [*rows.values(), *(row for row in kept if key(row) not in rows)]
    return sorted(every, key=lambda row: (row["sparsity"], order.index(row["method"]) if row["method"] in order
                                          else len(order)))


def earlier_rows(path: Path, args: dict, dense_ppl: dict[str, float]) -> list[dict]:
    """The rows of an earlier run with the same protocol; refuses a different one rather than mix them."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    different = [arg for arg in PROTOCOL_ARGS if earlier["args"].get(arg) != args[arg]]
    # The dense perplexity checks that model and windows are the same; a change of the evaluation's
    # batching moves it by float rounding only (~1e-5 relative), far below the tables' two decimals.
    if different or any(abs(earlier["dense"][name] - value) > 1e-4 * value for name, value in dense_ppl.items()):
        raise SystemExit(f"{path} was measured on another protocol ({', '.join(different) or 'dense perplexity'}); "
                         "write to a new --out instead of --resume.")
    return earlier["rows"]


def spap_and_baselines(rows: list[dict]) -> Iterator[tuple[float, list[dict], list[dict]]]:
    """Each sparsity that has a SPAP row and a baseline row, in increasing order: the sparsity, SPAP's
    rows and the baselines' rows there."""
    for sparsity in sorted({row["sparsity"] for row in rows}):
        at = [row for row in rows if row["sparsity"] == sparsity]
        spap = [row for row in at if row["method"] == "spap"]
        baselines = [row for row in at if row["method"] != "spap"]
        if spap and baselines:
            yield sparsity, spap, baselines


def gain_lines(rows: list[dict], names: list[str]) -> list[str]:
    """Per sparsity and text: SPAP against the best baseline (negative % = SPAP lower, i.e. better)."""
    lines = ["| sparsity | text | SPAP | best baseline | SPAP vs best baseline |", "| --- | --- | --- | --- | --- |"]
    for sparsity, spap, baselines in spap_and_baselines(rows):
        for name in names:
            best = min(baselines, key=lambda row: row["ppl"][name])
            ours = spap[0]["ppl"][name]
            lines.append(f"| {sparsity:.2f} | {name} | {ours:.2f} | {best['method']} {best['ppl'][name]:.2f} | "
                         f"{100 * (ours / best['ppl'][name] - 1):+.1f}% |")
    return lines


def interval_cell(row: dict, name: str) -> str:
    """'ppl [low, high]' over the row's seeds and windows; a row kept from before the window losses were
    recorded has its perplexity only."""
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


def spap_comparison(spap: dict, row: dict, name: str, tokens_per_window: int) -> PairedComparison:
    """SPAP's row against another method's at the same sparsity, window by window on `name`, the
    seeds paired when both rows ran the same ones."""
    return seeded_comparison(spap.get("window_nll_by_seed", {}).get(name, []),
                             row.get("window_nll_by_seed", {}).get(name, []), tokens_per_window,
                             seeds_pair=spap.get("seeds") == row.get("seeds"))


def verdict_cell(rows: list[dict], row: dict, name: str, tokens_per_window: int) -> str:
    """'ratio [low, high] verdict' of SPAP against the row's method at the row's sparsity."""
    if row["method"] == "spap":
        return "–"
    spap = [other for other in rows if other["method"] == "spap" and other["sparsity"] == row["sparsity"]]
    if not spap:
        return "no SPAP row"
    comparison = spap_comparison(spap[0], row, name, tokens_per_window)
    ratio = "" if comparison.ratio is None else f"{comparison.ratio:.3f} "
    interval = "" if comparison.ci95 is None else f"[{comparison.ci95[0]:.3f}, {comparison.ci95[1]:.3f}] "
    return f"{ratio}{interval}{named_verdict(comparison, 'SPAP', row['method'])}"


def verdict_summary(rows: list[dict], names: list[str], tokens_per_window: dict[str, int]) -> list[str]:
    """Per sparsity and text, from the verdicts: whether SPAP is lower than every baseline, and which
    baselines it is not distinguishable from, is higher than, or has no verdict against."""
    sentences = []
    for sparsity, spap, baselines in spap_and_baselines(rows):
        if not spap[0].get("window_nll_by_seed"):
            sentences.append(f"At sparsity {sparsity:.2f}: no verdict (SPAP's row kept no window losses).")
            continue
        parts = []
        for name in names:
            groups: dict[str, list[str]] = {"lower": [], "not distinguishable": [], "higher": [], "none": []}
            for row in baselines:
                comparison = spap_comparison(spap[0], row, name, tokens_per_window[name])
                group = {"A is lower": "lower", "B is lower": "higher"}.get(
                    comparison.verdict, "none" if comparison.ci95 is None else "not distinguishable")
                ratio = "" if comparison.ci95 is None else \
                    f" ({comparison.ratio:.3f} [{comparison.ci95[0]:.3f}, {comparison.ci95[1]:.3f}])"
                groups[group].append(row["method"] + ratio)
            parts.append(text_verdict(name, groups, len(baselines)))
        sentences.append(f"At sparsity {sparsity:.2f}: " + "; ".join(parts) + ".")
    return sentences


def text_verdict(name: str, groups: dict[str, list[str]], baselines: int) -> str:
    """One text's clause of verdict_summary."""
    if len(groups["lower"]) == baselines:
        return f"on {name} SPAP is lower than every baseline ({', '.join(groups['lower'])})"
    clauses = [f"{words} {', '.join(groups[group])}" for group, words in
               (("lower", "lower than"), ("not distinguishable", "not distinguishable from"), ("higher", "higher than"))
               if groups[group]]
    missing = f"no verdict against {', '.join(groups['none'])} (rows without window losses)" if groups["none"] else ""
    if not clauses:
        return f"on {name} {missing}"
    return f"on {name} SPAP is " + ", ".join(clauses) + (f", with {missing}" if missing else "")


def table_lines(payload: dict) -> list[str]:
    """The Markdown table: per text the perplexity with its interval, the seeds' range and SPAP
    against the row's method; then the verdicts in words and SPAP against the best baseline."""
    names, rows, tokens = list(payload["dense"]), payload["rows"], payload["tokens_per_window"]
    lines = ["| method | sparsity | " + " | ".join(f"ppl {n} [95%]" for n in names) + " | "
             + " | ".join(f"seeds' range {n}" for n in names) + " | "
             + " | ".join(f"SPAP ÷ method {n} [95%]" for n in names) + " | prune s | measured |",
             "| --- | --- | " + " | ".join("---" for _ in range(3 * len(names))) + " | --- | --- |",
             "| dense | 0 | " + " | ".join(f"{payload['dense'][n]:.2f}" for n in names) + " | "
             + " | ".join("" for _ in range(2 * len(names))) + " | | |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:.2f} | "
                     + " | ".join(interval_cell(row, n) for n in names) + " | "
                     + " | ".join(seed_range_cell(row, n) for n in names) + " | "
                     + " | ".join(verdict_cell(rows, row, n, tokens[n]) for n in names)
                     + f" | {row['prune_seconds']:.1f} | {row.get('measured_at', '–')} |")
    return lines + ["", *verdict_summary(rows, names, tokens)]


def write_outputs(out: Path, payload: dict) -> None:
    """Markdown table with intervals and verdicts, and SPAP against the best baseline; the payload
    (protocol, dense perplexities, rows with every seed's window losses) as JSON, and an HTML plot.
    Everything is computed from the payload, so a table rewrites from its JSON alone."""
    names, rows = list(payload["dense"]), payload["rows"]
    lines = ["# Perplexity by method and sparsity", "",
             payload["description"] + " Default settings of each method; SPAP's alternating minimization: "
             + recovery_description([row for row in rows if row["method"] == "spap"]) + ".", "",
             "A row measured over calibration seeds shows the perplexity over all of them (exp of the mean "
             "loss) with its 95% interval, windows' and seeds' noise combined, and the lowest and highest "
             "one-seed perplexity. SPAP ÷ method is SPAP's perplexity over the row's method's at that "
             "sparsity, window by window with the seeds paired (spap_core.evaluation.intervals); a verdict "
             "names the lower side only when the interval excludes 1. Rows kept by --resume from before "
             "window losses were recorded have no interval and no verdict. Prune times compare only between "
             "rows of one session (rows from before 2026-11-29 carry no time).", "",
             *table_lines(payload),
             "", "## SPAP against the best baseline", "", *gain_lines(rows, names)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for column, name in enumerate(names, start=1):
        for method in dict.fromkeys(row["method"] for row in rows):
            points = [row for row in rows if row["method"] == method]
            figure.add_trace(go.Scatter(x=[r["sparsity"] for r in points], y=[r["ppl"][name] for r in points],
                                        mode="lines+markers", name=method, legendgroup=method,
                                        showlegend=column == 1), row=1, col=column)
        figure.add_hline(y=payload["dense"][name], line_dash="dot", annotation_text="dense", row=1, col=column)
    figure.update_yaxes(type="log", title_text="perplexity (log)")
    figure.update_xaxes(title_text="MLP sparsity")
    figure.update_layout(title=payload["description"], title_font_size=11)
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
