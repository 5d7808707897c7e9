"""SPAP's penalty path: relax s ∈ {0,1}ⁿ to the capped simplex, penalise (ρ/2)Σ s_i‖W[:,i]‖² and
grow ρ until the relaxed solution is (nearly) feasible, then read off the binary mask.

Each ρ iteration: (1) a soft-mask step towards the indicator of the λ lowest scores, (2) the exact
W step, a ridge least-squares solve with penalty ρh̄·s_i on column i, (3) ρ ← τρ. The iterate is
reported through `on_step` so callers (CLI progress, app plots) see s move from fractional to binary.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from spap_core.errors import NumericalError, PruningCancelled, SpapInputError
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.base import MethodStep, PruningMethod, Recovery
from spap_core.methods.problem import (
    LayerDecision,
    LayerProblem,
    RefitSettings,
    RidgeSystem,
    keep_from_pruned,
    refit,
)

SCORES = ("marginal", "centred", "partial")
STARTS = ("zero", "centre")
SCHEDULES = ("fixed", "ramp")


@dataclass(frozen=True)
class PenaltySettings:
    """Hyperparameters of the penalty path (names follow the paper)."""

    # K and τ set the path ρ⁽⁰⁾, ρ⁽⁰⁾τ, …, ρ⁽⁰⁾τᴷ⁻¹; the final penalty ρ⁽⁰⁾τᴷ ≈ 31 h̄ makes the
    # soft mask feasible. With the ramp, K is also the number of blocks channels are removed in:
    # K = 5 (τ = 5, α = 0.5) gave the lowest perplexity on SmolLM2 of K = 3, 5, 8, 10, in half the
    # solves of K = 10 (docs/spap-design.md).
    iterations: int = 5  # K
    rho0: float = 0.01  # ρ⁽⁰⁾, relative to h̄
    tau: float = 5.0  # ρ growth per iteration
    balance: float = 1.0  # t: exponent of the activation norm in the score
    momentum: float = 0.5  # α: soft-mask step size
    # What "activation magnitude" means in the score: 'marginal' = ‖Z_i‖ (the paper's reading);
    # 'partial' = 1/√[A⁻¹]_ii, channel i's magnitude after the other channels have explained what
    # they can (equal to ‖Z_i‖ for uncorrelated channels; with t = 1 it ranks channels by the
    # exact least-squares cost of dropping each one alone, as in optimal brain surgeon);
    # 'centred' = ‖Z_i − mean(Z_i)‖, what is left of channel i once the refit's bias has absorbed
    # its mean (FLAP's fluctuation; the same as 'marginal' when the bias is off).
    score: str = "marginal"
    # s⁽⁰⁾: 'zero' = no channel marked (the paper's reading; the penalty then stays on the few
    # channels ever marked, which makes each W-step a cheap low-rank update); 'centre' = λ/n
    # everywhere (on the capped simplex from the start; same masks measured, every solve full-rank).
    start: str = "zero"
    # How many channels each s-step marks: 'fixed' = λ every iteration (the paper's reading);
    # 'ramp' = ⌈λ·k/K⌉ at iteration k, so channels are removed in K blocks and each block is
    # chosen after the W-step has compensated for the previous ones (a continuation in λ).
    schedule: str = "ramp"

    def __post_init__(self) -> None:
        checks = [
            (self.score in SCORES, f"score must be one of {', '.join(SCORES)} (got {self.score!r})."),
            (self.start in STARTS, f"start must be one of {', '.join(STARTS)} (got {self.start!r})."),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})."),
            (isinstance(self.iterations, int) and self.iterations >= 1, f"K must be an integer ≥ 1 (got {self.iterations!r})."),
            (np.isfinite(self.rho0) and self.rho0 > 0, f"ρ⁽⁰⁾ must be > 0 (got {self.rho0!r})."),
            (np.isfinite(self.tau) and self.tau > 1, f"τ must be > 1 so the penalty grows (got {self.tau!r})."),
            (np.isfinite(self.balance) and self.balance >= 0, f"t must be ≥ 0 (got {self.balance!r})."),
            (np.isfinite(self.momentum) and 0 < self.momentum <= 1, f"α must be in (0, 1] (got {self.momentum!r})."),
        ]
        for ok, message in checks:
            if not ok:
                raise SpapInputError(message)


@dataclass
class SpapStep(MethodStep):
    """One ρ iteration of one layer (iteration 1..K), as recorded in the trace."""

    rho: float
    soft_mask: np.ndarray  # s, values in [0, 1], 1 = pruned
    scores: np.ndarray
    objective: float  # ½‖WZ − Y‖² of the current (penalised) W
    violation: float  # Σ s_i ‖W[:,i]‖²
    # What ρ acts on: ‖W[:,i]‖ of the penalised solution, so a plot can show the marked columns
    # shrinking and the others compensating (empty for a trace read back from an older run).
    column_norms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    n_prune: int = 0  # λ of this layer: the binary read-out prunes the λ largest s
    marked: int = 0  # channels the s-step moved towards 1 at this iteration (λ, or ⌈λk/K⌉ with the ramp)


StepCallback = Callable[[SpapStep], None]


def channel_scores(column_norms: torch.Tensor, activation_norms: torch.Tensor, balance: float) -> torch.Tensor:
    """score_i = ‖W[:,i]‖ · ‖Z[i,:]‖ᵗ: low score = cheap to prune."""
    return column_norms * activation_norms.pow(balance)


def spap_layer(problem: LayerProblem, penalty: PenaltySettings, refit_settings: RefitSettings,
               layer: int = 0, on_step: StepCallback | None = None,
               cancel: threading.Event | None = None) -> LayerDecision:
    """Run the penalty path on one layer and refit the kept columns."""
    dtype = refit_settings.dtype
    width, count = problem.width, problem.n_prune
    scale = problem.gram_scale
    # Start at the centre of the capped simplex {s ∈ [0,1]ⁿ : 1ᵀs = λ}, so every momentum step
    # stays on it (a convex combination of two of its points), or at s = 0 as the paper reads.
    fill = count / width if penalty.start == "centre" else 0.0
    soft_mask = torch.full((width,), fill, dtype=dtype, device=problem.gram.device)
    system = RidgeSystem(problem, refit_settings, low_rank_updates=True)
    partial = penalty.score == "partial"
    centred = penalty.score == "centred" and refit_settings.bias
    energy = problem.centred_activation_sq_norms(dtype) if centred else problem.activation_sq_norms.to(dtype)
    activation_magnitudes = energy.clamp_min(0).sqrt()

    def solve_and_score(column_penalty: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if partial:
            weights, inverse_diagonal = system.solve_with_inverse_diagonal(column_penalty)
            magnitudes = inverse_diagonal.clamp_min(1e-30).rsqrt()
        else:
            weights = system.solve(column_penalty)
            magnitudes = activation_magnitudes
        column_sq = weights[:, :width].pow(2).sum(dim=0)
        return weights, column_sq, channel_scores(column_sq.sqrt(), magnitudes, penalty.balance)

    _, _, scores = solve_and_score(None)
    first_scores = scores
    rho = penalty.rho0
    for iteration in range(1, penalty.iterations + 1):
        if cancel is not None and cancel.is_set():
            raise PruningCancelled(f"cancelled at layer {layer}, ρ iteration {iteration}")
        marked = count if penalty.schedule == "fixed" else math.ceil(count * iteration / penalty.iterations)
        target = torch.zeros_like(soft_mask)
        target[torch.argsort(scores, stable=True)[:marked]] = 1.0
        soft_mask = (1 - penalty.momentum) * soft_mask + penalty.momentum * target
        column_penalty = rho * scale * soft_mask
        weights, column_sq, scores = solve_and_score(column_penalty)
        if not torch.isfinite(scores).all():  # a non-finite weight shows in its column's score
            raise NumericalError(
                f"SPAP stopped: non-finite weights at layer {layer}, ρ iteration {iteration}. Try a larger δ, "
                "float64 solves, or a smaller ρ⁽⁰⁾/τ.")
        if on_step is not None:
            on_step(SpapStep(
                layer=layer, iteration=iteration, rho=rho,
                soft_mask=soft_mask.float().cpu().numpy(), scores=scores.float().cpu().numpy(),
                objective=system.objective(weights, column_penalty), violation=float((soft_mask * column_sq).sum()),
                column_norms=column_sq.sqrt().float().cpu().numpy(), n_prune=count, marked=marked,
            ))
        rho *= penalty.tau
    # Binary read-out: prune the λ largest s, ties broken towards the lower score.
    order = np.lexsort((scores.cpu().numpy(), -soft_mask.cpu().numpy()))
    keep = keep_from_pruned(width, torch.from_numpy(order[:count].copy()))
    decision = refit(problem, keep, refit_settings)
    decision.scores = {"spap_first": first_scores.float().cpu().numpy(), "spap_last": scores.float().cpu().numpy()}
    return decision


@dataclass(frozen=True)
class SpapSettings:
    """Everything SPAP decides with: the penalty path, the refit of the kept columns, the
    alternating minimization after it, and the target correction."""

    penalty: PenaltySettings = field(default_factory=PenaltySettings)
    refit: RefitSettings = field(default_factory=RefitSettings)
    altmin: AltMinSettings = field(default_factory=AltMinSettings)
    # β in Y* = Y + β·(dense-model layer output − pruned-stream layer output), so each layer also
    # repairs the error that earlier pruned layers left in the residual stream.
    target_correction: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.target_correction, (int, float)) or not 0.0 <= self.target_correction <= 1.0:
            raise SpapInputError(f"The target correction β must be in [0, 1] (got {self.target_correction!r}).")


class Spap(PruningMethod):
    name = "spap"
    description = "penalty path over a relaxed mask, ridge refit towards the dense weights with a bias, alternating minimization"
    settings_type = SpapSettings

    def trace_length(self, settings: SpapSettings) -> int:
        return settings.penalty.iterations

    def adds_down_bias(self, settings: SpapSettings) -> bool:
        return settings.refit.bias

    def without_down_bias(self, settings: SpapSettings) -> SpapSettings:
        return replace(settings, refit=replace(settings.refit, bias=False))

    def target_correction(self, settings: SpapSettings) -> float:
        return settings.target_correction

    def recovery(self, settings: SpapSettings) -> Recovery | None:
        return Recovery(settings.altmin, settings.refit) if settings.altmin.rounds > 0 else None

    def decide(self, problem: LayerProblem, settings: SpapSettings, layer: int,
               on_step: StepCallback | None = None, cancel: threading.Event | None = None) -> LayerDecision:
        return spap_layer(problem, settings.penalty, settings.refit, layer=layer, on_step=on_step, cancel=cancel)
