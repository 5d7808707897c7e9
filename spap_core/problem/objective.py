"""The layer-wise problem every method solves, built from captured statistics only.

Per layer and prunable part, with Z (n×p) the inputs of its output projection W (the MLP's
intermediate activations, or the heads' attention outputs), Y (m×p) the dense output and a constant
feature appended (Z̃ = [Z; 1], so a bias on the output projection is one more column of W̃):

    f(W̃) = ½‖W̃ Z̃ − Y‖² = ½ tr(W̃ H̃ W̃ᵀ) − tr(C W̃ᵀ) + ½‖Y‖²,   H̃ = Z̃ Z̃ᵀ,  C = Y Z̃ᵀ.

So a method never needs the activations themselves, only H̃ ((n+1)²), C (m×(n+1)) and ‖Y‖².
Ridge terms are scaled by h̄ = mean(diag H) so δ and ρ mean the same thing in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from spap_core.errors import SpapInputError
from spap_core.problem.layout import HeadLayout


@dataclass
class LayerProblem:
    """Sufficient statistics of one prunable part of a layer plus its dense output-projection weight
    (down_proj for MLP channels, o_proj for heads)."""

    gram: torch.Tensor  # H̃, (n+1)×(n+1); last row/column belong to the constant feature
    cross: torch.Tensor  # C = Y Z̃ᵀ, m×(n+1)
    target_energy: float  # ‖Y‖²
    dense_output: torch.Tensor  # W0, m×n
    n_prune: int
    # The targets are the dense layer's own output (Y = W₀Z, no explicit targets): then W̃₀ fits
    # them exactly, and with a ridge towards W̃₀ it is the unpenalised solution, no solve needed.
    dense_fits_targets: bool = False
    # The units a method removes: `group_size` consecutive columns each (1: an MLP channel;
    # head_dim: an attention head, one block of the output projection's input), `n_prune` of
    # them, and for heads the layout the kept ones must form (None: any set of units).
    group_size: int = 1
    layout: HeadLayout | None = None
    # Each unit's importance as the method measured it on the dense model before the walk
    # (PruningMethod.unit_importances, float64, on the CPU); None for a method that measures none.
    dense_importance: torch.Tensor | None = None
    _gram_copies: dict[torch.dtype, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def gram_in(self, dtype: torch.dtype) -> torch.Tensor:
        """H̃ in the solver's precision, converted once per layer: the C product, the penalty
        path's system and the final refit all read it (callers must not modify it in place)."""
        if dtype == self.gram.dtype:
            return self.gram
        if dtype not in self._gram_copies:
            self._gram_copies[dtype] = self.gram.to(dtype)
        return self._gram_copies[dtype]

    @property
    def width(self) -> int:
        return self.dense_output.shape[1]

    @property
    def units(self) -> int:
        """Channels, or heads."""
        return self.width // self.group_size

    def unit_sums(self, values: torch.Tensor) -> torch.Tensor:
        """A per-column quantity summed over each unit's columns (the columns themselves for channels)."""
        return values if self.group_size == 1 else values.reshape(self.units, self.group_size).sum(dim=1)

    def unit_norms(self, matrix: torch.Tensor) -> torch.Tensor:
        """‖M[:, unit]‖ (Frobenius over a head's columns) for every unit."""
        return matrix.norm(dim=0) if self.group_size == 1 else self.unit_sums(matrix.pow(2).sum(dim=0)).sqrt()

    def per_column(self, values: torch.Tensor) -> torch.Tensor:
        """A per-unit quantity repeated on each of its columns (a head's penalty on its block)."""
        return values if self.group_size == 1 else values.repeat_interleave(self.group_size)

    def columns(self, units: torch.Tensor) -> torch.Tensor:
        """The column indices of `units` (sorted units give sorted columns)."""
        if self.group_size == 1:
            return units
        offsets = torch.arange(self.group_size, device=units.device)
        return (units.reshape(-1, 1) * self.group_size + offsets).flatten()

    def removal(self, priority: torch.Tensor, count: int | None = None,
                already: torch.Tensor | None = None) -> torch.Tensor:
        """The first `count` (default λ) units of `priority`, skipping what the head layout cannot
        lose (for channels: simply the first `count` not in `already`)."""
        count = self.n_prune if count is None else count
        if self.layout is None:
            return priority[:count] if already is None else priority[~torch.isin(priority, already)][:count]
        chosen = self.layout.removal(priority.tolist(), count, () if already is None else already.tolist())
        return torch.tensor(chosen, dtype=torch.long)

    def keep_columns(self, pruned_units: torch.Tensor) -> torch.Tensor:
        """The sorted columns of every unit not in `pruned_units`."""
        return self.columns(keep_from_pruned(self.units, pruned_units))

    def kept_units(self, keep_columns: torch.Tensor) -> torch.Tensor:
        """The units whose columns `keep_columns` holds (the inverse of keep_columns)."""
        return keep_columns if self.group_size == 1 else keep_columns[:: self.group_size] // self.group_size

    @property
    def tokens(self) -> float:
        return float(self.gram[-1, -1])

    @property
    def activation_sq_norms(self) -> torch.Tensor:
        """‖Z[i,:]‖² for every channel."""
        return torch.diagonal(self.gram)[:-1]

    @property
    def activation_means(self) -> torch.Tensor:
        return self.gram[:-1, -1] / self.tokens

    def centred_activation_sq_norms(self, dtype: torch.dtype) -> torch.Tensor:
        """‖Z[i,:] − mean‖² for every channel: what is left of a channel once a bias absorbs its mean."""
        return self.activation_sq_norms.to(dtype) - self.tokens * self.activation_means.to(dtype).pow(2)

    @property
    def gram_scale(self) -> float:
        """h̄ = mean(diag H): the unit in which ρ and δ are expressed."""
        return float(self.activation_sq_norms.mean().clamp_min(1e-12))


@dataclass
class LayerDecision:
    """What a method decided for one layer: kept channels and the new output projection (and
    optionally new rows of the input projections from alternating minimization). `output_bias` is
    what the method adds to the output bias (a family's own bias, OPT's fc2 say, stays under it).
    `scores` holds each named channel metric."""

    keep: torch.Tensor  # sorted indices of kept channels
    output_weight: torch.Tensor  # m×|keep|
    output_bias: torch.Tensor | None = None  # m
    input_weights: tuple[torch.Tensor, ...] | None = None  # |keep|×d each: (gate, up) of a GLU, (fc1,) otherwise
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    objective: float | None = None
    # tokens × |keep|: the kept channels' activations on the calibration tokens after gate/up
    # changed, when the recovery already computed them exactly as the model will (float32), so
    # the walk propagates through the down projection alone instead of recomputing gate/up.
    kept_intermediates: torch.Tensor | None = field(default=None, repr=False)

    @property
    def known_objective(self) -> float:
        """`objective` of a decision that always carries one (a refit's, SPAP's, the exact optimum's)."""
        if self.objective is None:
            raise ValueError("This layer decision carries no objective.")
        return self.objective


def prune_count(width: int, sparsity: float) -> int:
    """λ = round(sparsity · n), refusing requests that prune nothing or everything."""
    if not isinstance(sparsity, (int, float)) or not np.isfinite(sparsity) or not 0.0 < sparsity < 1.0:
        raise SpapInputError(f"Sparsity must be a number strictly between 0 and 1 (got {sparsity!r}).")
    count = int(round(sparsity * width))
    if count < 1 or count >= width:
        raise SpapInputError(
            f"Sparsity {sparsity:g} of {width} channels prunes {count}; it must prune between 1 and {width - 1}."
        )
    return count


def keep_from_pruned(width: int, pruned: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[pruned.cpu()] = False
    return torch.nonzero(mask).flatten()


def lowest(problem: LayerProblem, scores: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """The `count` (default λ) units of smallest score that the layout allows (stable: lower index
    first on ties)."""
    return problem.removal(torch.argsort(scores.cpu(), stable=True), count)


def objective(problem: LayerProblem, weights: torch.Tensor) -> float:
    """f(W̃) for a full-width W̃ (m×(n+1)); columns of pruned channels are simply zero."""
    gram = problem.gram.to(weights.dtype)
    cross = problem.cross.to(weights.dtype)
    quad = torch.sum((weights @ gram) * weights, dtype=torch.float64)
    lin = torch.sum(cross * weights, dtype=torch.float64)
    return max(0.0, float(0.5 * quad - lin + 0.5 * problem.target_energy))  # a sum of squares: rounding below 0 is 0


def dense_with_bias_column(problem: LayerProblem, dtype: torch.dtype) -> torch.Tensor:
    """W̃0 = [W0, 0]: the dense weights in the augmented coordinates."""
    zeros = torch.zeros(problem.dense_output.shape[0], 1, dtype=dtype, device=problem.dense_output.device)
    return torch.cat([problem.dense_output.to(dtype), zeros], dim=1)


def cholesky_right_solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """rhs·A⁻¹ for A = LLᵀ by two right-sided triangular solves (rhs·L⁻ᵀ, then ·L⁻¹); on CPU this
    is markedly faster than cholesky_solve on the transposed right-hand side."""
    half = torch.linalg.solve_triangular(factor.T, rhs, upper=True, left=False)
    return torch.linalg.solve_triangular(factor, half, upper=False, left=False)


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, diagonal: torch.Tensor,
                with_inverse_diagonal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W = rhs · A⁻¹ with A = gram + diag(diagonal), and optionally diag(A⁻¹).

    Cholesky when A is positive definite (the usual case); otherwise (dead or duplicated channels
    with no ridge) an eigen-decomposition pseudo-inverse, so a degenerate layer never crashes.
    diag(A⁻¹) from the factor: A⁻¹ = L⁻ᵀL⁻¹, so its diagonal holds the column sums of (L⁻¹)².
    """
    system = gram + torch.diag(diagonal)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        weights = cholesky_right_solve(factor, rhs)
        if not with_inverse_diagonal:
            return weights, None
        identity = torch.eye(system.shape[0], dtype=system.dtype, device=system.device)
        inverse_factor = torch.linalg.solve_triangular(factor, identity, upper=False)
        return weights, inverse_factor.pow(2).sum(dim=0)
    values, vectors = torch.linalg.eigh(system)
    cutoff = values.abs().max().clamp_min(1e-30) * system.shape[0] * torch.finfo(system.dtype).eps
    inverse_values = torch.where(values > cutoff, 1.0 / values, torch.zeros_like(values))
    pseudo_inverse = (vectors * inverse_values) @ vectors.T
    return rhs @ pseudo_inverse, torch.diagonal(pseudo_inverse).clone() if with_inverse_diagonal else None


# A penalty on at most this fraction of the channels is solved as a low-rank update of the
# unpenalised system (Woodbury) rather than by a fresh factorisation.
LOW_RANK_FRACTION = 0.6
PRIORS = ("dense", "zero")
PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class RefitSettings:
    """How the kept units' output-projection columns are refitted by least squares.

    ridge δ (relative to h̄) pulls the weights towards the dense ones (prior='dense') or towards zero
    (prior='zero', plain ridge); bias=True adds a free bias that absorbs the pruned channels' mean.
    """

    ridge: float = 0.1
    prior: str = "dense"
    bias: bool = True
    precision: str = "float32"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.precision == "float64" else torch.float32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SpapInputError(f"Solver precision must be float32 or float64 (got {self.precision!r}).")
        if not np.isfinite(self.ridge) or self.ridge < 0:
            raise SpapInputError(f"The ridge δ must be ≥ 0 (got {self.ridge!r}).")
        if self.prior not in PRIORS:
            raise SpapInputError(f"The refit prior must be 'dense' or 'zero' (got {self.prior!r}).")


class RidgeSystem:
    """The normal equations of  f(W̃) + ½Σ_i (penalty_i + δh̄)‖W̃_i − prior_i‖²  over a set of columns.

    Built once per layer (indexing and casting H̃ is O(n²)); each solve then only changes the
    diagonal. The bias column (last, when settings.bias) is never penalised nor pulled towards a
    prior; without bias it is left out entirely.
    """

    def __init__(self, problem: LayerProblem, settings: RefitSettings, columns: torch.Tensor | None = None,
                 low_rank_updates: bool = False) -> None:
        """low_rank_updates: many solves will follow with penalties on few channels, so B⁻¹ is
        worth computing once (SPAP's path); otherwise each solve factorises afresh."""
        dtype = settings.dtype
        self.low_rank_updates = low_rank_updates
        width = problem.width
        index = torch.arange(width) if columns is None else columns.cpu()
        self.channels = len(index)
        if settings.bias:
            index = torch.cat([index, torch.tensor([width])])
        # every column: a slice, no gather copy of the n² Gram
        select: torch.Tensor | slice = slice(0, len(index)) if columns is None else index.to(problem.gram.device)
        self.gram = problem.gram_in(dtype)[select][:, select]  # a view for a slice, a gathered copy otherwise
        self.cross = problem.cross[:, select].to(dtype)
        rows = self.gram.shape[0]
        self.target_energy = problem.target_energy
        scale = problem.gram_scale
        self.base_diagonal = torch.full((rows,), settings.ridge * scale, dtype=dtype, device=self.gram.device)
        if settings.bias:
            self.base_diagonal[-1] = 1e-9 * problem.tokens  # numerically free bias
        self._base_definite: bool | None = None  # decided when a low-rank solve first needs B⁻¹
        self._base: tuple[torch.Tensor, torch.Tensor] | None = None  # B⁻¹ and W_B, once B is factored
        # S, B⁻¹[S,:], B⁻¹[S,S], W_B[:,S]
        self._support: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.rhs = self.cross
        self._dense_solution: torch.Tensor | None = None
        if settings.prior == "dense" and settings.ridge > 0:
            dense = dense_with_bias_column(problem, dtype)[:, select]
            self.rhs = self.cross + dense * (settings.ridge * scale)
            if problem.dense_fits_targets and columns is None:
                self._dense_solution = dense  # rhs = W̃₀B, so rhs·B⁻¹ = W̃₀

    def diagonal(self, penalty: torch.Tensor | None) -> torch.Tensor:
        if penalty is None:
            return self.base_diagonal
        diagonal = self.base_diagonal.clone()
        diagonal[: self.channels] += penalty.to(diagonal.dtype)
        return diagonal

    def solve(self, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """W̃ over the system's columns, penalty_i added to channel i's diagonal."""
        return self._solve(penalty, with_inverse_diagonal=False)[0]

    def solve_with_inverse_diagonal(self, penalty: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """W̃ and diag(A⁻¹) over the channels: what the correlation-aware score needs."""
        weights, inverse_diagonal = self._solve(penalty, with_inverse_diagonal=True)
        assert inverse_diagonal is not None  # asked for with_inverse_diagonal
        return weights, inverse_diagonal[: self.channels]

    def _solve(self, penalty: torch.Tensor | None,
               with_inverse_diagonal: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        support = None if penalty is None else torch.nonzero(penalty > 0).flatten()
        rank = 0 if support is None else len(support)
        base = self._factor_base() if self.low_rank_updates and rank <= LOW_RANK_FRACTION * self.channels else None
        if base is not None:
            base_inverse, base_weights = base
            if penalty is None or support is None or rank == 0:  # no channel penalised: B's own solution
                return base_weights, torch.diagonal(base_inverse) if with_inverse_diagonal else None
            solved = self._low_rank_solve(base, support, penalty[support].to(self.gram.dtype), with_inverse_diagonal)
            if solved is not None:
                return solved
        return ridge_solve(self.gram, self.rhs, self.diagonal(penalty), with_inverse_diagonal)

    def _factor_base(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """B⁻¹ and W_B = rhs·B⁻¹ for the unpenalised system B, once; None if B is not positive
        definite (then every solve takes the direct path with its pseudo-inverse fallback)."""
        if self._base_definite is None:
            factor, info = torch.linalg.cholesky_ex(self.gram + torch.diag(self.base_diagonal))
            self._base_definite = int(info) == 0
            if self._base_definite:
                base_inverse = torch.cholesky_inverse(factor)
                self._base = (base_inverse, self._dense_solution if self._dense_solution is not None
                              else self.rhs @ base_inverse)
        return self._base

    def _support_blocks(self, base: tuple[torch.Tensor, torch.Tensor],
                        support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B⁻¹[S,:], B⁻¹[S,S] and W_B[:,S] (from `base`, B⁻¹ and W_B), gathered once per support:
        along SPAP's path the penalised set rarely changes while ρ grows, and the gathers cost as
        much as the small factorisation."""
        if self._support is None or not torch.equal(self._support[0], support):
            base_inverse, base_weights = base
            rows = base_inverse[support]
            self._support = (support, rows, rows[:, support], base_weights[:, support])
        return self._support[1:]

    def _low_rank_solve(self, base: tuple[torch.Tensor, torch.Tensor], support: torch.Tensor, penalty: torch.Tensor,
                        with_inverse_diagonal: bool) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Woodbury: with the penalty P on r channels S, (B + UPUᵀ)⁻¹ = B⁻¹ − B⁻¹U M⁻¹ UᵀB⁻¹ with
        M = P⁻¹ + B⁻¹[S,S], so W = W_B − W_B[:,S] M⁻¹ B⁻¹[S,:]: O(mrn + r³) instead of O(mn² + n³).
        None when M is numerically indefinite, or when diag(A⁻¹) comes out not positive (a near-
        singular B in float32: its huge B⁻¹ entries cancel), so the caller falls back to the direct solve."""
        base_inverse, base_weights = base
        inverse_rows, inverse_block, base_weights_on_support = self._support_blocks(base, support)
        factor, info = torch.linalg.cholesky_ex(inverse_block + torch.diag(1.0 / penalty))
        if int(info) != 0:
            return None
        if not with_inverse_diagonal:
            coupling = cholesky_right_solve(factor, base_weights_on_support)  # W_B[:,S] M⁻¹
            return torch.addmm(base_weights, coupling, inverse_rows, alpha=-1), None
        correction = cholesky_right_solve(factor, inverse_rows.T).T  # M⁻¹ B⁻¹[S,:]
        inverse_diagonal = torch.diagonal(base_inverse) - (inverse_rows * correction).sum(dim=0)
        if not bool((inverse_diagonal > 0).all()):
            return None
        return torch.addmm(base_weights, base_weights_on_support, correction, alpha=-1), inverse_diagonal

    def objective(self, weights: torch.Tensor, penalty: torch.Tensor | None = None) -> float:
        """f(W̃) of a solution of this system in O(mn + mnr): W̃H̃ = rhs − W̃·diag(d), hence
        tr(W̃H̃W̃ᵀ) = Σ_i (rhs_i − d_iW̃_i)·W̃_i, with no n² product per ρ iteration. On the r penalised
        columns that identity would multiply the solve's rounding in W̃_i by a penalty that grows
        without bound (ρ up to 10⁵⁰ h̄ on the toy), so there (W̃H̃)_i is formed directly, O(mnr).
        Sums run in float64; f is a sum of squares, so what rounding leaves below zero is 0."""
        per_column = (torch.sum(self.rhs * weights, dim=0, dtype=torch.float64)
                      - self.base_diagonal.double() * weights.pow(2).sum(dim=0, dtype=torch.float64))
        support = None if penalty is None else torch.nonzero(penalty > 0).flatten()
        if support is not None and len(support):
            direct = torch.sum(weights[:, support] * (weights @ self.gram[:, support]), dim=0, dtype=torch.float64)
            per_column[support] = direct
        value = 0.5 * per_column.sum() - torch.sum(self.cross * weights, dtype=torch.float64) + 0.5 * self.target_energy
        return max(0.0, float(value))


def augmented_solve(problem: LayerProblem, settings: RefitSettings, penalty: torch.Tensor | None,
                    columns: torch.Tensor | None = None) -> torch.Tensor:
    """Minimiser of f(W̃) + ½Σ_i (penalty_i + δh̄)‖W̃_i − prior_i‖² over `columns` (all when None)."""
    return RidgeSystem(problem, settings, columns).solve(penalty)


def scatter_columns(problem: LayerProblem, columns: torch.Tensor, weights: torch.Tensor, bias: bool) -> torch.Tensor:
    """Full-width W̃ (m×(n+1)) with `weights` placed at `columns` (+ bias column) and zeros elsewhere."""
    full = torch.zeros(problem.dense_output.shape[0], problem.width + 1, dtype=weights.dtype, device=weights.device)
    full[:, columns.to(weights.device)] = weights[:, : len(columns)]
    if bias:
        full[:, -1] = weights[:, -1]
    return full


def refit(problem: LayerProblem, keep: torch.Tensor, settings: RefitSettings) -> LayerDecision:
    """Least-squares refit of the kept output-projection columns (and bias): the shared final step of SPAP
    and FASP, and the inner solve of the brute-force optimum used to check SPAP."""
    system = RidgeSystem(problem, settings, columns=keep)
    weights = system.solve()
    out_dtype = problem.dense_output.dtype
    return LayerDecision(
        keep=keep,
        output_weight=weights[:, : len(keep)].to(out_dtype),
        output_bias=weights[:, -1].to(out_dtype) if settings.bias else None,
        objective=system.objective(weights),
    )
