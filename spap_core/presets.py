"""Run sizes for interactive use: small enough that a default SPAP run on SmolLM2 finishes in
about a minute on a 2-core CPU; larger on a GPU, where the same minute buys far more tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunSize:
    nsamples: int  # calibration windows
    seqlen: int  # calibration window length
    eval_windows: int  # evaluation windows (0 = whole text)
    eval_len: int
    batch_size: int
    label: str


CPU_RUN = RunSize(nsamples=8, seqlen=256, eval_windows=8, eval_len=256, batch_size=4,
                  label="CPU defaults: 8 × 256 calibration tokens, 8 × 256 evaluation tokens")
GPU_RUN = RunSize(nsamples=64, seqlen=512, eval_windows=0, eval_len=512, batch_size=16,
                  label="GPU defaults: 64 × 512 calibration tokens, the whole evaluation text")


def interactive_run_size(device: torch.device) -> RunSize:
    return GPU_RUN if device.type == "cuda" else CPU_RUN
