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
from seeded import (
    add_seeds_arg,
    comparison,
    comparison_cell,
    earlier_payload,
    interval_cell,
    measure_rows,
    ratio_words,
    seed_list,
    seed_range_cell,
    tokens_per_window,
    verdict_group,
)

from spap_core.methods.registry import METHODS, PruneSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    add_seeds_arg(parser)
    add_protocol_args(parser, sparsities=[0.1, 0.2, 0.3, 0.4, 0.5], texts=["wikitext2"])
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    out = Path(args.out)
    earlier = earlier_payload(out.with_suffix(".json"), vars(args), PROTOCOL_ARGS, protocol.dense_ppl) \
        if args.resume else None
    kept = rows_of_current_recovery(earlier["rows"] if earlier else [],
                                    lambda row: PruneSettings(method=row["method"], sparsity=row["sparsity"]))
    grid = [(method, sparsity) for sparsity in args.sparsities for method in args.methods]
    # rows of a run over seeds continue where they stopped; rows without window losses are measured again
    rows = {key(row): row for row in kept if key(row) in grid and row.get("seeds")}
    points = {}
    for method, sparsity in grid:
        settings = PruneSettings(method=method, sparsity=sparsity)
        points[(method, sparsity)] = ({"method": method, "sparsity": sparsity,
                                       "altmin": recovery_record(settings)}, settings)
    payload = {"description": protocol.description, "dense": protocol.dense_ppl,
               "tokens_per_window": tokens_per_window(protocol.dense), "args": vars(args)}

    def written(rows: dict) -> None:  # with the kept rows not reached yet
        write_outputs(out, {**payload, "rows": table_rows(rows, kept)})

    measure_rows(points, rows, seed_list(args),
                 lambda settings, seeds: measure_each(protocol, protocol_arguments(args), settings, seeds, args.ray),
                 written)
    written(rows)
    print(out.read_text())


PROTOCOL_ARGS = ("model", "eval", "nsamples", "seqlen", "eval_windows", "seed")


def key(row: dict) -> tuple[str, float]:
    return row["method"], row["sparsity"]


def table_rows(rows: dict[tuple[str, float], dict], kept: list[dict]) -> list[dict]:
    """The measured rows and the kept rows of an earlier run they do not replace, by sparsity and then
    in the methods' registry order."""
    order = list(METHODS)
    every = [*rows.values(), *(row for row in kept if key(row) not in rows)]
    return sorted(every, key=lambda row: (row["sparsity"], order.index(row["method"]) if row["method"] in order
                                          else len(order)))


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


def verdict_cell(rows: list[dict], row: dict, name: str, tokens: int) -> str:
    """'ratio [low, high] verdict' of SPAP against the row's method at the row's sparsity."""
    if row["method"] == "spap":
        return "–"
    spap = [other for other in rows if other["method"] == "spap" and other["sparsity"] == row["sparsity"]]
    if not spap:
        return "no SPAP row"
    return comparison_cell(spap[0], row, name, tokens, "SPAP", row["method"])


def verdict_summary(rows: list[dict], names: list[str], tokens: dict[str, int]) -> list[str]:
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
                compared = comparison(spap[0], row, name, tokens[name])
                group = verdict_group(compared)
                groups[group].append(row["method"] + ("" if group == "none" else f" ({ratio_words(compared)})"))
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
