"""Perplexity of every method × sparsity on one protocol, written as a Markdown table (+ JSON).

The model, the token windows and the dense perplexity are computed once; each (method, sparsity)
prunes a fresh copy of the dense model. Example (the protocol of the spap_core issue):

    SPAP_DATA_DIR=../shared/data python bench/quality.py --sparsities 0.3 --nsamples 16 \
        --eval-windows 8 --out docs/results/methods_at_30.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from spap_core.data import calibration_windows, evaluation_windows, text_from_file
from spap_core.evaluate import perplexity
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models import load_model
from spap_core.prune import prune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3])
    parser.add_argument("--calib-file", default=None, help="default: $SPAP_DATA_DIR/wikitext-2/wiki.valid.tokens")
    parser.add_argument("--eval-files", nargs="+", default=None,
                        help="default: $SPAP_DATA_DIR/wikitext-2/wiki.test.joined.txt")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="Markdown file; a .json with the raw rows is written beside it")
    args = parser.parse_args()

    data = Path(os.environ.get("SPAP_DATA_DIR", "../shared/data"))
    calib_file = args.calib_file or data / "wikitext-2" / "wiki.valid.tokens"
    eval_files = args.eval_files or [data / "wikitext-2" / "wiki.test.joined.txt"]
    loaded = load_model(args.model)
    calibration = calibration_windows(loaded.tokenizer, text_from_file(calib_file), args.nsamples, args.seqlen, args.seed)
    eval_sets = {Path(f).name: evaluation_windows(loaded.tokenizer, text_from_file(f), args.seqlen, args.eval_windows)
                 for f in eval_files}
    dense = {name: perplexity(loaded.model, windows).perplexity for name, windows in eval_sets.items()}
    rows = []
    for sparsity in args.sparsities:
        for method in args.methods:
            settings = replace(PruneSettings(), method=method, sparsity=sparsity)
            started = time.perf_counter()
            result = prune_model(loaded, calibration, settings, seed=args.seed)
            seconds = time.perf_counter() - started
            ppl = {name: perplexity(result.model, windows).perplexity for name, windows in eval_sets.items()}
            rows.append({"method": method, "sparsity": sparsity, "ppl": ppl, "prune_seconds": seconds,
                         "timings": result.timings, "params_after": result.params_after})
            print(json.dumps(rows[-1]), flush=True)
            del result

    names = list(eval_sets)
    lines = [
        f"# Perplexity by method and sparsity ({loaded.description})", "",
        f"Calibration: {args.nsamples} × {args.seqlen} tokens of {Path(calib_file).name}, seed {args.seed}. "
        f"Evaluation: first {args.eval_windows} × {args.seqlen}-token windows of {', '.join(names)}. "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {loaded.device}. "
        "Default settings of each method.", "",
        "| method | sparsity | " + " | ".join(f"ppl {n}" for n in names) + " | prune s |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
        "| dense | 0 | " + " | ".join(f"{dense[n]:.2f}" for n in names) + " | |",
    ]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:.2f} | " + " | ".join(f"{row['ppl'][n]:.2f}" for n in names)
                     + f" | {row['prune_seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense": dense, "rows": rows, "args": vars(args)}, indent=2, default=str))
    print(out.read_text())


if __name__ == "__main__":
    main()
