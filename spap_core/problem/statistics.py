"""Accumulates the sufficient statistics of the layer-wise problem chunk by chunk, so memory stays
at O(n²) per layer however many calibration tokens are used."""

from __future__ import annotations

import torch

from spap_core.problem.layout import HeadLayout
from spap_core.problem.objective import LayerProblem

# Column blocks of the Gram product: only the upper block triangle is multiplied and mirrored,
# which halves its cost on CPU (the Gram is as expensive as the MLP forward itself).
GRAM_BLOCKS = 4


def symmetric_gram(features: torch.Tensor, blocks: int = GRAM_BLOCKS) -> torch.Tensor:
    """XᵀX for X (tokens × n), computing each off-diagonal block once."""
    n = features.shape[1]
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    gram = torch.empty(n, n, dtype=features.dtype, device=features.device)
    for start, stop in zip(edges[:-1], edges[1:]):
        if start == stop:
            continue
        row = features[:, start:stop].T @ features[:, start:]
        gram[start:stop, start:] = row
        gram[stop:, start:stop] = row[:, stop - start:].T
    return gram


class GramAccumulator:
    """Running H̃ = Z̃Z̃ᵀ with Z̃ = [Z; 1], and C = YZ̃ᵀ and ‖Y‖² when the targets are given
    (products in float32, sums in float64 so long calibration runs do not lose precision).

    Without explicit targets the target is the dense layer's own output Y = W₀Z, and then
    C = W̃₀H̃ and ‖Y‖² = tr(W₀HW₀ᵀ) follow from H̃ alone: the dense down projection never has to be
    run over the calibration tokens, and C costs one m×n×n product instead of an m×n×p one.
    """

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.target_energy = 0.0
        self.explicit_targets: bool | None = None

    def add(self, activations: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """activations: tokens × n (input of the output projection); targets: tokens × m (what the MLP should
        output), or None for the dense output W₀Z. Every chunk of one layer must agree on that."""
        if self.explicit_targets is not None and self.explicit_targets != (targets is not None):
            raise ValueError("mixing chunks with and without explicit targets in one layer")
        self.explicit_targets = targets is not None
        z = activations.reshape(-1, activations.shape[-1]).float()
        ones = torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)
        z = torch.cat([z, ones], dim=1)
        gram = symmetric_gram(z)
        self.gram = gram.double() if self.gram is None else self.gram.add_(gram)  # summed in float64
        if targets is not None:
            y = targets.reshape(-1, targets.shape[-1]).float()
            cross = (y.T @ z).double()
            self.cross = cross if self.cross is None else self.cross.add_(cross)
            self.target_energy += float(y.double().pow(2).sum())

    def problem(self, dense_output: torch.Tensor, n_prune: int, group_size: int = 1,
                layout: HeadLayout | None = None) -> LayerProblem:
        """The layer problem of pruning `n_prune` units (channels, or heads of `group_size` columns
        within `layout`) from the output projection `dense_output`."""
        if self.gram is None:
            raise RuntimeError("no calibration tokens were accumulated for this layer")
        dense = dense_output.detach().float()
        # Without explicit targets C is derived below, from the float32 Gram copy the problem keeps
        # for the solvers: until then it is an empty placeholder.
        cross = self.cross if self.cross is not None else torch.empty(0, dtype=torch.float64)
        problem = LayerProblem(gram=self.gram, cross=cross, target_energy=self.target_energy,
                               dense_output=dense, n_prune=n_prune, dense_fits_targets=not self.explicit_targets,
                               group_size=group_size, layout=layout)
        if problem.dense_fits_targets:  # C and ‖Y‖² from the float32 Gram copy the solvers reuse
            width = dense.shape[1]
            problem.cross = (dense @ problem.gram_in(dense.dtype)[:width]).double()
            problem.target_energy = float(torch.sum(problem.cross[:, :width] * dense.double()))
        return problem
