"""SPAP on a half-precision model against the same model in float32: the statistics and solves run
in float32/float64 whatever the weights' dtype, and the pruned weights are stored in the model's
dtype, so the pruned perplexity should stay within a couple of percent of the float32 run.

    SPAP_DATA_DIR=../shared/data python bench/precision.py --dtypes float32 bfloat16 \\
        --out docs/results/precision.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import load_protocol, measure

from spap_core.methods.registry import PruneSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"], help="the first is the reference")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="Markdown file; a .json with the raw rows is written beside it")
    args = parser.parse_args()

    rows, descriptions = [], []
    for dtype in args.dtypes:
        protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, ["wikitext2"],
                                 dtype=dtype)
        measured = measure(protocol, PruneSettings(sparsity=args.sparsity), args.seed)
        rows.append({"dtype": dtype, "dense": protocol.dense_ppl["wikitext2"], **measured})
        descriptions.append(protocol.description)
        print(json.dumps(rows[-1]), flush=True)
        del protocol

    reference = rows[0]
    lines = ["# SPAP on half-precision weights", "",
             descriptions[0].split(", weights in")[0] + f". SPAP with default settings at sparsity {args.sparsity}; "
             "each row's weights in its dtype (statistics and solves in float32/float64 for all).", "",
             "| weights | dense ppl | SPAP ppl | SPAP vs the " + reference["dtype"] + " run | prune s |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        change = 100 * (row["ppl"]["wikitext2"] / reference["ppl"]["wikitext2"] - 1)
        lines.append(f"| {row['dtype']} | {row['dense']:.2f} | {row['ppl']['wikitext2']:.2f} | {change:+.2f}% | "
                     f"{row['prune_seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
