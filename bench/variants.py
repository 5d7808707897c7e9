"""Perplexity of named setting variants on one protocol: ablations and sensitivity sweeps.

Each variant is `label:overrides`, e.g. `K=10:penalty.iterations=10` or
`no bias:refit.bias=false`. The model and windows are prepared once. Example:

    python bench/variants.py --out docs/results/ablations.md \
        "default:" "no bias:refit.bias=false" "flap:method=flap"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import load_protocol, parse_overrides, with_overrides
from spap_core.evaluate import perplexity
from spap_core.methods.registry import PruneSettings
from spap_core.prune import prune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="label:overrides")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--eval", nargs="+", default=["wikitext2"], choices=["wikitext2", "shakespeare"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title", default="Variants")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    rows = []
    for variant in args.variants:
        label, _, spec = variant.partition(":")
        settings = with_overrides(PruneSettings(sparsity=args.sparsity), parse_overrides(spec))
        started = time.perf_counter()
        result = prune_model(protocol.loaded, protocol.calibration, settings, seed=args.seed)
        seconds = time.perf_counter() - started
        ppl = {name: perplexity(result.model, w).perplexity for name, w in protocol.eval_sets.items()}
        error = sum(l.objective for l in result.layers) / sum(l.dense_objective for l in result.layers)
        rows.append({"label": label, "overrides": spec, "ppl": ppl, "relative_error": error,
                     "prune_seconds": seconds, "timings": result.timings})
        print(json.dumps(rows[-1]), flush=True)
        del result

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
    out.with_suffix(".json").write_text(json.dumps({"dense": protocol.dense_ppl, "rows": rows, "args": vars(args)}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
