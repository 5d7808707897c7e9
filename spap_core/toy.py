"""Small synthetic layer problems: the teaching page's playground and the solver's test bed."""

from __future__ import annotations

import torch

from spap_core.methods.problem import LayerProblem
from spap_core.stats import GramAccumulator


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
