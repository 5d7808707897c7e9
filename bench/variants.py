"""Perplexity of named setting variants on one protocol: the ablations of SPAP's parts.

Each variant is `label:overrides` with the parameter keys of the CLI and the share link
(spap_core.pipeline.parameters), e.g. `K=10:K=10` or `no bias:bias=false`, and `method=flap` for a baseline. \
The model and windows are prepared once. With no variants given, the
standard ablation set runs. Example:

    SPAP_DATA_DIR=../shared/data python bench/variants.py --nsamples 16 --eval-windows 8 \\
        --out docs/results/ablations.md

Every variant is compared with the reference variant (--reference, the first by default) window by
window, over --seeds calibration seeds paired between the two (bench/seeded.py). Rows are written
after each seed; `--resume` measures only the seeds a variant lacks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
from common import load_protocol, measure_each, protocol_arguments, variant_settings
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

from spap_core.evaluation.intervals import seeded_perplexity

# Alternating minimization (AM) is part of the defaults; the parts of the penalty path and refit
# are ablated with it off, against the "without AM" row, so each is measured on its own.
ABLATIONS = [
    "SPAP (defaults: 1 round × 40 Adam steps of 256 tokens of AM, lr 1e-3):",
    "former AM default, 2 rounds × 10 steps of 2048 tokens:am_rounds=2,am_steps=10,am_batch=2048",
    "without alternating minimization:am_rounds=0",
    "AM 2 rounds:am_rounds=2",
    "no AM, one-shot selection (K=1, α=1):am_rounds=0,K=1,alpha=1.0",
    ("no AM, fixed schedule, K=10, τ=2.25, α=0.3 (the paper's reading):"
     "am_rounds=0,schedule=fixed,K=10,tau=2.25,alpha=0.3"),
    "no AM, no bias/mean compensation:am_rounds=0,bias=false",
    "no AM, plain least-squares refit (prior zero, δ=0.01):am_rounds=0,prior=zero,delta=0.01",
    "no AM, error-correcting targets β=0.5:am_rounds=0,beta=0.5",
    "FLAP (baseline):method=flap",
    "FASP (baseline):method=fasp",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=ABLATIONS, help="label:overrides")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--eval", nargs="+", default=["wikitext2"], choices=["wikitext2", "shakespeare"])
    parser.add_argument("--seed", type=int, default=0)
    add_seeds_arg(parser)
    parser.add_argument("--reference", default=None, metavar="LABEL",
                        help="the variant every other is compared with (default: the first)")
    parser.add_argument("--title", default="Ablations of SPAP")
    parser.add_argument("--out", required=True, help="Markdown file; .json and .html are written beside it")
    parser.add_argument("--resume", action="store_true", help="keep the variants (and seeds) of --out's JSON")
    args = parser.parse_args()

    points = {}
    for variant in args.variants:
        label, spec, settings = variant_settings(variant, args.sparsity)
        points[label] = ({"label": label, "overrides": spec}, settings)
    args.reference = args.reference or next(iter(points))
    if args.reference not in points:
        raise SystemExit(f"--reference {args.reference!r} is not one of the variants' labels: {', '.join(points)}")
    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    out = Path(args.out)
    earlier = earlier_payload(out.with_suffix(".json"), vars(args), PROTOCOL_ARGS, protocol.dense_ppl) \
        if args.resume else None
    # a kept row counts only if its variant still has the same overrides
    rows = {row["label"]: row for row in (earlier["rows"] if earlier else [])
            if row["label"] in points and row.get("seeds") and row["overrides"] == points[row["label"]][0]["overrides"]}
    payload = {"description": protocol.description, "dense": protocol.dense_ppl,
               "tokens_per_window": tokens_per_window(protocol.dense), "args": vars(args)}

    def written(rows: dict) -> None:
        write_outputs(out, {**payload, "rows": [rows[label] for label in points if label in rows]})

    measure_rows(points, rows, seed_list(args),
                 lambda settings, seeds: measure_each(protocol, protocol_arguments(args), settings, seeds, None),
                 written)
    written(rows)
    print(out.read_text())


PROTOCOL_ARGS = ("model", "sparsity", "nsamples", "seqlen", "eval_windows", "eval", "seed")


def write_outputs(out: Path, payload: dict) -> None:
    """The table (each variant's perplexity with its interval and seeds' range, and its paired verdict
    against the reference variant), the verdicts in words, the JSON and a bar plot with error bars.
    Everything is computed from the payload, so a table rewrites from its JSON alone."""
    args, rows, tokens = payload["args"], payload["rows"], payload["tokens_per_window"]
    names = list(payload["dense"])
    reference = next((row for row in rows if row["label"] == args["reference"]), None)
    lines = [f"# {args['title']}", "", payload["description"] + f" Sparsity {args['sparsity']}.", "",
             "Each perplexity is over the variant's calibration seeds (exp of the mean loss) with its 95% interval, "
             "the windows' and the seeds' noise combined, and the lowest and highest one-seed perplexity. "
             f"'÷ reference' is the variant's perplexity over that of \"{args['reference']}\", window by window with "
             "the seeds paired (spap_core.evaluation.intervals); a verdict names the lower side only when its "
             "interval excludes 1.", "",
             "| variant | overrides | " + " | ".join(f"ppl {n} [95%]" for n in names) + " | "
             + " | ".join(f"seeds' range {n}" for n in names) + " | "
             + " | ".join(f"÷ reference {n} [95%]" for n in names) + " | rel. layer error | prune s |",
             "| --- | --- | " + " | ".join("---" for _ in range(3 * len(names))) + " | --- | --- |",
             "| dense | | " + " | ".join(f"{payload['dense'][n]:.2f}" for n in names) + " | "
             + " | ".join("" for _ in range(2 * len(names))) + " | | |"]
    for row in rows:
        against = ["–" if row is reference or reference is None else
                   comparison_cell(row, reference, n, tokens[n], row["label"], args["reference"]) for n in names]
        lines.append(f"| {row['label']} | `{row['overrides'] or 'defaults'}` | "
                     + " | ".join(interval_cell(row, n) for n in names) + " | "
                     + " | ".join(seed_range_cell(row, n) for n in names) + " | " + " | ".join(against)
                     + f" | {row['relative_error']:.4f} | {row['prune_seconds']:.1f} |")
    lines += ["", f"## Against \"{args['reference']}\"", "", *verdict_lines(rows, reference, names, tokens)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    combined = {n: [seeded_perplexity(row["window_nll_by_seed"][n]) for row in rows] for n in names}
    figure = go.Figure([go.Bar(name=n, y=[row["label"] for row in rows], x=[one.perplexity for one in combined[n]],
                               orientation="h",
                               error_x={"type": "data", "symmetric": False,
                                        "array": [one.ci95[1] - one.perplexity if one.ci95 else 0
                                                  for one in combined[n]],
                                        "arrayminus": [one.perplexity - one.ci95[0] if one.ci95 else 0
                                                       for one in combined[n]]}) for n in names])
    for n in names:
        figure.add_vline(x=payload["dense"][n], line_dash="dot", annotation_text=f"dense {n}")
    figure.update_layout(title=f"{args['title']}: {payload['description']} Sparsity {args['sparsity']}.",
                         title_font_size=11, xaxis_title="perplexity, 95% interval", yaxis_autorange="reversed",
                         height=120 + 40 * len(rows))
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")


def verdict_lines(rows: list[dict], reference: dict | None, names: list[str], tokens: dict[str, int]) -> list[str]:
    """One line per variant: on each text, lower than, higher than or not distinguishable from the
    reference, with the ratio and its interval."""
    if reference is None:
        return ["The reference variant is not measured yet: no verdicts."]
    words = {"lower": "lower than the reference", "higher": "higher than the reference",
             "not distinguishable": "not distinguishable from the reference", "none": "no verdict (no window losses)"}
    lines = []
    for row in rows:
        if row is reference:
            continue
        clauses = []
        for n in names:
            compared = comparison(row, reference, n, tokens[n])
            clauses.append(f"on {n} {words[verdict_group(compared)]} ({ratio_words(compared) or 'no ratio'})")
        lines.append(f"- {row['label']}: " + "; ".join(clauses) + ".")
    return lines


if __name__ == "__main__":
    main()
