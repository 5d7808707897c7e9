"""Pruning time against one dense forward pass over the same calibration tokens, split into
capture / solve (penalty path and refit) / alternating minimization / propagate, plus the time of
one perplexity pass of the pruned model over those tokens, for SPAP and a baseline, and what the
95% intervals add to that: the interval on the pass's window losses, and the interval and paired
comparison of a run repeated over calibration seeds, computed from them.

    SPAP_DATA_DIR=../shared/data python bench/speed.py --out docs/results/speed.md

The dense forward is the full model (logits included) over the calibration windows, timed in the
same process in every round right before that round's pruning runs, so each ratio compares like
with like on this machine even when its speed drifts (a shared 2-core VM varies by ±15%).
Variants are `label:overrides` as in variants.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import plotly.graph_objects as go
import torch
from common import adam_products, calibration_text, variant_settings

from spap_core.data.texts import calibration_windows
from spap_core.evaluation.intervals import (
    perplexity_interval,
    seeded_comparison,
    seeded_perplexity,
    t_quantile_975,
)
from spap_core.evaluation.perplexity import perplexity
from spap_core.models.loading import load_model
from spap_core.pipeline.walk import prune_model

VARIANTS = ["SPAP without alternating minimization:am_rounds=0", "SPAP (defaults, with alternating minimization):",
            "SPAP, the same recovery with bfloat16 Adam products where native:am_precision=auto",
            "SPAP, the recovery's floor (1 Adam step, its exact refit):am_steps=1",
            "FLAP:method=flap"]
PHASES = ("capture", "solve", "altmin", "propagate")
INTERVAL_SEEDS = 3  # the seeds of the quality table's rows


def interval_seconds(window_nll: tuple[float, ...]) -> float:
    """The time of every interval a run over INTERVAL_SEEDS calibration seeds computes from window losses
    like these: the one-seed interval, the seeded interval and seeds' range, and a paired comparison of
    two such runs. The t quantiles' cache is emptied first, so the time includes computing them."""
    by_seed = [[loss + 0.01 * seed for loss in window_nll] for seed in range(INTERVAL_SEEDS)]
    other = [[loss * 1.01 for loss in row] for row in by_seed]
    t_quantile_975.cache_clear()
    started = time.perf_counter()
    perplexity_interval(window_nll)
    seeded_perplexity(by_seed)
    seeded_comparison(by_seed, other, 1, seeds_pair=True)
    return time.perf_counter() - started


def dense_forward_seconds(loaded, calibration: torch.Tensor, batch_size: int) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        for chunk in calibration.split(batch_size):
            loaded.model(input_ids=chunk.to(loaded.device), use_cache=False)
        return time.perf_counter() - started


def median_row(label: str, spec: str, runs: list[dict], forwards: list[float]) -> dict:
    """Medians over the rounds; the ratio is taken within each round (the forward and the pruning
    run next to each other), then its median and range are reported."""
    ratios = [run["seconds"] / forward for run, forward in zip(runs, forwards)]
    return {"label": label, "overrides": spec, "seconds": statistics.median(r["seconds"] for r in runs),
            "ratio": statistics.median(ratios), "ratio_low": min(ratios), "ratio_high": max(ratios),
            "timings": {phase: statistics.median(r["timings"][phase] for r in runs) for phase in PHASES},
            "eval_seconds": statistics.median(r["eval_seconds"] for r in runs),
            "interval_seconds": statistics.median(r["interval_seconds"] for r in runs),
            "interval_share": max(r["interval_seconds"] / (r["seconds"] + r["eval_seconds"]) for r in runs),
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=VARIANTS, help="label:overrides")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3,
                        help="each round times one dense forward, then every variant once")
    parser.add_argument("--out", required=True, help="Markdown file; .json and .html are written beside it")
    args = parser.parse_args()

    loaded = load_model(args.model)
    calibration = calibration_windows(loaded.tokenizer, calibration_text(), args.nsamples, args.seqlen, 0)
    variants = [variant_settings(variant, args.sparsity) for variant in args.variants]
    forwards: list[float] = []
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    for round_index in range(args.rounds):
        forwards.append(dense_forward_seconds(loaded, calibration, args.batch_size))
        for label, _, settings in variants:
            started = time.perf_counter()
            result = prune_model(loaded, calibration, settings, batch_size=args.batch_size)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            evaluated = perplexity(result.model, calibration, batch_size=args.batch_size)
            runs[label].append({"seconds": seconds, "timings": result.timings,
                                "eval_seconds": time.perf_counter() - started,
                                "interval_seconds": interval_seconds(evaluated.window_nll)})
            print(json.dumps({"round": round_index, "label": label, "forward": forwards[-1], **runs[label][-1]}),
                  flush=True)
            del result
    forward = statistics.median(forwards)
    rows = [median_row(label, spec, runs[label], forwards) for label, spec, _ in variants]

    lines = ["# Pruning time against one dense forward pass", "",
             f"Model: {loaded.description}. Calibration {args.nsamples} × {args.seqlen} tokens, "
             f"batch {args.batch_size}, "
             f"sparsity {args.sparsity}. Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"device {loaded.device}. {args.rounds} rounds, each timing one dense forward over the calibration tokens "
             f"(full model, logits included) and then every variant once; medians over the rounds (dense forward "
             f"{forward:.1f} s, {min(forwards):.1f}–{max(forwards):.1f}), the ratio is taken within each round. "
             "Solve includes the final refit; eval is one perplexity pass of the pruned model over the same tokens. "
             f"{adam_products(loaded.device)}. Intervals: the 95% intervals of a run over {INTERVAL_SEEDS} calibration "
             "seeds computed from the eval pass's window losses (interval_seconds), and their largest share of "
             "one round's prune + eval time.", "",
             "| variant | prune s | ÷ dense forward (range) | capture s | solve s | altmin s | propagate s | eval s "
             "| intervals ms | intervals ÷ (prune + eval), largest |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        t = row["timings"]
        lines.append(f"| {row['label']} | {row['seconds']:.1f} | {row['ratio']:.2f} ({row['ratio_low']:.2f}–"
                     f"{row['ratio_high']:.2f}) | {t['capture']:.1f} | {t['solve']:.1f} | {t['altmin']:.1f} | "
                     f"{t['propagate']:.1f} | {row['eval_seconds']:.1f} | {1000 * row['interval_seconds']:.2f} | "
                     f"{100 * row['interval_share']:.4f}% |")
    largest = max(rows, key=lambda row: row["interval_share"])
    lines += ["", f"The intervals take at most {100 * largest['interval_share']:.4f}% of a round's prune + eval time "
                  f"({largest['label']})."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense_forward_s": forward, "dense_forward_rounds_s": forwards,
                                                    "rows": rows, "args": vars(args)}, indent=2))
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
