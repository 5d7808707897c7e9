"""Structured optimal brain surgeon (in the style of ZipLM and SlimGPT): greedy removal of whole
down_proj input columns, each with the exact least-squares update of the columns that stay.

On the damped layer problem f(W̃) = ½ tr(W̃HW̃ᵀ) − tr(CW̃ᵀ) + ½‖Y‖², with H = H̃ + γh̄·I on the
channels, the cheapest way to force column i to zero from a minimiser W̃ raises f by
½‖W̃[:,i]‖² / [H⁻¹]ᵢᵢ, and the minimiser with that column removed is W̃ − W̃[:,i]·H⁻¹[i,:]/H⁻¹[i,i];
H⁻¹ of the remaining columns is H⁻¹ − H⁻¹[:,i]H⁻¹[i,:]/H⁻¹[i,i]. So one inverse, downdated channel
by channel, ranks every candidate by its exact cost after the previous removals: the greedy choice
that SPAP's penalty path and the single-shot scores (Wanda-sp, FLAP) are compared against.

On attention heads the unit is a head's block B of columns: forcing it to zero costs
½ tr(W̃[:,B] ([H⁻¹]_BB)⁻¹ W̃[:,B]ᵀ), and removing its columns one after another with the rank-1
updates above lands exactly on the minimiser without B, so only the cost changes with the unit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.nn.functional import pad

from spap_core.errors import NumericalError, PruningCancelled, SpapInputError
from spap_core.methods.base import PruningMethod
from spap_core.methods.baselines import BASELINE_FACTORISATIONS
from spap_core.problem.objective import LayerDecision, LayerProblem, cholesky_right_solve, objective
from spap_core.schema import Parameter

# The bias column's damping, as in RidgeSystem: numerically free, so the bias absorbs the mean of
# what is removed and the final weights equal the ridge refit of the kept columns exactly.
BIAS_DAMPING = 1e-9


@dataclass(frozen=True)
class ObsSettings:
    """Hyperparameters of greedy structured OBS."""

    # Channels removed per cost evaluation: 1 is the pure greedy (costs recomputed after every
    # removal); a larger block picks that many at once from one set of costs (each still removed
    # with its exact update), trading a little selection quality for fewer passes.
    block: int = 1
    # γ: the ridge γh̄ on every channel's diagonal that keeps H invertible (dead or duplicated
    # channels), relative to h̄ = mean diag H. The final weights are the ridge refit of the kept
    # columns with this ridge towards zero (the plain least-squares refit as γ → 0).
    damping: float = 0.01
    bias: bool = True  # a free down_proj bias; off only where the family cannot store one

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or isinstance(self.block, bool) or self.block < 1:
            raise SpapInputError(f"The OBS block must be a whole number of channels ≥ 1 (got {self.block!r}).")
        if (not isinstance(self.damping, (int, float)) or isinstance(self.damping, bool)
                or not math.isfinite(self.damping) or self.damping <= 0):
            raise SpapInputError(f"The OBS damping γ must be a finite number > 0, so H stays invertible "
                                 f"(got {self.damping!r}).")
        if not isinstance(self.bias, bool):
            raise SpapInputError(f"The OBS bias switch must be true or false (got {self.bias!r}).")


def damped_solution(problem: LayerProblem, settings: ObsSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimiser W̃ = C·H⁻¹ of the damped problem over every column, and H⁻¹ (float64, on the
    Gram's device; the bias column last, or left out without bias)."""
    width = problem.width
    columns = width + 1 if settings.bias else width
    gram = problem.gram_in(torch.float64)[:columns, :columns]
    diagonal = torch.full((columns,), settings.damping * problem.gram_scale, dtype=torch.float64, device=gram.device)
    if settings.bias:
        diagonal[-1] = BIAS_DAMPING * problem.tokens
    factor, info = torch.linalg.cholesky_ex(gram + torch.diag(diagonal))
    if int(info) != 0:
        raise NumericalError(f"OBS stopped: the damped Gram matrix is not positive definite (damping "
                             f"γ = {settings.damping:g}); try a larger γ.")
    inverse = torch.cholesky_inverse(factor)
    weights = problem.cross[:, :columns].to(torch.float64) @ inverse
    return weights, inverse


def removal_costs(problem: LayerProblem, weights: torch.Tensor, inverse: torch.Tensor,
                  removed: torch.Tensor) -> torch.Tensor:
    """2× the rise of f when each unit is removed with the optimal update of the others: for a
    channel ‖W̃[:,i]‖²/[H⁻¹]ᵢᵢ, for a head tr(W̃_B ([H⁻¹]_BB)⁻¹ W̃_Bᵀ); infinite for units already
    removed (their rows of H⁻¹ are zero)."""
    size, width = problem.group_size, problem.width
    if size == 1:
        diagonal = torch.diagonal(inverse)[:width].clamp_min(torch.finfo(inverse.dtype).tiny)
        costs = weights[:, :width].pow(2).sum(dim=0) / diagonal
        return costs.masked_fill(removed, math.inf)
    costs = torch.full((problem.units,), math.inf, dtype=inverse.dtype, device=inverse.device)
    for unit in torch.nonzero(~removed).flatten().tolist():
        block = slice(unit * size, (unit + 1) * size)
        factor, info = torch.linalg.cholesky_ex(inverse[block, block])
        if int(info) == 0:
            costs[unit] = cholesky_right_solve(factor, weights[:, block]).mul(weights[:, block]).sum()
    return costs


def remove_block(weights: torch.Tensor, inverse: torch.Tensor, chosen: torch.Tensor) -> None:
    """Remove the `chosen` channels one at a time, each with its exact OBS update, in place.

    The rank-1 downdates of H⁻¹ are first applied only to the chosen rows (all the next removals
    read) and then to the whole matrix in one rank-b product: the same arithmetic as b full
    downdates, in one pass over the (n+1)² inverse instead of b.
    """
    rows = inverse[chosen].clone()  # H⁻¹[chosen, :], downdated as channels go
    factors = torch.empty_like(rows)  # H⁻¹ −= factorsᵀ·factors at the end
    for step, channel in enumerate(chosen.tolist()):
        row = rows[step]
        pivot = row[channel].clamp_min(torch.finfo(row.dtype).tiny)
        column = weights[:, channel:channel + 1].clone()  # addmm_ must not read what it writes
        weights.addmm_(column, (row / pivot).unsqueeze(0), alpha=-1)
        factors[step] = row / pivot.sqrt()
        rows.sub_(torch.outer(factors[step, chosen], factors[step]))
    inverse.addmm_(factors.T, factors, alpha=-1)  # in place, through BLAS: no (n+1)² temporary
    inverse[chosen] = 0  # exactly zero, not rounding residue, so they stay out of every later update
    inverse[:, chosen] = 0
    weights[:, chosen] = 0


def obs_layer(problem: LayerProblem, settings: ObsSettings, layer: int = 0,
              cancel: threading.Event | None = None) -> LayerDecision:
    """Greedy structured OBS on one layer: remove `n_prune` channels in blocks, cheapest first.

    The returned down weights are the OBS-updated W̃ on the kept columns, which is exactly the ridge
    refit (ridge γh̄ towards zero, free bias) of the kept set; for γ → 0 the least-squares refit.
    scores["obs"] is each channel's position in the removal order (1 = removed first); the kept
    channels follow, by their final cost, so its λ lowest are the pruned set.
    """
    units = problem.units
    weights, inverse = damped_solution(problem, settings)
    removed = torch.zeros(units, dtype=torch.bool, device=weights.device)
    order = torch.zeros(units, dtype=torch.float64, device=weights.device)
    done = 0
    while done < problem.n_prune:
        if cancel is not None and cancel.is_set():
            raise PruningCancelled(f"cancelled at layer {layer}, OBS block {done // settings.block + 1}")
        size = min(settings.block, problem.n_prune - done)
        costs = removal_costs(problem, weights, inverse, removed)
        chosen = problem.removal(torch.argsort(costs.cpu(), stable=True), size,
                                 already=torch.nonzero(removed.cpu()).flatten()).to(weights.device)
        remove_block(weights, inverse, problem.columns(chosen))
        removed[chosen] = True
        order[chosen] = torch.arange(done + 1, done + size + 1, dtype=order.dtype, device=order.device)
        done += size
    if not torch.isfinite(weights).all():
        raise NumericalError(f"OBS stopped: non-finite weights at layer {layer}; try a larger damping γ.")
    kept_order = torch.argsort(removal_costs(problem, weights, inverse, removed), stable=True)[: units - done]
    order[kept_order] = torch.arange(done + 1, units + 1, dtype=order.dtype, device=order.device)
    return _decision(problem, settings, weights, removed, order)


def _decision(problem: LayerProblem, settings: ObsSettings, weights: torch.Tensor, removed: torch.Tensor,
              order: torch.Tensor) -> LayerDecision:
    """The removed columns of `weights` are exactly zero, so it already is the full-width W̃ (once
    a zero bias column is appended without bias) that the objective is measured on."""
    keep = problem.keep_columns(torch.nonzero(removed.cpu()).flatten())
    kept = keep.to(weights.device)
    out_dtype = problem.dense_output.dtype
    return LayerDecision(
        keep=keep,
        output_weight=weights[:, kept].to(out_dtype),
        output_bias=weights[:, -1].to(out_dtype) if settings.bias else None,
        scores={"obs": order.float().cpu().numpy()},
        objective=objective(problem, weights if settings.bias else pad(weights, (0, 1))),
    )


class StructuredObs(PruningMethod):
    name = "obs"
    description = ("greedy structured optimal brain surgeon: remove the channel of least exact least-squares cost, "
                   "update the rest")
    settings_type = ObsSettings
    solve_factorisations = BASELINE_FACTORISATIONS
    groups = {"obs": "Structured OBS"}
    parameters = (
        Parameter("obs_block", "OBS block", "Channels per cost evaluation",
                  "1 = the pure greedy (every cost recomputed after each removal); a larger block removes that many "
                  "from one set of costs (each with its exact update): fewer passes, a slightly coarser choice.",
                  int, "obs", ("--obs-block",), path="block", low=1, high=512, step=1),
        Parameter("obs_damping", "γ", "γ: damping",
                  "γ·h̄ added to every channel's diagonal so H stays invertible; the final weights are the ridge refit "
                  "of the kept columns with it (least squares as γ → 0).",
                  float, "obs", ("--obs-damping",), path="damping", low=1e-6, high=10.0, step=0.001, log_scale=True),
        Parameter("obs_bias", "OBS bias", "Free output bias",
                  "A free output-projection bias absorbs the mean of what is removed.",
                  bool, "obs", ("--obs-bias",), path="bias"),
    )

    def adds_output_bias(self, settings: ObsSettings) -> bool:
        return settings.bias

    def without_output_bias(self, settings: ObsSettings) -> ObsSettings:
        return replace(settings, bias=False)

    def decide(self, problem: LayerProblem, settings: ObsSettings, layer: int,
               on_step: Callable | None = None, cancel: threading.Event | None = None) -> LayerDecision:
        return obs_layer(problem, settings, layer=layer, cancel=cancel)
