"""How many channels each layer gives up. Uniform: the same share everywhere (the paper's setting).
Global: one budget for the whole model (the parameter count of uniform sparsity), spread by a measured
property of each layer on the dense model, in the manner of OWL (outlier-weighted layer-wise sparsity,
Yin et al. 2024): a layer whose MLP output a few loud channels dominate keeps more of its channels.
Each channel's score is the output energy it carries once a bias absorbs its mean,
Var(Zᵢ)·‖W_down[:,i]‖²; a layer's outlier ratio is the share of its channels scoring above
`outlier_factor` × the layer's mean score; layer sparsities are the target minus a deviation
proportional to the ratio's distance from its mean over layers, at most ±`max_deviation` (both are
GlobalSettings, declared as the strategy's parameters).

Measured on SmolLM2 at 40% (8 × 512 calibration, SPAP without alternating minimization, 8 windows):
uniform 66.78. The first rule tried, pruning the channels whose scores are the smallest share of their
layer's total (the opposite direction: it empties exactly the outlier-heavy layers 0–2, 11, 28, 29),
gave 93.4 unbounded and 75.92 within ±0.1; docs/spap-design.md has the numbers.

Fisher: the same budget spent on the channels whose loss sensitivity (spap_core.methods.sensitivity) is the
lowest over the whole model. It measures what the outlier ratio guesses, at the price of a backward
pass per calibration window: at 40% it gave 60.49 against the outlier rule's 64.57 (same protocol).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.methods.sensitivity import FISHER_WINDOWS
from spap_core.problem.objective import prune_count
from spap_core.schema import Parameter

# The Fisher allocation leaves every layer at least 10% of its channels.
MAX_LAYER_SPARSITY = 0.9


class DenseMeasurements(Protocol):
    """What an allocation can measure on the dense model before the walk prunes it, one list entry
    per layer; the walk computes each only when a strategy asks for it."""

    def channel_scores(self) -> list[np.ndarray]:
        """Var(Zᵢ)·‖W_out[:,i]‖² of every channel (dense_channel_scores)."""

    def channel_fisher(self) -> list[np.ndarray]:
        """Every channel's loss sensitivity (spap_core.methods.sensitivity.channel_fisher)."""


@dataclass(frozen=True)
class NoAllocationSettings:
    """The settings of a strategy that has no parameters."""


@dataclass(frozen=True)
class GlobalSettings:
    """The global (OWL-style) strategy's two numbers: how far a layer's sparsity may move from the
    target (OWL's λ, 0.08 in the paper; 0.1 here, the bound docs/spap-design.md measured), and how
    many times its layer's mean score a channel must carry to count as an outlier (OWL's M)."""

    max_deviation: float = 0.1
    outlier_factor: float = 5.0

    def __post_init__(self) -> None:
        if (not isinstance(self.max_deviation, (int, float)) or isinstance(self.max_deviation, bool)
                or not 0.0 <= self.max_deviation <= 1.0):  # NaN fails too
            raise SpapInputError(f"The global allocation's maximum deviation must be a share from 0 to 1 "
                                 f"(got {self.max_deviation!r}).")
        if (not isinstance(self.outlier_factor, (int, float)) or isinstance(self.outlier_factor, bool)
                or not math.isfinite(self.outlier_factor) or self.outlier_factor <= 0):
            raise SpapInputError(f"The global allocation's outlier factor must be a finite number > 0 "
                                 f"(got {self.outlier_factor!r}).")


class Allocation(ABC):
    """How a run's sparsity is spread over the layers. Subclasses set `name` and `description`,
    (with parameters) `settings_type` and `parameters`, override the needs that differ from the
    defaults below, and implement `counts`; a new strategy is one subclass plus one entry in
    ALLOCATION_STRATEGIES."""

    name: ClassVar[str]
    description: ClassVar[str]  # in the words the CLI's help and the app's controls use
    settings_type: ClassVar[type] = NoAllocationSettings
    # Its parameters, each with a path into `settings_type` and the group "allocation": the CLI's
    # flags, the app's widgets and the summary's phrases are generated from them
    # (spap_core.pipeline.parameters collects them under PruneSettings.allocation_options).
    parameters: ClassVar[tuple[Parameter, ...]] = ()

    def check(self, sparsity: float) -> None:  # noqa: B027 - most strategies refuse no sparsity
        """Raise SpapInputError for a sparsity it cannot spread."""

    def default_settings(self) -> Any:
        return self.settings_type()

    def gradient_windows(self, settings: Any) -> int:
        """The calibration windows it backpropagates through the whole dense model (0: none, the
        default). One that does is refused on a model offloaded with a device map, which cannot hold a
        backward pass; the memory check counts one window's, the time estimate every window's."""
        return 0

    @abstractmethod
    def counts(self, widths: list[int], sparsity: float, dense: DenseMeasurements, settings: Any) -> list[int]:
        """λ of every layer, from the layers' widths, what it measures on the dense model and its
        own settings (a `settings_type`)."""


class UniformAllocation(Allocation):
    name = "uniform"
    description = "every layer prunes the same share (the paper's setting)"

    def counts(self, widths: list[int], sparsity: float, dense: DenseMeasurements, settings: Any) -> list[int]:
        return uniform_counts(widths, sparsity)


class GlobalAllocation(Allocation):
    name = "global"
    description = ("one budget for the model (the parameter count of uniform), spread like OWL: a layer with more "
                   "outlier channels in the dense model prunes less, each layer within the maximum deviation of "
                   f"the target ({GlobalSettings().max_deviation:g} by default)")
    settings_type = GlobalSettings
    parameters = (
        Parameter("max_deviation", "max deviation", "Largest deviation from the target",
                  "How far a layer's sparsity may move from the target (OWL's λ).",
                  float, "allocation", ("--max-deviation",), path="max_deviation", low=0.0, high=0.5, step=0.01),
        Parameter("outlier_factor", "outlier factor", "Outlier factor",
                  "A channel is an outlier when its score is this many times its layer's mean (OWL's M).",
                  float, "allocation", ("--outlier-factor",), path="outlier_factor", low=1.0, high=100.0,
                  step=0.5),
    )

    def counts(self, widths: list[int], sparsity: float, dense: DenseMeasurements, settings: Any) -> list[int]:
        return global_counts(dense.channel_scores(), sparsity, settings)


class FisherAllocation(Allocation):
    name = "fisher"
    description = ("one budget for the model (the parameter count of uniform), spent on the channels whose removal "
                   "raises the dense model's calibration loss least (empirical Fisher of a channel mask, from a "
                   f"backward pass per calibration window, at most {FISHER_WINDOWS}); each layer keeps at least "
                   f"{1 - MAX_LAYER_SPARSITY:.0%} of its channels")
    def gradient_windows(self, settings: Any) -> int:
        return FISHER_WINDOWS

    def check(self, sparsity: float) -> None:
        if sparsity > MAX_LAYER_SPARSITY:
            raise SpapInputError(f"Sparsity {sparsity} is more than the Fisher allocation prunes: it leaves every "
                                 f"layer at least {1 - MAX_LAYER_SPARSITY:.0%} of its channels.")

    def counts(self, widths: list[int], sparsity: float, dense: DenseMeasurements, settings: Any) -> list[int]:
        return fisher_counts(dense.channel_fisher(), sparsity)


ALLOCATION_STRATEGIES: dict[str, Allocation] = {strategy.name: strategy for strategy in (
    UniformAllocation(),
    GlobalAllocation(),
    FisherAllocation(),
)}
# The strategies' names and descriptions, for the CLI's choices and help and the app's controls.
ALLOCATIONS = tuple(ALLOCATION_STRATEGIES)
DESCRIPTIONS = {name: strategy.description for name, strategy in ALLOCATION_STRATEGIES.items()}
UNIFORM = UniformAllocation.name  # the default


def allocation_strategy(name: str) -> Allocation:
    if name not in ALLOCATION_STRATEGIES:
        raise SpapInputError(f"Unknown allocation '{name}': choose one of {', '.join(ALLOCATIONS)}.")
    return ALLOCATION_STRATEGIES[name]


def uniform_counts(widths: list[int], sparsity: float) -> list[int]:
    return [prune_count(width, sparsity) for width in widths]


def global_counts(channel_scores: list[np.ndarray], sparsity: float, settings: GlobalSettings) -> list[int]:
    """λ per layer from per-channel scores: layers with a larger share of outlier channels (above
    `settings.outlier_factor` × their mean score) prune less, the others more, each within
    `settings.max_deviation` of the target, with exactly the uniform total (the rounding remainders
    go to the layers closest to the next channel)."""
    widths = np.array([len(scores) for scores in channel_scores])
    budget = sum(uniform_counts(list(widths), sparsity))
    ratios = np.array([float((scores > settings.outlier_factor * scores.mean()).mean()) for scores in channel_scores])
    spread = np.abs(ratios - ratios.mean()).max()
    deviation = (np.zeros_like(ratios) if spread == 0
                 else settings.max_deviation * (ratios - ratios.mean()) / spread)
    targets = np.clip(sparsity - deviation, 0.0, 1.0) * widths
    counts = np.clip(np.floor(targets).astype(int), 1, widths - 1)
    order = np.argsort(-(targets - np.floor(targets)), kind="stable")
    step = 1 if counts.sum() < budget else -1
    index = 0
    while counts.sum() != budget:  # hand out (or take back) single channels, largest remainder first
        layer = order[index % len(order)] if step > 0 else order[::-1][index % len(order)]
        if 1 <= counts[layer] + step <= widths[layer] - 1:
            counts[layer] += step
        index += 1
    return [int(count) for count in counts]


def fisher_counts(channel_fisher: list[np.ndarray], sparsity: float) -> list[int]:
    """λ per layer: the uniform total, taken as the channels of least Fisher information over all
    layers, lowest first, with every layer pruning at least one channel and at most
    MAX_LAYER_SPARSITY of its width (a layer emptied on the evidence of a few windows would leave
    nothing to carry the signal its neighbours expect)."""
    FisherAllocation().check(sparsity)
    widths = [len(scores) for scores in channel_fisher]
    budget = sum(uniform_counts(widths, sparsity))
    caps = [max(1, min(width - 1, int(MAX_LAYER_SPARSITY * width))) for width in widths]
    layer_of = np.concatenate([np.full(width, layer) for layer, width in enumerate(widths)])
    order = np.argsort(np.concatenate(channel_fisher), kind="stable")
    taken = np.zeros(len(widths), dtype=int)
    total = len(widths)  # every layer prunes at least one channel, whatever it is
    for layer in layer_of[order]:  # the least informative channel left, wherever it is
        if total == budget:
            break
        if taken[layer] < caps[layer]:
            total += taken[layer] >= 1  # a layer's first channel was already counted
            taken[layer] += 1
    return [int(count) for count in np.maximum(taken, 1)]


def dense_channel_scores(layers: nn.ModuleList, output_projections: list[nn.Module], hidden: list[torch.Tensor],
                         run_layer) -> list[np.ndarray]:
    """Var(Zᵢ)·‖W_out[:,i]‖² of every channel of every layer on the dense model, from one forward
    pass of the calibration windows through the layers (`run_layer(layer, index, hidden)` runs one
    layer on every chunk and returns its outputs and its output-projection weight, out × in)."""
    scores = []
    for index, (layer, projection) in enumerate(zip(layers, output_projections)):
        sums: list[torch.Tensor] = []

        def record(_module, args, sums=sums):
            z = args[0].reshape(-1, args[0].shape[-1]).double()
            sums.append(torch.stack([z.sum(dim=0), z.pow(2).sum(dim=0), torch.full_like(z[0], z.shape[0])]))

        handle = projection.register_forward_pre_hook(record)
        try:
            hidden, output_weight = run_layer(layer, index, hidden)
        finally:
            handle.remove()
        total, squares, tokens = torch.stack(sums).sum(dim=0)
        variance = (squares / tokens - (total / tokens).pow(2)).clamp_min(0)
        scores.append((variance * output_weight.double().pow(2).sum(dim=0).to(variance.device)).cpu().numpy())
    return scores
