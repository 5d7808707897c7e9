"""Perplexity of every method × sparsity on one protocol (default settings of each method),
written as a Markdown table plus the raw rows as JSON. The model, the token windows and the dense
perplexity are prepared once; each (method, sparsity) prunes a fresh copy of the dense model.

    SPAP_DATA_DIR=../shared/data python bench/quality.py --sparsities 0.3 --nsamples 16 \
        --eval-windows 8 --out docs/results/methods_at_30.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import load_protocol
from spap_core.evaluate import perplexity
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.prune import prune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--eval", nargs="+", default=["wikitext2"], choices=["wikitext2", "shakespeare"])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="Markdown file; a .json with the raw rows is written beside it")
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    rows = []
    for sparsity in args.sparsities:
        for method in args.methods:
            started = time.perf_counter()
            result = prune_model(protocol.loaded, protocol.calibration, PruneSettings(method=method, sparsity=sparsity),
                                 seed=args.seed)
            seconds = time.perf_counter() - started
            ppl = {name: perplexity(result.model, w).perplexity for name, w in protocol.eval_sets.items()}
            rows.append({"method": method, "sparsity": sparsity, "ppl": ppl, "prune_seconds": seconds,
                         "timings": result.timings, "params_after": result.params_after})
            print(json.dumps(rows[-1]), flush=True)
            del result

    names = list(protocol.eval_sets)
    lines = ["# Perplexity by method and sparsity", "", protocol.description + " Default settings of each method.", "",
             "| method | sparsity | " + " | ".join(f"ppl {n}" for n in names) + " | prune s |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
             "| dense | 0 | " + " | ".join(f"{protocol.dense_ppl[n]:.2f}" for n in names) + " | |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:.2f} | "
                     + " | ".join(f"{row['ppl'][n]:.2f}" for n in names) + f" | {row['prune_seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense": protocol.dense_ppl, "rows": rows, "args": vars(args)},
                                                   indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
