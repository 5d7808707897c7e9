"""Alternating minimization of one GLU MLP with its mask fixed.

down_proj enters the output linearly, so it gets its exact ridge least-squares refit given the
intermediate activations; gate_proj and up_proj sit inside the nonlinearity, so they get a few
Adam steps on the layer's output error. Rounds alternate the two.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods.problem import LayerDecision, RefitSettings, refit
from spap_core.stats import GramAccumulator


@dataclass(frozen=True)
class AltMinSettings:
    # On by default: on SmolLM2 at 30% two rounds of 10 steps at lr 1e-3 take 2.6% (16 × 512
    # calibration) and 2.1% (32 × 512) off the perplexity of the penalty path's model, where lr 1e-4
    # (the step size of the reference runs) barely moved the weights and 512-token batches gave half
    # the gain (docs/spap-design.md). 0 rounds switches it off.
    rounds: int = 2
    steps: int = 10  # Adam steps on gate/up per round
    lr: float = 1e-3
    batch_tokens: int = 2048

    def __post_init__(self) -> None:
        if not (isinstance(self.rounds, int) and self.rounds >= 0):
            raise SpapInputError(f"Alternating-minimization rounds must be an integer ≥ 0 (got {self.rounds!r}).")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise SpapInputError(f"Alternating-minimization steps must be an integer ≥ 1 (got {self.steps!r}).")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise SpapInputError(f"The alternating-minimization step size must be > 0 (got {self.lr!r}).")
        if not (isinstance(self.batch_tokens, int) and self.batch_tokens >= 1):
            raise SpapInputError("The alternating-minimization batch must hold at least one token.")


def _mlp_output(inputs, gate, up, down, bias, act):
    out = (act(inputs @ gate.T) * (inputs @ up.T)) @ down.T
    return out if bias is None else out + bias


def alternating_minimization(
    decision: LayerDecision,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    gate_full: torch.Tensor,
    up_full: torch.Tensor,
    dense_down: torch.Tensor,
    activation: Callable[[torch.Tensor], torch.Tensor],
    settings: AltMinSettings,
    refit_settings: RefitSettings,
    seed: int = 0,
    cancel: threading.Event | None = None,
) -> LayerDecision:
    """Improve a decision's kept gate/up/down weights. inputs: tokens × d (MLP inputs), targets:
    tokens × m (dense MLP outputs). The mask (decision.keep) never changes."""
    if settings.rounds == 0:
        return decision
    keep = decision.keep.to(gate_full.device)
    gate = gate_full[keep].detach().float().clone().requires_grad_(True)
    up = up_full[keep].detach().float().clone().requires_grad_(True)
    down, bias = decision.down_weight.float(), decision.down_bias
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    y = targets.reshape(-1, targets.shape[-1]).float()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam([gate, up], lr=settings.lr)
    for _ in range(settings.rounds):
        for _ in range(settings.steps):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled("cancelled during alternating minimization")
            rows = torch.randint(0, x.shape[0], (min(settings.batch_tokens, x.shape[0]),), generator=generator)
            rows = rows.to(x.device)
            prediction = _mlp_output(x[rows], gate, up, down, None if bias is None else bias.float(), activation)
            loss = (prediction - y[rows]).pow(2).sum() / y[rows].pow(2).sum().clamp_min(1e-12)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            stats = GramAccumulator()
            for start in range(0, x.shape[0], 4096):
                chunk = x[start : start + 4096]
                stats.add(activation(chunk @ gate.T) * (chunk @ up.T), y[start : start + 4096])
            problem = stats.problem(dense_down[:, keep], n_prune=0)
            updated = refit(problem, torch.arange(len(keep)), refit_settings)
            down, bias = updated.down_weight.float(), updated.down_bias
    out_dtype = gate_full.dtype
    return LayerDecision(
        keep=decision.keep, down_weight=down.to(out_dtype),
        down_bias=None if bias is None else bias.to(out_dtype),
        gate_weight=gate.detach().to(out_dtype), up_weight=up.detach().to(out_dtype),
        scores=decision.scores, objective=updated.objective,
    )
