"""Pruning time against one dense forward pass over the same calibration tokens, with the
breakdown (capture / solve / alternating minimization / propagate), for SPAP and the baselines.

    SPAP_DATA_DIR=../shared/data python bench/speed.py --out docs/results/speed.md

The dense forward is the full model (logits included) over the calibration windows, timed in the
same process right before the pruning runs, so the ratio compares like with like on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from common import CALIB_FILE
from spap_core.data import calibration_windows, text_from_file
from spap_core.methods.registry import PruneSettings
from spap_core.models import load_model
from spap_core.prune import prune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--methods", nargs="+", default=["spap", "flap"])
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    loaded = load_model(args.model)
    calibration = calibration_windows(loaded.tokenizer, text_from_file(CALIB_FILE), args.nsamples, args.seqlen, 0)
    with torch.no_grad():
        started = time.perf_counter()
        for chunk in calibration.split(args.batch_size):
            loaded.model(input_ids=chunk.to(loaded.device), use_cache=False)
        forward = time.perf_counter() - started
    rows = []
    for method in args.methods:
        started = time.perf_counter()
        result = prune_model(loaded, calibration, PruneSettings(method=method, sparsity=args.sparsity),
                             batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        rows.append({"method": method, "seconds": seconds, "ratio": seconds / forward, "timings": result.timings})
        print(json.dumps(rows[-1]), flush=True)
        del result

    lines = ["# Pruning time against one dense forward pass", "",
             f"Model: {loaded.description}. Calibration {args.nsamples} × {args.seqlen} tokens, batch {args.batch_size}, "
             f"sparsity {args.sparsity}. Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"device {loaded.device}. Dense forward over the calibration tokens: {forward:.1f} s.", "",
             "| method | prune s | ÷ dense forward | capture s | solve s | altmin s | propagate s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        t = row["timings"]
        lines.append(f"| {row['method']} | {row['seconds']:.1f} | {row['ratio']:.2f} | {t['capture']:.1f} | "
                     f"{t['solve']:.1f} | {t['altmin']:.1f} | {t['propagate']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense_forward_s": forward, "rows": rows, "args": vars(args)},
                                                   indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
