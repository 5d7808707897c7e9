"""Latency and memory of the dense model and SPAP-pruned ones on this device, with the measured
ratios next to the theoretical ones (linear FLOPs and parameters).

    SPAP_DATA_DIR=../shared/data python bench/latency.py --out docs/results/latency.md

Which channels are pruned does not change the shapes, so a small calibration set suffices here.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import plotly.graph_objects as go
from common import calibration_text

from spap_core.data.texts import calibration_windows
from spap_core.evaluation.latency import latency_ratios, measure_latencies
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import load_model
from spap_core.pipeline.walk import prune_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--seqlen", type=int, default=512, help="prefill window")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    loaded = load_model(args.model)
    calibration = calibration_windows(loaded.tokenizer, calibration_text(), 4, 128, 0)
    pruned_models = [prune_model(loaded, calibration, PruneSettings(sparsity=sparsity)).model
                     for sparsity in args.sparsities]
    dense, *pruned_reports = measure_latencies(
        [loaded.model, *pruned_models], seqlen=args.seqlen, decode_tokens=args.decode_tokens,
        repeats=args.repeats, warmup=args.warmup)
    rows = [{"sparsity": sparsity, "pruned": pruned, "ratios": latency_ratios(dense, pruned)}
            for sparsity, pruned in zip(args.sparsities, pruned_reports)]

    lines = ["# Latency and memory: dense vs SPAP-pruned", "",
             f"Model: {loaded.description}. Device {dense.device}, {dense.threads} threads ({platform.machine()}). "
             f"Prefill of one {args.seqlen}-token window; greedy decoding of {args.decode_tokens} tokens "
             f"with a KV cache; median of {args.repeats} timed rounds after {args.warmup} warm-up rounds "
             "(min–max in brackets); each round times "
             "every model once, in rotating order, so that the machine's drift affects them alike. The prefill FLOPs "
             "ratio counts the Linear layers and the attention context (2·layers·context·d_attn, Kaplan et al. 2020); "
             "the linear-only ratio leaves attention out and so overstates what pruning the MLPs can give.", "",
             "| model | prefill ms | decode tokens/s | weights MB | parameters M | linear GFLOPs/token | "
             "attention GFLOPs/token |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def row(label, report) -> str:
        p, d = report.prefill_ms, report.decode_tokens_per_s
        return (f"| {label} | {p.median:.1f} ({p.low:.1f}–{p.high:.1f}) | {d.median:.1f} ({d.low:.1f}–{d.high:.1f}) | "
                f"{report.weight_mb:.1f} | {report.parameters / 1e6:.2f} | {report.linear_gflops_per_token:.3f} | "
                f"{report.attention_gflops_per_token:.4f} |")

    lines.append(row("dense", dense))
    for entry in rows:
        lines.append(row(f"SPAP {entry['sparsity']:.0%}", entry["pruned"]))
    lines += ["", "| sparsity | prefill speed-up | decode speed-up | prefill FLOPs ratio (theory) | prefill ÷ theory | "
              "linear-only FLOPs ratio | prefill ÷ linear-only | weight memory ratio | parameter ratio (theory) | "
              "memory ÷ theory |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in rows:
        r = entry["ratios"]
        lines.append(f"| {entry['sparsity']:.0%} | {r['prefill_speedup']:.3f} | {r['decode_speedup']:.3f} | "
                     f"{r['theoretical_flops_ratio']:.3f} | "
                     f"{r['prefill_speedup'] / r['theoretical_flops_ratio']:.0%} | "
                     f"{r['linear_flops_ratio']:.3f} | {r['prefill_speedup'] / r['linear_flops_ratio']:.0%} | "
                     f"{r['weight_memory_ratio']:.3f} | {r['theoretical_params_ratio']:.3f} | "
                     f"{r['weight_memory_ratio'] / r['theoretical_params_ratio']:.0%} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    stored = [{**entry, "pruned": entry["pruned"].to_dict()} for entry in rows]
    out.with_suffix(".json").write_text(json.dumps({"dense": dense.to_dict(), "rows": stored, "args": vars(args)},
                                                   indent=2))
    labels = [f"{entry['sparsity']:.0%}" for entry in rows]
    measures = {"prefill speed-up": "prefill_speedup", "decode speed-up": "decode_speedup",
                "prefill FLOPs ratio (theory)": "theoretical_flops_ratio", "weight memory ratio": "weight_memory_ratio",
                "parameter ratio (theory)": "theoretical_params_ratio"}
    figure = go.Figure([go.Bar(name=name, x=labels, y=[entry["ratios"][key] for entry in rows])
                        for name, key in measures.items()])
    figure.update_layout(barmode="group", xaxis_title="MLP sparsity", yaxis_title="dense ÷ pruned",
                         title=lines[2], title_font_size=11)
    figure.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")
    print(out.read_text())


if __name__ == "__main__":
    main()
