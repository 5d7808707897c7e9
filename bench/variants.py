"""Perplexity of named setting variants on one protocol: the ablations of SPAP's parts.

Each variant is `label:overrides` with the parameter keys of the CLI and the share link
(spap_core.pipeline.parameters), e.g. `K=10:K=10` or `no bias:bias=false`, and `method=flap` for a baseline. \
The model and windows are prepared once. With no variants given, the
standard ablation set runs. Example:

    SPAP_DATA_DIR=../shared/data python bench/variants.py --nsamples 16 --eval-windows 8 \\
        --out docs/results/ablations.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
from common import load_protocol, measure, variant_settings

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
    parser.add_argument("--title", default="Ablations of SPAP")
    parser.add_argument("--out", required=True, help="Markdown file; .json and .html are written beside it")
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    rows = []
    for variant in args.variants:
        label, spec, settings = variant_settings(variant, args.sparsity)
        rows.append({"label": label, "overrides": spec, **measure(protocol, settings, args.seed)})
        print(json.dumps(rows[-1]), flush=True)

    names = list(protocol.eval_sets)
    lines = [f"# {args.title}", "", protocol.description + f" Sparsity {args.sparsity}.", "",
             "| variant | overrides | " + " | ".join(f"ppl {n}" for n in names) + " | rel. layer error | prune s |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |",
             "| dense | | " + " | ".join(f"{protocol.dense_ppl[n]:.2f}" for n in names) + " | | |"]
    for row in rows:
        lines.append(f"| {row['label']} | `{row['overrides'] or 'defaults'}` | "
                     + " | ".join(f"{row['ppl'][n]:.2f}" for n in names)
                     + f" | {row['relative_error']:.4f} | {row['prune_seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense": protocol.dense_ppl, "rows": rows, "args": vars(args)},
                                                   indent=2))
    figure = go.Figure([go.Bar(name=name, y=[row["label"] for row in rows], x=[row["ppl"][name] for row in rows],
                               orientation="h") for name in names])
    for name in names:
        figure.add_vline(x=protocol.dense_ppl[name], line_dash="dot", annotation_text=f"dense {name}")
    figure.update_layout(title=f"{args.title}: {protocol.description} Sparsity {args.sparsity}.", title_font_size=11,
                         xaxis_title="perplexity", yaxis_autorange="reversed", height=120 + 40 * len(rows))
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")
    print(out.read_text())


if __name__ == "__main__":
    main()
