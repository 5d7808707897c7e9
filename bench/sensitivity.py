"""Sensitivity of SPAP's final perplexity to each hyperparameter, one at a time around the defaults.

    SPAP_DATA_DIR=../shared/data python bench/sensitivity.py --nsamples 16 --eval-windows 8 \\
        --out docs/results/sensitivity.md

Each `--grid` entry is `key=v1,v2,...` (a parameter key as in variants.py); every other
setting stays at its default, and the default point itself is measured once and shared.
Alternating minimization is off throughout (`--base`): it refits gate/up after the path has chosen
the mask, and off it isolates the path's hyperparameters at a fifth of the time per point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
from common import add_ray_arg, load_protocol, measure_each, parse_overrides, protocol_arguments, settings_with
from plotly.subplots import make_subplots

from spap_core.pipeline.parameters import parameter

GRID = ["K=1,3,5,10", "tau=2.25,5.0,8.0", "t=0.5,1.0,2.0", "alpha=0.3,0.5,1.0", "rho0=0.001,0.01,0.1",
        "delta=0.01,0.05,0.1,0.2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=GRID, help="key=v1,v2,...")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default="am_rounds=0", help="overrides of the defaults every point shares")
    parser.add_argument("--out", required=True, help="Markdown file; .json and .html are written beside it")
    add_ray_arg(parser)
    args = parser.parse_args()

    protocol = load_protocol(*protocol_arguments(args, ["wikitext2"]))
    defaults = settings_with(parse_overrides(args.base), args.sparsity)
    grid = []  # (field, value) of every point but the defaults, which are measured once
    for entry in args.grid:
        field, _, values = entry.partition("=")
        grid += [(field, value) for value in (parameter(field).coerce(v) for v in values.split(","))]
    todo = [(field, value) for field, value in grid if value != parameter(field).read(defaults)]
    settings = [defaults] + [parameter(field).apply(defaults, value) for field, value in todo]
    measured = dict(measure_each(protocol, protocol_arguments(args, ["wikitext2"]), settings, args.seed, args.ray))
    baseline = measured[0]
    print(json.dumps({"default": baseline}), flush=True)
    sweeps: dict[str, list[dict]] = {}
    for field, value in grid:
        point = todo.index((field, value)) + 1 if (field, value) in todo else None
        sweeps.setdefault(field, []).append({"value": value, "default": point is None,
                                             **(baseline if point is None else measured[point])})

    lines = ["# Sensitivity of SPAP to its hyperparameters", "",
             protocol.description + f" Sparsity {args.sparsity}. One setting varied at a time; the rest at the "
             f"defaults (marked **bold**) with `{args.base or 'no overrides'}`.", "",
             "| setting | value | ppl wikitext2 | vs default | rel. layer error | prune s |",
             "| --- | --- | --- | --- | --- | --- |"]
    reference = baseline["ppl"]["wikitext2"]
    for field, points in sweeps.items():
        for point in points:
            value = f"**{point['value']}**" if point["default"] else f"{point['value']}"
            ppl = point["ppl"]["wikitext2"]
            lines.append(f"| {parameter(field).symbol} (`{field}`) | {value} | {ppl:.2f} | "
                         f"{100 * (ppl / reference - 1):+.1f}% | {point['relative_error']:.4f} | "
                         f"{point['prune_seconds']:.1f} |")
    lines += ["", "Spread of the perplexity over each sweep (max − min):", ""]
    for field, points in sweeps.items():
        values = [p["ppl"]["wikitext2"] for p in points]
        lines.append(f"- {parameter(field).symbol}: {max(values) - min(values):.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense": protocol.dense_ppl, "default": baseline,
                                                    "sweeps": sweeps, "args": vars(args)}, indent=2))
    figure = make_subplots(rows=1, cols=len(sweeps), shared_yaxes=True,
                           subplot_titles=[parameter(f).symbol for f in sweeps])
    for column, (field, points) in enumerate(sweeps.items(), start=1):
        figure.add_trace(go.Scatter(x=[p["value"] for p in points], y=[p["ppl"]["wikitext2"] for p in points],
                                    mode="lines+markers", name=parameter(field).symbol, showlegend=False),
                         row=1, col=column)
        figure.add_hline(y=reference, line_dash="dot", row=1, col=column)
        if field in ("penalty.rho0", "refit.ridge"):
            figure.update_xaxes(type="log", row=1, col=column)
    figure.update_yaxes(title_text="perplexity (wikitext2)", row=1, col=1)
    figure.update_layout(title=f"{protocol.description} Sparsity {args.sparsity}; dotted: defaults",
                         title_font_size=11)
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")
    print(out.read_text())


if __name__ == "__main__":
    main()
