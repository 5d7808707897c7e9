"""Run sizes for interactive use: small enough that a default SPAP run on SmolLM2 finishes in
about a minute on a 2-core CPU; larger on a GPU, where the same minute buys far more tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import PruneSettings, with_options
from spap_core.pipeline.parameters import BY_KEY


@dataclass(frozen=True)
class RunSize:
    nsamples: int  # calibration windows
    seqlen: int  # calibration window length
    eval_windows: int  # evaluation windows (0 = whole text)
    eval_len: int
    batch_size: int
    label: str
    # Alternating minimization of the app's default run: on a CPU the library default (40 Adam
    # steps of 256 tokens and an exact refit per layer) triples this run size's pruning time
    # (10 s → 30 s for SmolLM2 at 30%, docs/spap-design.md), so it starts off there.
    altmin: AltMinSettings = field(default_factory=AltMinSettings)


CPU_RUN = RunSize(nsamples=8, seqlen=256, eval_windows=8, eval_len=256, batch_size=4,
                  label="CPU defaults: 8 × 256 calibration tokens, 8 × 256 evaluation tokens, alternating "
                        "minimization off (on, it would triple the pruning time)",
                  altmin=AltMinSettings(rounds=0))
GPU_RUN = RunSize(nsamples=64, seqlen=512, eval_windows=0, eval_len=512, batch_size=16,
                  label="GPU defaults: 64 × 512 calibration tokens, the whole evaluation text")


def interactive_run_size(device: torch.device) -> RunSize:
    return GPU_RUN if device.type == "cuda" else CPU_RUN


def interactive_settings(device: torch.device) -> PruneSettings:
    """The library's default settings with the run size's alternating minimization."""
    return with_options(PruneSettings(), altmin=interactive_run_size(device).altmin)


@dataclass(frozen=True)
class DemoPreset:
    """Run-form values for a lesson, chosen from measured runs (docs/spap-design.md, "A class demo")."""

    name: str
    values: dict  # parameter keys of the Run form (settings and calibration) and their values
    why: str

    def fields(self) -> list[str]:
        """Each field the preset sets, with its value as the settings summary writes it ('sparsity
        20%', 'samples = 16'), in the preset's order: what a page lists beside the preset's button."""
        return [BY_KEY[key].phrase(value) for key, value in self.values.items()]


# Measured on SmolLM2 on the development VM (2 cores), whole app run with the dense perplexity
# included: today's CPU preset (30%, 8 × 256, no recovery) takes 15–17 s but perplexity goes 40 → 76
# and the pruned model loops ("you are your place you are your place …"); 20% with 16 × 256
# calibration tokens and the recovery on takes 38 s, perplexity 40 → 56, and its answers stay
# readable. 10–15% read better still but show less; 32 × 256 took 50 s, too close to a minute. The
# pages quote its time from the estimate of this machine and model (spap_service.estimates), not
# from these measurements.
CLASS_DEMO = DemoPreset(
    name="Class demo",
    values={"sparsity": 0.2, "am_rounds": 1, "nsamples": 16, "seqlen": 256},
    why="20% of the MLP channels, 16 × 256 calibration tokens, alternating minimization on: for SmolLM2, perplexity "
        "40 → 56 on the default texts, and the pruned model's text stays readable.")
