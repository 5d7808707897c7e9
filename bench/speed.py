"""Pruning time against one dense forward pass over the same calibration tokens, split into
capture / solve (penalty path and refit) / alternating minimization / propagate, plus the time of
one perplexity pass of the pruned model over those tokens, for SPAP and a baseline.

    SPAP_DATA_DIR=../shared/data python bench/speed.py --out docs/results/speed.md

The dense forward is the full model (logits included) over the calibration windows, timed in the
same process right before the pruning runs, so the ratio compares like with like on this machine.
Variants are `label:overrides` as in variants.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import plotly.graph_objects as go
import torch

from common import CALIB_FILE, variant_settings
from spap_core.data import calibration_windows, text_from_file
from spap_core.evaluate import perplexity
from spap_core.models import load_model
from spap_core.prune import prune_model

VARIANTS = ["SPAP:", "SPAP + alternating minimization (1 round):altmin.rounds=1", "FLAP:method=flap"]
PHASES = ("capture", "solve", "altmin", "propagate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=VARIANTS, help="label:overrides")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", required=True, help="Markdown file; .json and .html are written beside it")
    args = parser.parse_args()

    loaded = load_model(args.model)
    calibration = calibration_windows(loaded.tokenizer, text_from_file(CALIB_FILE), args.nsamples, args.seqlen, 0)
    with torch.no_grad():
        started = time.perf_counter()
        for chunk in calibration.split(args.batch_size):
            loaded.model(input_ids=chunk.to(loaded.device), use_cache=False)
        forward = time.perf_counter() - started
    rows = []
    for variant in args.variants:
        label, spec, settings = variant_settings(variant, args.sparsity)
        started = time.perf_counter()
        result = prune_model(loaded, calibration, settings, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        perplexity(result.model, calibration, batch_size=args.batch_size)
        evaluation = time.perf_counter() - started
        rows.append({"label": label, "overrides": spec, "seconds": seconds, "ratio": seconds / forward,
                     "timings": result.timings, "eval_seconds": evaluation})
        print(json.dumps(rows[-1]), flush=True)
        del result

    lines = ["# Pruning time against one dense forward pass", "",
             f"Model: {loaded.description}. Calibration {args.nsamples} × {args.seqlen} tokens, batch {args.batch_size}, "
             f"sparsity {args.sparsity}. Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"device {loaded.device}. Dense forward over the calibration tokens: {forward:.1f} s. "
             "Solve includes the final refit; eval is one perplexity pass of the pruned model over the same tokens.", "",
             "| variant | prune s | ÷ dense forward | capture s | solve s | altmin s | propagate s | eval s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        t = row["timings"]
        lines.append(f"| {row['label']} | {row['seconds']:.1f} | {row['ratio']:.2f} | {t['capture']:.1f} | "
                     f"{t['solve']:.1f} | {t['altmin']:.1f} | {t['propagate']:.1f} | {row['eval_seconds']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense_forward_s": forward, "rows": rows, "args": vars(args)},
                                                   indent=2))
    labels = [row["label"] for row in rows]
    figure = go.Figure([go.Bar(name=phase, y=labels, x=[row["timings"][phase] for row in rows], orientation="h")
                        for phase in PHASES])
    figure.add_trace(go.Bar(name="eval (pruned)", y=labels, x=[row["eval_seconds"] for row in rows], orientation="h"))
    figure.add_vline(x=forward, line_dash="dot", annotation_text="one dense forward")
    figure.update_layout(barmode="stack", xaxis_title="seconds", yaxis_autorange="reversed",
                         title=lines[2], title_font_size=11)
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")
    print(out.read_text())


if __name__ == "__main__":
    main()
