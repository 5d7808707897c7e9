"""Small synthetic layer problems: the teaching page's playground and the solver's test bed.

The toy run of the "How SPAP works" page is here: SPAP's penalty path on an 8-channel layer next to
the exact optimum, found by trying every mask, and the facts about the run that its sentences rest
on (which channels each iteration marked, which the path dropped again, which s curves coincide).
The sentences themselves are computed from these numbers in spap_service.lesson, so the math stays
testable without the words and the page stays about layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spap_core.methods.exact import brute_force_optimum
from spap_core.methods.spap import PenaltySettings, Spap, SpapStep, spap_layer
from spap_core.problem.objective import LayerDecision, LayerProblem, RefitSettings, refit
from spap_core.problem.statistics import GramAccumulator


def toy_problem(width: int = 8, outputs: int = 4, tokens: int = 64, n_prune: int = 3, seed: int = 0,
                dead_channels: int = 0, noise: float = 0.0, latent_rank: int = 0) -> LayerProblem:
    """A random GLU-like layer: activations with channel-dependent scales, Y = W0·Z (+ noise).
    The first `dead_channels` channels have zero down_proj columns, so they contribute nothing.
    latent_rank > 0 makes channels correlated, as in real MLPs (a few shared factors + noise):
    then a channel's own magnitude says little about what the others cannot replace."""
    generator = torch.Generator().manual_seed(seed)
    scales = 0.5 + 1.5 * torch.rand(width, generator=generator, dtype=torch.float64)
    activations = torch.randn(tokens, width, generator=generator, dtype=torch.float64) * scales
    if latent_rank > 0:
        factors = torch.randn(tokens, latent_rank, generator=generator, dtype=torch.float64)
        mixing = torch.randn(latent_rank, width, generator=generator, dtype=torch.float64)
        activations = factors @ mixing + 0.3 * activations
    dense_output = torch.randn(outputs, width, generator=generator, dtype=torch.float64)
    dense_output[:, :dead_channels] = 0
    targets = activations @ dense_output.T
    if noise > 0:
        targets = targets + noise * torch.randn(targets.shape, generator=generator, dtype=torch.float64)
    stats = GramAccumulator()
    stats.add(activations, targets)
    return stats.problem(dense_output, n_prune)


# ------------------------------------------------------------------------- the teaching page's toy

TOY_WIDTH = 8  # C(8, λ) ≤ 70 masks: the exact optimum is found by trying every one
CORRELATED_RANK = 2  # shared latent factors behind the channels when "correlated" is ticked
# Targets the dense layer fits exactly would make ½‖WZ−Y‖² ≈ 0 wherever ρ is small, so its plot would
# show rounding, not error. A little noise gives every W, the dense one included, an error floor (≈ 10
# against ½‖Y‖² ≈ 3000 on seed 0) that no rounding can cross.
TOY_NOISE = 0.3
TOY_REFIT = RefitSettings(precision="float64")  # the extremes of the sliders reach ρ ≈ 10⁵⁴ h̄

# The page's slider ranges, here so the tests can run the toy at every extreme the page allows. The
# ranges of SPAP's own hyperparameters are their declarations' (the Run form's and the CLI's too).
SPAP_DECLARED = {declared.key: declared for declared in Spap.parameters}


def _declared_range(key: str) -> tuple:
    declared = SPAP_DECLARED[key]
    return declared.kind(declared.low), declared.kind(declared.high)


RHO0_CHOICES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)  # a log grid inside ρ⁽⁰⁾'s range
TAU_RANGE = _declared_range("tau")
BALANCE_RANGE = _declared_range("t")
MOMENTUM_RANGE = _declared_range("alpha")
ITERATIONS_RANGE = _declared_range("K")
N_PRUNE_RANGE = (1, TOY_WIDTH - 1)
SEED_RANGE = (0, 10_000)
TOY_SCORES = ("marginal", "partial")

BINARY_TOLERANCE = 1e-6  # s within this of 0 or 1 counts as binary


@dataclass(frozen=True)
class ToySettings:
    """Every knob of the teaching page, one field per widget; the path's defaults are the library's."""

    rho0: float = PenaltySettings.rho0
    tau: float = PenaltySettings.tau
    balance: float = PenaltySettings.balance
    momentum: float = PenaltySettings.momentum
    iterations: int = PenaltySettings.iterations
    n_prune: int = 3
    score: str = PenaltySettings.score
    schedule: str = PenaltySettings.schedule
    correlated: bool = False
    seed: int = 0

    def penalty(self) -> PenaltySettings:
        """The path's settings (raises SpapInputError for values the path refuses)."""
        return PenaltySettings(iterations=int(self.iterations), rho0=float(self.rho0), tau=float(self.tau),
                               balance=float(self.balance), momentum=float(self.momentum), score=self.score,
                               schedule=self.schedule)


@dataclass(frozen=True)
class ToyOutcome:
    """SPAP's penalty path on the toy layer next to the exact optimum, both refitted alike."""

    settings: ToySettings
    problem: LayerProblem
    steps: list[SpapStep]
    spap: LayerDecision
    exact: LayerDecision
    dense_objective: float  # ½‖WZ−Y‖² of the refit that keeps every channel: the noise floor

    @property
    def width(self) -> int:
        return self.problem.width

    @property
    def n_prune(self) -> int:
        return self.problem.n_prune

    @property
    def start(self) -> float:
        return start_value(self.settings)

    @property
    def rhos(self) -> np.ndarray:
        return np.array([step.rho for step in self.steps])

    @property
    def objectives(self) -> np.ndarray:
        """½‖WZ−Y‖² of each ρ iteration's penalised W."""
        return np.array([step.objective for step in self.steps])

    @property
    def violations(self) -> np.ndarray:
        return np.array([step.violation for step in self.steps])

    @property
    def soft_masks(self) -> np.ndarray:
        """[iteration, channel] s after each ρ iteration (1 = pruned)."""
        return np.stack([step.soft_mask for step in self.steps]).astype(np.float64)

    @property
    def column_norms(self) -> np.ndarray:
        """[iteration, channel] ‖W[:,i]‖ of the penalised solution of each ρ iteration."""
        return np.stack([step.column_norms for step in self.steps]).astype(np.float64)

    @property
    def dense_column_norms(self) -> np.ndarray:
        """‖W₀[:,i]‖ of the dense down_proj: where every column starts."""
        return self.problem.dense_output.double().norm(dim=0).numpy()

    @property
    def relative_norms(self) -> np.ndarray:
        """[iteration, channel] ‖W[:,i]‖ ÷ ‖W₀[:,i]‖: 1 = the dense column, 0 = pushed out."""
        return self.column_norms / np.maximum(self.dense_column_norms, 1e-12)

    def pruned(self, decision: LayerDecision) -> tuple[int, ...]:
        keep = set(decision.keep.tolist())
        return tuple(i for i in range(self.width) if i not in keep)

    @property
    def spap_pruned(self) -> tuple[int, ...]:
        return self.pruned(self.spap)

    @property
    def exact_pruned(self) -> tuple[int, ...]:
        return self.pruned(self.exact)

    @property
    def spap_is_optimal(self) -> bool:
        """SPAP's mask is the exact optimum's (the same set of pruned channels)."""
        return self.spap_pruned == self.exact_pruned

    def refit_column_norms(self, decision: LayerDecision) -> np.ndarray:
        """‖W[:,i]‖ after the read-out and refit, full width: 0 for every pruned channel."""
        norms = np.zeros(self.width)
        norms[decision.keep.numpy()] = decision.output_weight.double().norm(dim=0).numpy()
        return norms

    @property
    def marked(self) -> list[frozenset[int]]:
        """The channels each s-step moved towards 1. Read off s itself: a marked channel's s becomes
        (1−α)s + α, an unmarked one's (1−α)s, so each step's target shows through exactly."""
        alpha = self.settings.momentum
        previous = np.full(self.width, self.start)
        sets = []
        for mask in self.soft_masks:
            sets.append(frozenset(np.flatnonzero(mask - (1 - alpha) * previous > alpha / 2).tolist()))
            previous = mask
        return sets


def start_value(settings: ToySettings) -> float:
    """s⁽⁰⁾, the same for every channel: 0 ('zero') or λ/n ('centre')."""
    return int(settings.n_prune) / TOY_WIDTH if settings.penalty().start == "centre" else 0.0


def run_toy(settings: ToySettings) -> ToyOutcome:
    """SPAP's path on the toy layer the settings describe, the exact optimum by enumeration and
    the all-channels refit, all with the same float64 refit so the objectives compare like for like."""
    penalty = settings.penalty()
    problem = toy_problem(width=TOY_WIDTH, n_prune=int(settings.n_prune), seed=int(settings.seed), noise=TOY_NOISE,
                          latent_rank=CORRELATED_RANK if settings.correlated else 0)
    steps: list[SpapStep] = []
    decision = spap_layer(problem, penalty, TOY_REFIT, on_step=steps.append)
    everything = refit(problem, torch.arange(problem.width), TOY_REFIT)
    return ToyOutcome(settings=settings, problem=problem, steps=steps,
                      spap=decision, exact=brute_force_optimum(problem, TOY_REFIT),
                      dense_objective=float(everything.known_objective))


# ------------------------------------------------------------------------------- facts of a run


def marked_counts(settings: ToySettings) -> list[int]:
    """How many channels each ρ iteration marks: λ every time ('fixed'), or ⌈λk/K⌉ ('ramp')."""
    iterations, count = int(settings.iterations), int(settings.n_prune)
    if settings.schedule == "fixed":
        return [count] * iterations
    return [math.ceil(count * k / iterations) for k in range(1, iterations + 1)]


def is_binary(mask: np.ndarray) -> bool:
    """Every value of s within BINARY_TOLERANCE of 0 or 1."""
    return bool(np.all((mask < BINARY_TOLERANCE) | (mask > 1 - BINARY_TOLERANCE)))


def final_values(outcome: ToyOutcome) -> list[float]:
    """The distinct values of s at the last iteration (rounded to 4 digits), largest first."""
    return sorted({round(float(v), 4) for v in outcome.soft_masks[-1]}, reverse=True)


def changed_mind(outcome: ToyOutcome) -> dict[int, tuple[int, int]]:
    """Channels the path marked, then did not mark at a later iteration, and the read-out keeps:
    channel → (iteration first marked, first later iteration it was not marked)."""
    marked, pruned = outcome.marked, set(outcome.spap_pruned)
    found = {}
    for channel in sorted(set(range(outcome.width)) - pruned):
        iterations = [k for k, chosen in enumerate(marked, start=1) if channel in chosen]
        if not iterations:
            continue
        dropped = next((k for k in range(iterations[0] + 1, len(marked) + 1) if channel not in marked[k - 1]), None)
        if dropped is not None:
            found[channel] = (iterations[0], dropped)
    return found


def identical_curves(outcome: ToyOutcome) -> list[tuple[int, ...]]:
    """Groups of ≥ 2 marked channels whose s curves coincide (marked at the same iterations), so
    their lines lie on top of each other: with the fixed schedule, typically all λ pruned ones."""
    groups: dict[tuple[float, ...], list[int]] = {}
    masks = outcome.soft_masks
    for channel in range(outcome.width):
        if masks[:, channel].max() > BINARY_TOLERANCE:
            groups.setdefault(tuple(np.round(masks[:, channel], 6)), []).append(channel)
    return [tuple(members) for members in groups.values() if len(members) > 1]
