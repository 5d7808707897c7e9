"""Small synthetic layer problems: the teaching page's playground and the solver's test bed.

The lesson of the "How SPAP works" page lives here rather than in the page: the toy run (SPAP's
penalty path next to the exact optimum), every sentence the page states about it, and the one-click
scenarios with the claim each one makes. Each sentence is computed from the run it describes, so the
tests can check it against the numbers, and the page stays about layout (no streamlit here).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
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
    dense_down = torch.randn(outputs, width, generator=generator, dtype=torch.float64)
    dense_down[:, :dead_channels] = 0
    targets = activations @ dense_down.T
    if noise > 0:
        targets = targets + noise * torch.randn(targets.shape, generator=generator, dtype=torch.float64)
    stats = GramAccumulator()
    stats.add(activations, targets)
    return stats.problem(dense_down, n_prune)


# ------------------------------------------------------------------------- the teaching page's toy

TOY_WIDTH = 8  # C(8, λ) ≤ 70 masks: the exact optimum is found by trying every one
CORRELATED_RANK = 2  # shared latent factors behind the channels when "correlated" is ticked
# Targets the dense layer fits exactly make ½‖WZ−Y‖² ≈ 0 wherever ρ is small, so its plot showed
# rounding, not error. A little noise gives every W, the dense one included, an error floor (≈ 10
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
SHOWN_MASK_VALUES = 4  # the text lists this many values of s, then "…"


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
        return self.problem.dense_down.double().norm(dim=0).numpy()

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
        norms[decision.keep.numpy()] = decision.down_weight.double().norm(dim=0).numpy()
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


def marking_blocks(settings: ToySettings) -> str:
    """The marked counts as blocks of iterations, '1 at k = 1, 2 at k = 2–3, 3 at k = 4–5': as
    short for K = 60 as for K = 5."""
    blocks = []
    for count, group in itertools.groupby(enumerate(marked_counts(settings), start=1), key=lambda pair: pair[1]):
        iterations = [k for k, _ in group]
        span = f"{iterations[0]}–{iterations[-1]}" if len(iterations) > 1 else f"{iterations[0]}"
        blocks.append(f"{count} at k = {span}")
    return ", ".join(blocks)


def is_binary(mask: np.ndarray) -> bool:
    return bool(np.all((mask < BINARY_TOLERANCE) | (mask > 1 - BINARY_TOLERANCE)))


def final_values(outcome: ToyOutcome) -> list[float]:
    """The distinct values of s at the last iteration (rounded to 4 digits), largest first."""
    return sorted({round(float(v), 4) for v in outcome.soft_masks[-1]}, reverse=True)


def trend(values: np.ndarray, rel_tol: float = 1e-9) -> str:
    """'rises', 'falls' or 'stays' (within rel_tol), from the first value to the last."""
    first, last = float(values[0]), float(values[-1])
    if math.isclose(first, last, rel_tol=rel_tol, abs_tol=0.0):
        return "stays"
    return "rises" if last > first else "falls"


def course(values: np.ndarray, rel_tol: float = 1e-9) -> str:
    """How a series went, in words, every number the value at the step it names: 'rises from a to
    b', 'falls from a to b', 'stays at a', or 'rises from a to p (iteration k), then falls to b'
    when it peaks in between."""
    first, last, peak = float(values[0]), float(values[-1]), int(np.argmax(values))
    if 0 < peak < len(values) - 1 and float(values[peak]) > max(first, last):
        return (f"rises from {first:.3g} to {float(values[peak]):.3g} (iteration {peak + 1}), "
                f"then falls to {last:.3g}")
    direction = trend(values, rel_tol)
    return f"stays at {last:.3g}" if direction == "stays" else f"{direction} from {first:.3g} to {last:.3g}"


def peaks(values: np.ndarray) -> bool:
    peak = int(np.argmax(values))
    return 0 < peak < len(values) - 1 and float(values[peak]) > max(float(values[0]), float(values[-1]))


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


def channel_list(channels: tuple[int, ...] | list[int]) -> str:
    """'4, 6 and 7'."""
    names = [str(c) for c in channels]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def percent_range(values: np.ndarray) -> str:
    low, high = float(np.min(values)), float(np.max(values))
    return f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%}–{high:.0%}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


# --------------------------------------------------------------------------- the page's sentences


def algorithm_text(settings: ToySettings) -> str:
    """The penalty path as it runs with these settings: start, schedule, α, K, λ, score, ρ."""
    penalty = settings.penalty()
    count, alpha, start = int(settings.n_prune), penalty.momentum, start_value(settings)
    start_text = ("$s^{(0)}=0$: no channel is marked" if penalty.start == "zero"
                  else f"$s^{{(0)}}=\\lambda/n={start:.3g}$ for every channel")
    if penalty.schedule == "ramp":
        schedule = (r"the **ramp** schedule marks the $\lceil\lambda k/K\rceil$ channels with the lowest score at "
                    f"iteration $k$ (here {marking_blocks(settings)}): channels are removed in blocks, each chosen "
                    "after $W$ has compensated for the previous ones")
    else:
        schedule = (f"the **fixed** schedule marks the $\\lambda={count}$ channels with the lowest score at every "
                    "iteration, so channels marked together get identical $s$ curves")
    magnitude = (r"\lVert Z_i\rVert" if penalty.score == "marginal"
                 else r"(1/\sqrt{[A^{-1}]_{ii}})")  # partial: what channel i adds beyond the others
    if alpha == 1:
        values = "with $\\alpha=1$, $s$ is exactly the indicator of the marked channels"
    else:
        shown = min(penalty.iterations, SHOWN_MASK_VALUES)
        values = ("so a channel marked at every iteration takes the values "
                  + ", ".join(f"{1 - (1 - alpha) ** k * (1 - start):.4g}" for k in range(1, shown + 1))
                  + (", …" if penalty.iterations > shown else "") + ": they depend only on $\\alpha$, the "
                  "start and the schedule, never on $\\rho$")
    return (
        f"**The path with these settings.** Start at {start_text}. Each of the $K={penalty.iterations}$ iterations: "
        f"(1) {schedule}; the score is $\\lVert W_{{:,i}}\\rVert\\cdot {magnitude}^{{t}}$, $t={penalty.balance:g}$. "
        f"(2) $s\\leftarrow(1-\\alpha)s+\\alpha\\,\\mathbf 1_{{\\text{{marked}}}}$ with $\\alpha={alpha:g}$, {values}. "
        r"(3) $W$ is solved in closed form with the penalty $\tfrac{\rho}{2}\bar h\sum_i s_i\lVert W_{:,i}\rVert^2$, "
        r"where $\bar h$ is the mean of $\mathrm{diag}\,H$ ($H = ZZ^\top$, so $\bar h$ is the average "
        r"$\lVert Z_i\rVert^2$): it makes $\rho$ a pure number, the same in every layer. The penalty "
        "pulls the marked columns towards 0 while the others compensate. "
        f"(4) $\\rho\\leftarrow\\tau\\rho$, from $\\rho^{{(0)}}={penalty.rho0:g}$ with $\\tau={penalty.tau:g}$. "
        r"**$\rho$ acts on $W$, never on $s$.** At the end the binary mask is read out as the "
        f"$\\lambda={count}$ largest $s$, and the kept columns are refitted by least squares."
    )


def mask_caption(outcome: ToyOutcome) -> str:
    """What s did: its start, the values it ended at, whether it ended binary, which channels
    the path marked and later dropped, and which curves coincide."""
    final = outcome.soft_masks[-1]
    shown = ", ".join(f"{v:g}" for v in final_values(outcome))
    if is_binary(final):
        ending = f"it ends binary ({shown}), so the read-out simply takes it"
    else:
        ending = (f"it does not end binary: its last values are {shown}, and the binary mask is read out as the "
                  f"λ = {outcome.n_prune} largest s (the read-out panel below)")
    sentences = [f"Before the first iteration s⁽⁰⁾ = {outcome.start:.3g} for every channel (not drawn: the chart's "
                 f"first point is s after iteration 1, at ρ = ρ⁽⁰⁾); {ending}."]
    for channel, (first, dropped) in changed_mind(outcome).items():
        sentences.append(f"Channel {channel} was marked at iteration {first} but not at iteration {dropped}, and "
                         f"ends at s = {final[channel]:.3g}: the path changed its mind and keeps it.")
    for group in identical_curves(outcome):
        sentences.append(f"Channels {channel_list(group)} were marked at the same iterations, so their s curves "
                         "lie on top of each other.")
    return " ".join(sentences)


def readout_caption(outcome: ToyOutcome) -> str:
    """The binary read-out: which s values were largest, what was pruned, what the refit did."""
    final = outcome.soft_masks[-1]
    pruned = outcome.spap_pruned
    largest = ", ".join(f"{final[c]:.3g}" for c in sorted(pruned, key=lambda c: -final[c]))
    return (f"Read-out: the λ = {outcome.n_prune} largest s ({largest}) belong to "
            f"channel{'s' if len(pruned) > 1 else ''} {channel_list(pruned)}, which SPAP prunes. The refit sets "
            f"{'their columns' if len(pruned) > 1 else 'its column'} to 0 and refits the "
            f"{plural(outcome.width - len(pruned), 'kept column')} by least squares.")


def norm_caption(outcome: ToyOutcome) -> str:
    """What ρ did to W: how far the pruned channels' columns shrank by the last ρ and how much the
    kept ones moved to compensate."""
    relative = outcome.relative_norms[-1]
    pruned = list(outcome.spap_pruned)
    kept = [i for i in range(outcome.width) if i not in pruned]
    shrink = percent_range(relative[pruned])
    if float(np.max(relative[pruned])) < 0.5:
        effect = f"ρ has pushed the pruned channels' columns most of the way to 0 ({shrink} of their dense norm)"
    else:
        effect = (f"the pruned channels' columns still have {shrink} of their dense norm: ρ stayed too small to "
                  "push them towards 0, so here it is the read-out and refit that remove them")
    return (f"By the last ρ = {float(outcome.rhos[-1]):.3g} h̄ (h̄ = mean of diag H, the average ‖Zᵢ‖²), {effect}; "
            "the kept columns moved by up to "
            f"{float(np.max(np.abs(relative[kept] - 1))):.0%} to compensate.")


def objective_caption(outcome: ToyOutcome) -> str:
    """Objective and violation over the path, with their directions read from the data."""
    objectives, violations = outcome.objectives, outcome.violations
    levels = (f"SPAP's refitted mask reaches {outcome.spap.objective:.4g}, the exact optimum "
              f"{outcome.exact.objective:.4g}, and keeping all {outcome.width} channels {outcome.dense_objective:.4g} "
              "(the targets' noise)")
    violation = "Violation Σ sᵢ‖W[:,i]‖² (0 when W·diag(s) = 0)"
    if len(objectives) == 1:
        return (f"Objective ½‖WZ−Y‖² of the penalised W after the single iteration (K = 1): {objectives[0]:.4g}; "
                f"{levels}. {violation}: {violations[0]:.3g}.")
    direction = "peaks" if peaks(violations) else trend(violations)
    why = {"rises": ": s grows on the marked channels faster than ρ shrinks their columns",
           "falls": ": ρ shrinks the marked columns faster than s grows on them",
           "peaks": ": first s grows on the marked channels faster than ρ shrinks their columns, then ρ wins",
           "stays": ""}[direction]
    # printed to 4 digits, a change below 0.1% would read "rises from 10.26 to 10.26"
    objective_trend = trend(objectives, rel_tol=1e-3)
    objective_course = (f"stays at about {objectives[-1]:.4g}" if objective_trend == "stays"
                        else f"{objective_trend} from {objectives[0]:.4g} to {objectives[-1]:.4g}")
    return (f"Objective ½‖WZ−Y‖² of the penalised W: {objective_course}; {levels}. {violation}: it "
            f"{course(violations)}{why}.")


def verdict(outcome: ToyOutcome) -> str:
    if outcome.spap_is_optimal:
        return "SPAP found the optimal mask."
    gap = outcome.spap.known_objective - outcome.exact.known_objective
    return (f"SPAP's mask is not optimal here: its objective is {gap:.4g} higher "
            f"({gap / max(outcome.exact.known_objective, 1e-12):.1%}).")


def advice(outcome: ToyOutcome) -> str | None:
    """What to try when SPAP missed the optimum, never suggesting what is already selected."""
    if outcome.spap_is_optimal:
        return None
    settings = outcome.settings
    tries = []
    if settings.score != "partial":
        tries.append("the partial score (it sees what correlated channels can replace)")
    if settings.schedule != "ramp":
        tries.append("the ramp schedule (it lets W compensate before the next block is chosen)")
    tries.append("another ρ⁽⁰⁾, τ, t or α")
    return "Try " + "; or ".join(tries) + "."


# --------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """A one-click setting of the page. `story` says what the run shows, or returns None when the
    run does not do what the scenario's name promises (the tests require that it does)."""

    name: str
    settings: ToySettings
    story: Callable[[ToyOutcome], str | None]


def optimum_story(outcome: ToyOutcome) -> str | None:
    if not outcome.spap_is_optimal:
        return None
    return (f"SPAP prunes channels {channel_list(outcome.spap_pruned)}: the mask the exact optimum finds among all "
            f"{math.comb(outcome.width, outcome.n_prune)} masks (objective {outcome.spap.objective:.4g}).")


def miss_story(outcome: ToyOutcome) -> str | None:
    if outcome.spap_is_optimal or not outcome.settings.correlated:
        return None
    return (f"The channels share {CORRELATED_RANK} latent factors, so a channel's own magnitude says little about "
            f"what the others cannot replace: SPAP prunes {channel_list(outcome.spap_pruned)}, the exact optimum "
            f"{channel_list(outcome.exact_pruned)}. {verdict(outcome)}")


def changed_mind_story(outcome: ToyOutcome) -> str | None:
    found = changed_mind(outcome)
    if not found:
        return None
    channel, (first, dropped) = next(iter(found.items()))
    masks = outcome.soft_masks
    threshold = float(np.sort(masks[-1])[::-1][outcome.n_prune - 1])
    ending = "" if dropped == len(outcome.steps) else f" and ends at {masks[-1, channel]:.3g}"
    right = ("The exact optimum keeps it too: changing its mind was right." if channel not in outcome.exact_pruned
             else "The exact optimum would have pruned it.")
    return (f"Channel {channel} is marked at iteration {first} and its s climbs to "
            f"{masks[:dropped - 1, channel].max():.3g}; at iteration {dropped}, after W has compensated, its score "
            f"is no longer among the {outcome.steps[dropped - 1].marked} lowest, so it is not marked and its s falls "
            f"to {masks[dropped - 1, channel]:.3g}{ending}, below the λ-th largest s ({threshold:.3g}): the read-out "
            f"keeps it. {right}")


# Found by running the toy over seeds (tests/test_toy.py checks each claim). Misses: with correlated
# channels and the defaults SPAP misses on 28 of seeds 0–39; on seed 8 by 53%, and there the partial
# score the advice suggests finds the optimum. Changes of mind are rare, as the penalty shrinks a marked
# column and so lowers its score further: none with the defaults for λ = 2…5 on seeds 0–199. With the
# partial score, t = 2 and correlated channels (λ = 3) 10 of seeds 0–399 drop a channel marked at
# iteration 1 or 2; seed 52 is the one where the exact optimum keeps it too.
SCENARIOS = (
    Scenario("SPAP finds the optimum", ToySettings(), optimum_story),
    Scenario("SPAP misses it (correlated channels)", ToySettings(correlated=True, seed=8), miss_story),
    Scenario("s changes its mind", ToySettings(score="partial", balance=2.0, correlated=True, seed=52),
             changed_mind_story),
)
