"""SPAP's penalty path: relax s ∈ {0,1}ⁿ to the capped simplex, penalise (ρ/2)Σ s_i‖W[:,i]‖² and
grow ρ until the relaxed solution is (nearly) feasible, then read off the binary mask.

Each ρ iteration: (1) a soft-mask step towards the indicator of the λ lowest scores, (2) the exact
W step, a ridge least-squares solve with penalty ρh̄·s_i on column i, (3) ρ ← τρ. The iterate is
reported through `on_step` so callers (CLI progress, app plots) see s move from fractional to binary.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from spap_core.errors import NumericalError, PruningCancelled, SpapInputError
from spap_core.methods.altmin import STEP_PRECISIONS, AltMinSettings
from spap_core.methods.base import MethodStep, PruningMethod, Recovery
from spap_core.problem.objective import (
    PRECISIONS,
    PRIORS,
    LayerDecision,
    LayerProblem,
    RefitSettings,
    RidgeSystem,
    lowest,
    refit,
)
from spap_core.schema import Parameter

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
            (isinstance(self.iterations, int) and self.iterations >= 1,
             f"K must be an integer ≥ 1 (got {self.iterations!r})."),
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

    columns: ClassVar[tuple[str, ...]] = ("layer", "iteration", "rho", "objective", "violation", "marked", "n_prune",
                                          "mask_mean", "readout_gap")
    array_names: ClassVar[tuple[str, ...]] = ("soft_masks", "column_norms")

    def record_row(self) -> dict[str, Any]:
        """ρ, the penalised objective and violation, how many channels the s-step marked, and how
        far s is from its binary read-out."""
        return {
            "layer": self.layer, "iteration": self.iteration, "rho": self.rho,
            "objective": self.objective, "violation": self.violation,
            "marked": self.marked, "n_prune": self.n_prune, "mask_mean": float(self.soft_mask.mean()),
            "readout_gap": readout_gap(self.soft_mask, self.n_prune),
        }

    def unit_arrays(self) -> dict[str, np.ndarray]:
        return {"soft_masks": self.soft_mask, "column_norms": self.column_norms}

    @classmethod
    def from_record(cls, row: dict[str, str], arrays: dict[str, np.ndarray], pruned: int) -> SpapStep:
        """The per-step scores are not stored, so they come back empty; a row without λ (or the
        marked count) is from a record that did not keep it: λ is then what the layer pruned."""
        return cls(
            layer=int(row["layer"]), iteration=int(row["iteration"]), rho=float(row["rho"]),
            soft_mask=arrays["soft_masks"], scores=np.zeros(0, dtype=np.float32),
            objective=float(row["objective"]), violation=float(row["violation"]),
            column_norms=arrays["column_norms"], n_prune=int(row.get("n_prune") or 0) or pruned,
            marked=int(row.get("marked") or 0),
        )


def readout(soft_mask: np.ndarray, n_prune: int) -> np.ndarray:
    """The binary mask read off s: its λ largest entries (ties towards the lower index)."""
    binary = np.zeros(len(soft_mask), dtype=np.float32)
    binary[np.argsort(-soft_mask, kind="stable")[:n_prune]] = 1.0
    return binary


def readout_gap(soft_mask: np.ndarray, n_prune: int) -> float:
    """Σ|s − b(s)| ÷ λ, b(s) the binary read-out of s: 0 when s is binary; it depends only on the
    values of s, which α and the marking schedule decide (the data only decides which channel
    gets which value)."""
    if n_prune <= 0:
        return float("nan")
    return float(np.abs(soft_mask - readout(soft_mask, n_prune)).sum() / n_prune)


StepCallback = Callable[[SpapStep], None]


def channel_scores(column_norms: torch.Tensor, activation_norms: torch.Tensor, balance: float) -> torch.Tensor:
    """score_i = ‖W[:,i]‖ · ‖Z[i,:]‖ᵗ: low score = cheap to prune. A column without weight costs
    nothing to prune, whatever its magnitude: a silent channel's 'partial' magnitude is 10¹⁵ (the
    pseudo-inverse gives it no diagonal), whose t-th power overflows float32, and 0 · inf is NaN.
    A NaN weight stays NaN, so the solver still stops on it."""
    return torch.where(column_norms == 0, 0.0, column_norms * activation_norms.pow(balance))


def _recorded(scores: torch.Tensor) -> np.ndarray:
    """Scores as the trace and the records keep them, float32: a float64 score beyond float32's range
    (t = 4 on a channel the others explain entirely, 'partial') is kept at its largest value
    rather than turned into inf; the order, which is all a score decides, stays."""
    return scores.clamp(max=torch.finfo(torch.float32).max).float().cpu().numpy()


def spap_layer(problem: LayerProblem, penalty: PenaltySettings, refit_settings: RefitSettings,
               layer: int = 0, on_step: StepCallback | None = None,
               cancel: threading.Event | None = None) -> LayerDecision:
    """Run the penalty path on one layer and refit the kept columns. On attention heads s has one
    entry per head and its penalty (ρ/2)·s_h·‖W[:, block h]‖² acts on the head's whole block of
    columns (a group penalty); scores and the read-out are per head, within the head layout."""
    dtype = refit_settings.dtype
    units, count = problem.units, problem.n_prune
    scale = problem.gram_scale
    # Start at the centre of the capped simplex {s ∈ [0,1]ⁿ : 1ᵀs = λ}, so every momentum step
    # stays on it (a convex combination of two of its points), or at s = 0 as the paper reads.
    fill = count / units if penalty.start == "centre" else 0.0
    soft_mask = torch.full((units,), fill, dtype=dtype, device=problem.gram.device)
    system = RidgeSystem(problem, refit_settings, low_rank_updates=True)
    partial = penalty.score == "partial"
    if partial and problem.group_size > 1:
        raise SpapInputError("The 'partial' score is defined per channel; score attention heads by 'marginal' or "
                             "'centred'.")
    centred = penalty.score == "centred" and refit_settings.bias
    energy = problem.centred_activation_sq_norms(dtype) if centred else problem.activation_sq_norms.to(dtype)
    activation_magnitudes = problem.unit_sums(energy.clamp_min(0)).sqrt()

    def solve_and_score(column_penalty: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if partial:
            weights, inverse_diagonal = system.solve_with_inverse_diagonal(column_penalty)
            magnitudes = inverse_diagonal.clamp_min(1e-30).rsqrt()
        else:
            weights = system.solve(column_penalty)
            magnitudes = activation_magnitudes
        unit_sq = problem.unit_sums(weights[:, :problem.width].pow(2).sum(dim=0))
        return weights, unit_sq, channel_scores(unit_sq.sqrt(), magnitudes, penalty.balance)

    _, _, scores = solve_and_score(None)
    first_scores = scores
    rho = penalty.rho0
    for iteration in range(1, penalty.iterations + 1):
        if cancel is not None and cancel.is_set():
            raise PruningCancelled(f"cancelled at layer {layer}, ρ iteration {iteration}")
        marked = count if penalty.schedule == "fixed" else math.ceil(count * iteration / penalty.iterations)
        target = torch.zeros_like(soft_mask)
        target[lowest(problem, scores, marked).to(target.device)] = 1.0
        soft_mask = (1 - penalty.momentum) * soft_mask + penalty.momentum * target
        column_penalty = problem.per_column(rho * scale * soft_mask)
        weights, unit_sq, scores = solve_and_score(column_penalty)
        if not torch.isfinite(scores).all():  # a non-finite weight shows in its column's score
            raise NumericalError(
                f"SPAP stopped: non-finite weights at layer {layer}, ρ iteration {iteration}. Try a larger δ, "
                "float64 solves, or a smaller ρ⁽⁰⁾/τ.")
        if on_step is not None:
            on_step(SpapStep(
                layer=layer, iteration=iteration, rho=rho,
                soft_mask=soft_mask.float().cpu().numpy(), scores=_recorded(scores),
                objective=system.objective(weights, column_penalty), violation=float((soft_mask * unit_sq).sum()),
                column_norms=unit_sq.sqrt().float().cpu().numpy(), n_prune=count, marked=marked,
            ))
        rho *= penalty.tau
    # Binary read-out: prune the λ largest s, ties broken towards the lower score.
    order = np.lexsort((scores.cpu().numpy(), -soft_mask.cpu().numpy()))
    keep = problem.keep_columns(problem.removal(torch.from_numpy(order.copy())))
    decision = refit(problem, keep, refit_settings)
    decision.scores = {"spap_first": _recorded(first_scores), "spap_last": _recorded(scores)}
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
    description = ("penalty path over a relaxed mask, ridge refit towards the dense weights with a bias, "
                   "alternating minimization")
    settings_type = SpapSettings
    step_type = SpapStep
    # About 3.3 factorisations of the MLP's width per layer for the penalty path: SmolLM2 on the
    # 2-core VM at 8 × 256 calibration tokens solved its 30 layers in 3.86 s where one factorisation
    # took 0.044 s (docs/spap-design.md).
    solve_factorisations = 3.3
    groups = {"penalty": "Penalty path", "selection": "Channel selection", "refit": "Refit and targets",
              "altmin": "Alternating minimization"}
    parameters = (
        Parameter("K", "K", "K: ρ iterations",
                  "How many times s steps and ρ grows; with the ramp, the blocks channels are marked in.",
                  int, "penalty", ("--iterations", "-K"), path="penalty.iterations", low=1, high=60, step=1,
                  slider=True, sweep=(1, 40), lead=True),
        Parameter("tau", "τ", "τ: penalty growth",
                  "ρ ← τ·ρ after every iteration: how hard the marked columns of W are pushed to zero.",
                  float, "penalty", ("--tau",), path="penalty.tau", low=1.05, high=8.0, step=0.05, slider=True,
                  sweep=(1.05, 8.0), lead=True),
        Parameter("alpha", "α", "α: mask momentum",
                  "Step of s towards the marked channels; 1 jumps straight to the marks.",
                  float, "penalty", ("--alpha",), path="penalty.momentum", low=0.05, high=1.0, step=0.05,
                  slider=True, sweep=(0.05, 1.0), lead=True),
        Parameter("rho0", "ρ⁽⁰⁾", "ρ⁽⁰⁾: initial penalty",
                  "First weight of the penalty Σ sᵢ‖W[:,i]‖², relative to mean diag H.",
                  float, "penalty", ("--rho0",), path="penalty.rho0", low=1e-6, high=1e3, step=0.005,
                  log_scale=True, sweep=(1e-4, 10.0)),
        Parameter("start", "start", "Start s⁽⁰⁾", "zero = nothing marked (the paper); centre = λ/n everywhere.",
                  str, "penalty", ("--start",), path="penalty.start", choices=STARTS),
        Parameter("t", "t", "t: score balance", "Score ‖W[:,i]‖·mᵢᵗ: how much the activation magnitude mᵢ counts.",
                  float, "selection", ("--balance", "-t"), path="penalty.balance", low=0.0, high=3.0, step=0.1,
                  slider=True, sweep=(0.0, 2.0)),
        Parameter("score", "score", "Magnitude mᵢ in the score",
                  "marginal = ‖Zᵢ‖; centred = ‖Zᵢ − mean‖ (what the bias cannot absorb); partial = what channel i adds "
                  "beyond the others (1/√[A⁻¹]ᵢᵢ).",
                  str, "selection", ("--score",), path="penalty.score", choices=SCORES),
        Parameter("schedule", "schedule", "Marking schedule",
                  "fixed = mark λ channels every step; ramp = ⌈λk/K⌉ at step k, removed in blocks.",
                  str, "selection", ("--schedule",), path="penalty.schedule", choices=SCHEDULES),
        Parameter("delta", "δ", "δ: ridge", "δ·h̄ added to every solve, for stability (relative to mean diag H).",
                  float, "refit", ("--delta",), path="refit.ridge", low=0.0, high=100.0, step=0.005,
                  log_scale=True, sweep=(1e-3, 1.0)),
        Parameter("prior", "prior", "Refit prior",
                  "The ridge pulls refitted weights towards the dense ones or towards zero.",
                  str, "refit", ("--prior",), path="refit.prior", choices=PRIORS),
        Parameter("bias", "bias", "Bias compensation",
                  "An output-projection bias (down_proj, fc2) absorbs the mean output of the pruned channels.",
                  bool, "refit", ("--bias",), path="refit.bias"),
        Parameter("precision", "precision", "Solver precision",
                  "float32 solves faster; float64 is safer on ill-conditioned layers.",
                  str, "refit", ("--precision",), path="refit.precision", choices=PRECISIONS),
        Parameter("beta", "β", "β: target correction",
                  "Each layer also repairs β of the error earlier pruned layers left in the stream.",
                  float, "refit", ("--target-correction", "--beta"), path="target_correction", low=0.0, high=1.0,
                  step=0.05, slider=True, sweep=(0.0, 1.0)),
        Parameter("am_rounds", "AM rounds", "Rounds",
                  "0 = off. Each round: Adam on the input projections (gate/up, fc1), then an exact refit of the "
                  "output projection.",
                  int, "altmin", ("--altmin-rounds",), path="altmin.rounds", low=0, high=10, step=1, slider=True,
                  sweep=(0, 4), own_update=True),
        Parameter("am_steps", "AM steps", "Adam steps per round",
                  "Gradient steps on the input projections (gate_proj and up_proj, or fc1) in every round.",
                  int, "altmin", ("--altmin-steps",), path="altmin.steps", low=1, high=200, step=1, slider=True,
                  own_update=True),
        Parameter("am_lr", "AM lr", "Step size (lr)", "Adam learning rate for gate/up.",
                  float, "altmin", ("--altmin-lr",), path="altmin.lr", low=1e-7, high=1.0, step=1e-5,
                  log_scale=True, own_update=True),
        Parameter("am_batch", "AM batch", "Tokens per Adam step", "Calibration tokens sampled for each gradient step.",
                  int, "altmin", ("--altmin-batch",), path="altmin.batch_tokens", low=16, high=65536, step=1,
                  own_update=True),
        Parameter("am_precision", "AM products", "Precision of the Adam steps",
                  "float32 = the same result on every machine. auto = bfloat16 products where the hardware multiplies "
                  "them natively (CUDA, AVX512-BF16 or AMX CPUs): faster, but the result then depends on the machine. "
                  "The weights, Adam's state and the output-projection refit stay float32 either way.",
                  str, "altmin", ("--altmin-precision",), path="altmin.precision", choices=STEP_PRECISIONS,
                  own_update=True),
    )

    def trace_length(self, settings: SpapSettings) -> int:
        return settings.penalty.iterations

    def adds_output_bias(self, settings: SpapSettings) -> bool:
        return settings.refit.bias

    def without_output_bias(self, settings: SpapSettings) -> SpapSettings:
        return replace(settings, refit=replace(settings.refit, bias=False))

    def target_correction(self, settings: SpapSettings) -> float:
        return settings.target_correction

    def head_refusal(self, settings: SpapSettings) -> str | None:
        if settings.penalty.score == "partial":
            return ("the 'partial' score is defined per channel; score attention heads by 'marginal' or 'centred' "
                    "(--score)")
        return None

    def recovery(self, settings: SpapSettings) -> Recovery | None:
        return Recovery(settings.altmin, settings.refit) if settings.altmin.rounds > 0 else None

    def decide(self, problem: LayerProblem, settings: SpapSettings, layer: int,
               on_step: StepCallback | None = None, cancel: threading.Event | None = None) -> LayerDecision:
        return spap_layer(problem, settings.penalty, settings.refit, layer=layer, on_step=on_step, cancel=cancel)
