"""Sensitivity of SPAP's final perplexity to each hyperparameter, one at a time around the defaults.

    SPAP_DATA_DIR=../shared/data python bench/sensitivity.py --seeds 3 --out docs/results/sensitivity.md

Each `--grid` entry is `key=v1,v2,...` (a parameter key as in variants.py); every other
setting stays at its default, and the default point itself is measured once and shared.
Alternating minimization is off throughout (`--base`): it refits gate/up after the path has chosen
the mask, and off it isolates the path's hyperparameters at a fifth of the time per point.

Every value is compared with the default window by window, its calibration seeds paired with the
default's (bench/seeded.py), so the table says which values move the perplexity by more than the
windows' and the seeds' noise. Points are written after each seed; `--resume` measures only the
seeds a point lacks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
from common import add_ray_arg, load_protocol, measure_each, parse_overrides, protocol_arguments, settings_with
from plotly.subplots import make_subplots
from seeded import (
    add_seeds_arg,
    comparison,
    comparison_cell,
    earlier_payload,
    interval_cell,
    measure_rows,
    seed_list,
    seed_range_cell,
    tokens_per_window,
    verdict_group,
)

from spap_core.evaluation.intervals import seeded_perplexity
from spap_core.pipeline.parameters import parameter

GRID = ["K=1,3,5,10", "tau=2.25,5.0,8.0", "t=0.5,1.0,2.0", "alpha=0.3,0.5,1.0", "rho0=0.001,0.01,0.1",
        "delta=0.01,0.05,0.1,0.2"]
TEXT = "wikitext2"
DEFAULT = "default"  # the key of the default point's row
PROTOCOL_ARGS = ("model", "sparsity", "nsamples", "seqlen", "eval_windows", "seed", "base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=GRID, help="key=v1,v2,... (the keys of --base)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    add_seeds_arg(parser)
    parser.add_argument("--base", default="am_rounds=0", help="overrides of the defaults every point shares")
    parser.add_argument("--out", required=True, help="Markdown file; .json and .html are written beside it")
    parser.add_argument("--resume", action="store_true", help="keep the points (and seeds) of --out's JSON")
    add_ray_arg(parser)
    args = parser.parse_args()

    arguments = protocol_arguments(args, [TEXT])
    protocol = load_protocol(*arguments)
    defaults = settings_with(parse_overrides(args.base), args.sparsity)
    grid = grid_points(args.grid)
    points = {DEFAULT: ({"key": DEFAULT}, defaults)}
    points.update({point_key(field, value): ({"key": point_key(field, value)}, parameter(field).apply(defaults, value))
                   for field, value in grid if value != parameter(field).read(defaults)})
    out = Path(args.out)
    earlier = earlier_payload(out.with_suffix(".json"), vars(args), PROTOCOL_ARGS, protocol.dense_ppl) \
        if args.resume else None
    rows = {key: row for key, row in (earlier["rows"] if earlier else {}).items() if key in points}
    payload = {"description": protocol.description, "dense": protocol.dense_ppl,
               "tokens_per_window": tokens_per_window(protocol.dense), "args": vars(args)}

    def written(rows: dict) -> None:
        write_outputs(out, {**payload, "grid": [[field, value] for field, value in grid], "rows": rows}, defaults)

    measure_rows(points, rows, seed_list(args),
                 lambda settings, seeds: measure_each(protocol, arguments, settings, seeds, args.ray), written)
    written(rows)
    print(out.read_text())


def grid_points(entries: list[str]) -> list[tuple[str, object]]:
    """(parameter key, value) of every `key=v1,v2,...` entry, each value parsed by its declaration."""
    grid = []
    for entry in entries:
        field, _, values = entry.partition("=")
        grid += [(parameter(field).key, parameter(field).coerce(v)) for v in values.split(",")]
    return grid


def point_key(field: str, value: object) -> str:
    return f"{field}={value}"


def sweeps_of(grid: list, rows: dict, defaults) -> dict[str, list[tuple[object, bool, dict | None]]]:
    """Per parameter: (value, whether it is the default, its row or None when not measured yet)."""
    sweeps: dict[str, list[tuple[object, bool, dict | None]]] = {}
    for field, value in grid:
        default = value == parameter(field).read(defaults)
        sweeps.setdefault(field, []).append((value, default, rows.get(DEFAULT if default else point_key(field, value))))
    return sweeps


def write_outputs(out: Path, payload: dict, defaults) -> None:
    """The table (each value's perplexity with its interval and seeds' range, and its paired verdict
    against the default), a paragraph from the verdicts, the JSON and a plot with error bars."""
    rows, tokens = payload["rows"], payload["tokens_per_window"][TEXT]
    sweeps = sweeps_of(payload["grid"], rows, defaults)
    reference = rows.get(DEFAULT)
    args = payload["args"]
    lines = ["# Sensitivity of SPAP to its hyperparameters", "",
             payload["description"] + f" Sparsity {args['sparsity']}. One setting varied at a time; the rest at the "
             f"defaults (marked **bold**) with `{args['base'] or 'no overrides'}`.", "",
             "Each perplexity is over the point's calibration seeds (exp of the mean loss) with its 95% interval, "
             "the windows' and the seeds' noise combined, and the lowest and highest one-seed perplexity. "
             "'value ÷ default' is the point's perplexity over the default's, window by window with the seeds "
             "paired (spap_core.evaluation.intervals); a verdict names the lower side only when its interval "
             f"excludes 1. Command: `SPAP_DATA_DIR=../shared/data python bench/sensitivity.py --seeds {args['seeds']} "
             "--out docs/results/sensitivity.md`.", "",
             f"| setting | value | ppl {TEXT} [95%] | seeds' range | value ÷ default [95%] | rel. layer error "
             "| prune s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for field, points in sweeps.items():
        symbol, label = parameter(field).symbol, parameter(field).label
        for value, default, row in points:
            shown = f"**{value}**" if default else f"{value}"
            if row is None:
                lines.append(f"| {label} | {shown} | not measured yet | | | | |")
                continue
            against = "–" if default or reference is None else \
                comparison_cell(row, reference, TEXT, tokens, f"{symbol} = {value}", "the default")
            lines.append(f"| {label} | {shown} | {interval_cell(row, TEXT)} | "
                         f"{seed_range_cell(row, TEXT)} | {against} | {row['relative_error']:.4f} | "
                         f"{row['prune_seconds']:.1f} |")
    lines += ["", "## Which settings move the perplexity beyond the noise", "",
              *verdict_lines(sweeps, reference, tokens)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    write_plot(out.with_suffix(".html"), payload["description"], args["sparsity"], sweeps, reference)


def verdict_lines(sweeps: dict, reference: dict | None, tokens: int) -> list[str]:
    """Per parameter, from the verdicts against the default: the values that raise or lower the
    perplexity beyond the noise, and those not distinguishable from it."""
    if reference is None:
        return ["The default point is not measured yet: no verdicts."]
    lines = []
    for field, points in sweeps.items():
        groups: dict[str, list[str]] = {"lower": [], "higher": [], "not distinguishable": [], "none": []}
        for value, default, row in points:
            if not default and row is not None:
                groups[verdict_group(comparison(row, reference, TEXT, tokens))].append(str(value))
        clauses = [f"{words} at {', '.join(groups[group])}" for group, words in
                   (("higher", "higher than the default"), ("lower", "lower than the default"),
                    ("not distinguishable", "not distinguishable from the default")) if groups[group]]
        if groups["none"]:
            clauses.append(f"no verdict at {', '.join(groups['none'])} (no window losses)")
        lines.append(f"- {parameter(field).symbol}: " + ("; ".join(clauses) or "no other value measured yet") + ".")
    return lines


def write_plot(path: Path, description: str, sparsity: float, sweeps: dict, reference: dict | None) -> None:
    """Perplexity against each parameter's value with its 95% interval as error bars; dotted: the
    default's perplexity."""
    figure = make_subplots(rows=1, cols=len(sweeps), shared_yaxes=True,
                           subplot_titles=[parameter(f).symbol for f in sweeps])
    for column, (field, points) in enumerate(sweeps.items(), start=1):
        measured = [(value, row) for value, _, row in points if row is not None]
        combined = [seeded_perplexity(row["window_nll_by_seed"][TEXT]) for _, row in measured]
        figure.add_trace(go.Scatter(
            x=[value for value, _ in measured], y=[one.perplexity for one in combined], mode="lines+markers",
            name=parameter(field).symbol, showlegend=False,
            error_y={"type": "data", "symmetric": False,
                     "array": [one.ci95[1] - one.perplexity if one.ci95 else 0 for one in combined],
                     "arrayminus": [one.perplexity - one.ci95[0] if one.ci95 else 0 for one in combined]}),
            row=1, col=column)
        if reference is not None:
            figure.add_hline(y=reference["ppl"][TEXT], line_dash="dot", row=1, col=column)
        if parameter(field).log_scale:
            figure.update_xaxes(type="log", row=1, col=column)
    figure.update_yaxes(title_text=f"perplexity ({TEXT}), 95% interval", row=1, col=1)
    figure.update_layout(title=f"{description} Sparsity {sparsity}; dotted: defaults", title_font_size=11)
    figure.write_html(path, include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
