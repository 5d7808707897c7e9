"""The app's time estimates against the time the jobs take: the runs a class and a user start
(the CPU preset, the class demo preset, FLAP, SPAP with heads, the runs that backpropagate before
pruning or recover after it) and a perplexity sweep, each
estimated by spap_service.estimates as the pages do and then run as the job queue runs it.

    SPAP_DATA_DIR=../shared/data python bench/estimates.py --out docs/results/estimates.md

The first run includes the dense perplexity, the others find it cached, as in the app. Run it
alone on the machine: the estimate is about this machine's speed now.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import load_model
from spap_core.pipeline.parameters import with_values
from spap_core.recovery.settings import RecoverySettings
from spap_service import comparisons
from spap_service.data import DataSpec, TextChoice, dense_perplexity_known
from spap_service.estimates import many_runs_seconds, model_speed, run_seconds
from spap_service.jobs import ProgressReporter
from spap_service.presets import CLASS_DEMO, interactive_settings
from spap_service.runs import RunRequest, run_pruning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    texts = Path(os.environ["SPAP_DATA_DIR"]) / "wikitext-2"
    data = DataSpec(calibration=TextChoice(kind="file", path=str(texts / "wiki.valid.tokens")),
                    evaluation=TextChoice(kind="file", path=str(texts / "wiki.test.joined.txt")),
                    nsamples=8, seqlen=256, eval_windows=8, eval_len=256, batch_size=4)
    loaded = load_model(args.model)
    speed = model_speed(loaded)
    preset = interactive_settings(loaded.device)
    demo_settings = with_values(preset, {k: v for k, v in CLASS_DEMO.values.items() if k not in ("nsamples", "seqlen")})
    demo_data = replace(data, **{k: v for k, v in CLASS_DEMO.values.items() if k in ("nsamples", "seqlen")})
    runs = {f"CPU preset, {preset.sparsity:.0%}, dense perplexity included": RunRequest(preset, 0, data),
            f"{CLASS_DEMO.name} preset": RunRequest(demo_settings, 0, demo_data),
            "FLAP 30%": RunRequest(PruneSettings(method="flap", sparsity=0.3), 0, data),
            "SPAP 30% + ⅓ of heads": RunRequest(replace(preset, head_sparsity=1 / 3), 0, data),
            # the backward passes before the walk, and a recovery's steps
            "Taylor 30% (8 gradient windows)": RunRequest(PruneSettings(method="taylor", sparsity=0.3), 0, data),
            "FLAP 30%, Fisher allocation": RunRequest(PruneSettings(method="flap", sparsity=0.3, allocation="fisher"),
                                                      0, data),
            "FLAP 30% + LoRA recovery, 20 steps of 4 windows": RunRequest(
                PruneSettings(method="flap", sparsity=0.3), 0, data, recovery=RecoverySettings(mode="lora", steps=20))}
    rows = []
    for name, request in runs.items():
        estimate = run_seconds(speed, request, dense_perplexity_known(loaded, request.data))
        started = time.perf_counter()
        run_pruning(loaded, request, ProgressReporter(), threading.Event(), save=False)
        rows.append((name, estimate, time.perf_counter() - started))
        print(rows[-1], flush=True)
    methods = {"spap": preset, "flap": PruneSettings(method="flap")}
    sparsities = [0.1, 0.3, 0.5]
    base = RunRequest(preset, 0, data)
    requests = [replace(base, settings=replace(methods[m], sparsity=s)) for m in methods for s in sparsities]
    estimate = many_runs_seconds(speed, requests, dense_perplexity_known(loaded, data))
    started = time.perf_counter()
    comparisons.sweep_sparsities(loaded, base, methods, sparsities, ProgressReporter(), threading.Event())
    rows.append(("sweep: SPAP (CPU preset) and FLAP at 10, 30, 50%", estimate, time.perf_counter() - started))

    lines = ["# Time estimates against measured times", "",
             f"Model: {loaded.description}. Calibration and evaluation 8 × 256 tokens of WikiText-2 (the class demo: "
             f"its own calibration size). Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{'CUDA' if torch.cuda.is_available() else 'CPU'}, {torch.get_num_threads()} threads; measured speed "
             f"{speed.tokens_per_s:.0f} tokens/s, one factorisation of the MLP's width {speed.factorisation_s:.3f} s. "
             "One run of `SPAP_DATA_DIR=../shared/data python bench/estimates.py --out docs/results/estimates.md`.",
             "", "| job | estimated s | measured s | measured ÷ estimated |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {estimate:.1f} | {measured:.1f} | {measured / estimate:.2f} |"
              for name, estimate, measured in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"speed": vars(speed), "rows": rows}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
