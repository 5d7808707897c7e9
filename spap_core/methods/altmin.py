"""Alternating minimization of one MLP with its mask fixed.

The output projection (down_proj, fc2) enters the output linearly, so it gets its exact ridge
least-squares refit given the intermediate activations; the input projections (gate_proj and
up_proj of a GLU, fc1 of a plain MLP) sit inside the nonlinearity, so they get a few Adam steps on
the layer's output error (their biases, where the family has them, stay). Rounds alternate the two.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.models.adapters import MlpFunction, MlpWeights
from spap_core.problem.objective import LayerDecision, RefitSettings, refit
from spap_core.problem.statistics import GramAccumulator

# Tokens per chunk of the exact refit's statistics (bounds its temporaries, not its result).
REFIT_CHUNK = 4096
# The precision of the Adam steps' products: 'float32' everywhere (the default: the same result on
# every machine), or 'auto': bfloat16 where the hardware multiplies it natively (adam_step_dtype).
STEP_PRECISIONS = ("float32", "auto")


@dataclass(frozen=True)
class AltMinSettings:
    # On by default: one round of 40 Adam steps of 256 tokens at lr 1e-3. What the recovery gains
    # grows with the number of steps, not with the tokens per step (Adam moves each weight by about
    # lr per step), so this keeps 87% of the gain of the former default (2 rounds × 10 steps of
    # 2048 tokens, 2.1% off the perplexity at 30%) at 40% of its time; the numbers are in
    # docs/spap-design.md ("Cheaper recovery"). lr 1e-4 (the step size of the reference runs) barely moved the
    # weights. 0 rounds switches it off.
    rounds: int = 1
    steps: int = 40  # Adam steps on gate/up per round
    lr: float = 1e-3
    batch_tokens: int = 256
    # 'auto' took 19–28% off the recovery's time on the development VM for the same WikiText-2
    # perplexity, but 0.2–0.5% more on Shakespeare (up to 3.5% with the Fisher allocation), and its
    # results depend on the CPU; so it is a choice, not the default (docs/spap-design.md).
    precision: str = "float32"

    def __post_init__(self) -> None:
        if not (isinstance(self.rounds, int) and self.rounds >= 0):
            raise SpapInputError(f"Alternating-minimization rounds must be an integer ≥ 0 (got {self.rounds!r}).")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise SpapInputError(f"Alternating-minimization steps must be an integer ≥ 1 (got {self.steps!r}).")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise SpapInputError(f"The alternating-minimization step size must be > 0 (got {self.lr!r}).")
        if not (isinstance(self.batch_tokens, int) and self.batch_tokens >= 1):
            raise SpapInputError("The alternating-minimization batch must hold at least one token.")
        if self.precision not in STEP_PRECISIONS:
            raise SpapInputError(f"The Adam steps' precision must be one of {', '.join(STEP_PRECISIONS)} "
                                 f"(got {self.precision!r}).")


def adam_step_dtype(device: torch.device) -> torch.dtype:
    """The precision of the Adam steps' products under precision 'auto': bfloat16 where the
    hardware multiplies it natively (CUDA with bfloat16, CPUs with AVX512-BF16 or AMX), where those
    products run about 2.5× faster and the layer error the steps reach is the same to within 0.1%
    (docs/spap-design.md, "Cheaper recovery"); float32 elsewhere, where bfloat16 would be emulated
    and slower. The weights, Adam's moments, the loss and the exact down_proj refit stay in float32
    either way."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return torch.float32


def _refit_down(inputs: torch.Tensor, targets: torch.Tensor, weights: list[torch.Tensor],
                biases: tuple[torch.Tensor | None, ...], dense_output_kept: torch.Tensor, function: MlpFunction,
                refit_settings: RefitSettings) -> tuple[LayerDecision, list[torch.Tensor]]:
    """The exact output-projection refit given the current input weights, and the activations it
    was fitted on (in chunks: only the last round's are ever joined)."""
    stats = GramAccumulator()
    chunks = []
    for start in range(0, inputs.shape[0], REFIT_CHUNK):
        chunks.append(function(inputs[start : start + REFIT_CHUNK], weights, biases))
        stats.add(chunks[-1], targets[start : start + REFIT_CHUNK])
    problem = stats.problem(dense_output_kept, n_prune=0)
    return refit(problem, torch.arange(dense_output_kept.shape[1]), refit_settings), chunks


def alternating_minimization(
    decision: LayerDecision,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    dense: MlpWeights,
    function: MlpFunction,
    settings: AltMinSettings,
    refit_settings: RefitSettings,
    seed: int = 0,
    cancel: threading.Event | None = None,
) -> LayerDecision:
    """Improve a decision's kept input and output weights. inputs: tokens × d (MLP inputs),
    targets: tokens × m (what the MLP should output, without the family's own output bias);
    `dense` holds the layer's dense weights. The mask (decision.keep) never changes."""
    if settings.rounds == 0:
        return decision
    kept = dense.kept(decision.keep)
    weights = [w.detach().float().clone().requires_grad_(True) for w in kept.inputs]
    biases = tuple(None if b is None else b.detach().float() for b in kept.input_biases)
    down, bias = decision.output_weight.float(), decision.output_bias
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    y = targets.reshape(-1, targets.shape[-1]).float()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(weights, lr=settings.lr)
    step_dtype = adam_step_dtype(x.device) if settings.precision == "auto" else torch.float32
    for _ in range(settings.rounds):
        for _ in range(settings.steps):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled("cancelled during alternating minimization")
            rows = torch.randint(0, x.shape[0], (min(settings.batch_tokens, x.shape[0]),), generator=generator)
            rows = rows.to(x.device)
            with torch.autocast(x.device.type, dtype=step_dtype, enabled=step_dtype != torch.float32):
                prediction = (function(x[rows], weights, biases) @ down.T).float()
            if bias is not None:
                prediction = prediction + bias.float()
            target = y[rows]
            loss = (prediction - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            updated, activations = _refit_down(x, y, weights, biases, kept.output, function, refit_settings)
            down, bias = updated.output_weight.float(), updated.output_bias
    out_dtype = dense.output.dtype
    return LayerDecision(
        keep=decision.keep, output_weight=down.to(out_dtype),
        output_bias=None if bias is None else bias.to(out_dtype),
        input_weights=tuple(w.detach().to(out_dtype) for w in weights),
        scores=decision.scores, objective=updated.objective,
        kept_intermediates=torch.cat(activations) if out_dtype == torch.float32 else None,
    )
