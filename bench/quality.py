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

from spap_core.methods.registry import METHODS, PruneSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    add_protocol_args(parser, sparsities=[0.1, 0.2, 0.3, 0.4, 0.5], texts=["wikitext2"])
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    kept = earlier_rows(Path(args.out).with_suffix(".json"), vars(args), protocol.dense_ppl) if args.resume else []
    kept = rows_of_current_recovery(kept, lambda row: PruneSettings(method=row["method"], sparsity=row["sparsity"]))
    grid = [(method, sparsity) for sparsity in args.sparsities for method in args.methods]
    rows = [row for row in kept if (row["method"], row["sparsity"]) in grid]
    todo = [PruneSettings(method=method, sparsity=sparsity) for method, sparsity in grid
            if not any((row["method"], row["sparsity"]) == (method, sparsity) for row in rows)]
    in_grid_order = lambda row: grid.index((row["method"], row["sparsity"]))  # noqa: E731
    for index, measured in measure_each(protocol, protocol_arguments(args), todo, args.seed, args.ray):
        settings = todo[index]
        rows.append({"method": settings.method, "sparsity": settings.sparsity, "altmin": recovery_record(settings),
                     **measured, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(json.dumps(rows[-1]), flush=True)
        # after every row, with the kept rows not reached yet: a cut run loses nothing
        write_outputs(Path(args.out), protocol, sorted(rows, key=in_grid_order) + unreached(kept, rows), vars(args))
    # rows outside this run's grid stay
    write_outputs(Path(args.out), protocol, sorted(rows, key=in_grid_order) + unreached(kept, rows), vars(args))
    print(Path(args.out).read_text())


PROTOCOL_ARGS = ("model", "eval", "nsamples", "seqlen", "eval_windows", "seed")


def unreached(kept: list[dict], rows: list[dict]) -> list[dict]:
    """The kept rows of an earlier run whose (method, sparsity) this run has not reached yet."""
    done = {(row["method"], row["sparsity"]) for row in rows}
    return [row for row in kept if (row["method"], row["sparsity"]) not in done]


def earlier_rows(path: Path, args: dict, dense_ppl: dict[str, float]) -> list[dict]:
    """The rows of an earlier run with the same protocol; refuses a different one rather than mix them."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    different = [key for key in PROTOCOL_ARGS if earlier["args"].get(key) != args[key]]
    # The dense perplexity checks that model and windows are the same; a change of the evaluation's
    # batching moves it by float rounding only (~1e-5 relative), far below the tables' two decimals.
    if different or any(abs(earlier["dense"][name] - value) > 1e-4 * value for name, value in dense_ppl.items()):
        raise SystemExit(f"{path} was measured on another protocol ({', '.join(different) or 'dense perplexity'}); "
                         "write to a new --out instead of --resume.")
    return earlier["rows"]


def gain_lines(rows: list[dict], names: list[str]) -> list[str]:
    """Per sparsity and text: SPAP against the best baseline (negative % = SPAP lower, i.e. better)."""
    lines = ["| sparsity | text | SPAP | best baseline | SPAP vs best baseline |", "| --- | --- | --- | --- | --- |"]
    for sparsity in sorted({row["sparsity"] for row in rows}):
        at = [row for row in rows if row["sparsity"] == sparsity]
        spap = [row for row in at if row["method"] == "spap"]
        baselines = [row for row in at if row["method"] != "spap"]
        if not spap or not baselines:
            continue
        for name in names:
            best = min(baselines, key=lambda row: row["ppl"][name])
            ours = spap[0]["ppl"][name]
            lines.append(f"| {sparsity:.2f} | {name} | {ours:.2f} | {best['method']} {best['ppl'][name]:.2f} | "
                         f"{100 * (ours / best['ppl'][name] - 1):+.1f}% |")
    return lines


def write_outputs(out: Path, protocol, rows: list[dict], args: dict) -> None:
    """Markdown table + SPAP-vs-best-baseline summary, the raw rows as JSON, and an HTML plot."""
    names = list(protocol.eval_sets)
    lines = ["# Perplexity by method and sparsity", "",
             protocol.description + " Default settings of each method; SPAP's alternating minimization: "
             + recovery_description([row for row in rows if row["method"] == "spap"]) + ".", "",
             "Rows kept by --resume keep the time they were measured: prune times compare only between rows of one "
             "session (rows from before 2026-11-29 carry no time).", "",
             "| method | sparsity | " + " | ".join(f"ppl {n}" for n in names) + " | prune s | measured |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |",
             "| dense | 0 | " + " | ".join(f"{protocol.dense_ppl[n]:.2f}" for n in names) + " | | |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:.2f} | "
                     + " | ".join(f"{row['ppl'][n]:.2f}" for n in names)
                     + f" | {row['prune_seconds']:.1f} | {row.get('measured_at', '–')} |")
    lines += ["", "## SPAP against the best baseline", "", *gain_lines(rows, names)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense": protocol.dense_ppl, "rows": rows, "args": args}, indent=2))
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for column, name in enumerate(names, start=1):
        for method in dict.fromkeys(row["method"] for row in rows):
            points = [row for row in rows if row["method"] == method]
            figure.add_trace(go.Scatter(x=[r["sparsity"] for r in points], y=[r["ppl"][name] for r in points],
                                        mode="lines+markers", name=method, legendgroup=method,
                                        showlegend=column == 1), row=1, col=column)
        figure.add_hline(y=protocol.dense_ppl[name], line_dash="dot", annotation_text="dense", row=1, col=column)
    figure.update_yaxes(type="log", title_text="perplexity (log)")
    figure.update_xaxes(title_text="MLP sparsity")
    figure.update_layout(title=protocol.description, title_font_size=11)
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
