"""How many channels each layer gives up. Uniform: the same share everywhere (the paper's setting).
Global: one budget for the whole model, spent where the dense model's own statistics say a channel
matters least, in the manner of FLAP's adaptive structure search. Each channel's score is the output
energy it carries once a bias absorbs its mean, Var(Zᵢ)·‖W_down[:,i]‖² (what FLAP's bias-compensated
removal costs), taken as a share of its layer's total, i.e. the relative error its removal adds to
that layer (layers' output scales differ by orders of magnitude); the λ lowest shares over all
layers are pruned, with the total λ that uniform sparsity would prune, so the parameter count is
the same. FLAP itself standardises scores within a layer (a z-score) instead; that puts a layer
whose channels are nearly all silent next to a few loud ones *behind* a layer of alike channels
(tests/test_allocation.py), the opposite of what their output energy says."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.methods.problem import prune_count

UNIFORM = "uniform"
GLOBAL = "global"
ALLOCATIONS = (UNIFORM, GLOBAL)
# A layer's sparsity stays within this distance of the target (as OWL bounds its layer-wise
# sparsities): unbounded, the energy shares emptied SmolLM2's layers 2, 11 and 28 (whose output a few
# loud channels dominate) down to the 90% cap, and SPAP at 40% went from 66.8 to 93.4 perplexity.
MAX_DEVIATION = 0.1
# Nor does any layer lose more than this share of its channels: a layer emptied of its MLP would
# leave its attention's output unprocessed, a failure no channel score foresees.
MAX_LAYER_SPARSITY = 0.9


def check_allocation(allocation: str) -> None:
    if allocation not in ALLOCATIONS:
        raise SpapInputError(f"Unknown allocation '{allocation}': choose one of {', '.join(ALLOCATIONS)}.")


def uniform_counts(widths: list[int], sparsity: float) -> list[int]:
    return [prune_count(width, sparsity) for width in widths]


def global_counts(channel_scores: list[np.ndarray], sparsity: float, max_deviation: float = MAX_DEVIATION,
                  max_layer_sparsity: float = MAX_LAYER_SPARSITY) -> list[int]:
    """λ per layer from per-channel scores (low = cheap to prune): the Σ uniform λ lowest shares of
    their layer's total over all layers, each layer's sparsity within `max_deviation` of the target,
    pruning at least 1 and at most ⌊max_layer_sparsity·n⌋ channels."""
    widths = [len(scores) for scores in channel_scores]
    budget = sum(uniform_counts(widths, sparsity))
    floors = [max(1, int(np.ceil((sparsity - max_deviation) * width))) for width in widths]
    caps = [max(1, int(np.floor(min(sparsity + max_deviation, max_layer_sparsity) * width))) for width in widths]
    if not sum(floors) <= budget <= sum(caps):
        raise SpapInputError(f"Sparsity {sparsity:g} cannot be spread within ±{max_deviation:g} per layer and at most "
                             f"{max_layer_sparsity:.0%} of any layer.")
    shares = [scores / max(float(scores.sum()), 1e-300) for scores in channel_scores]
    counts = list(floors)  # every layer prunes at least its floor (and one channel)
    # the candidates beyond each layer's floor, cheapest first, up to its cap
    candidates = sorted((float(value), layer) for layer, values in enumerate(shares)
                        for value in np.sort(values)[floors[layer]:caps[layer]])
    for _, layer in candidates[:budget - sum(floors)]:
        counts[layer] += 1
    return counts


def dense_channel_scores(layers: nn.ModuleList, mlps: list[nn.Module], hidden: list[torch.Tensor],
                         run_layer) -> list[np.ndarray]:
    """Var(Zᵢ)·‖W_down[:,i]‖² of every channel of every layer on the dense model, from one forward
    pass of the calibration windows through the layers (`run_layer(layer, index, hidden)` runs one
    layer on every chunk and returns its outputs and its down_proj weight)."""
    scores = []
    for index, (layer, mlp) in enumerate(zip(layers, mlps)):
        sums: list[torch.Tensor] = []

        def record(_module, args, sums=sums):
            z = args[0].reshape(-1, args[0].shape[-1]).double()
            sums.append(torch.stack([z.sum(dim=0), z.pow(2).sum(dim=0), torch.full_like(z[0], z.shape[0])]))

        handle = mlp.down_proj.register_forward_pre_hook(record)
        try:
            hidden, down_weight = run_layer(layer, index, hidden)
        finally:
            handle.remove()
        total, squares, tokens = torch.stack(sums).sum(dim=0)
        variance = (squares / tokens - (total / tokens).pow(2)).clamp_min(0)
        scores.append((variance * down_weight.double().pow(2).sum(dim=0).to(variance.device)).cpu().numpy())
    return scores
