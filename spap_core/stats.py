"""Accumulates the sufficient statistics of the layer-wise problem chunk by chunk, so memory stays
at O(n²) per layer however many calibration tokens are used."""

from __future__ import annotations

import torch

from spap_core.methods.problem import LayerProblem


class GramAccumulator:
    """Running H̃ = Z̃Z̃ᵀ, C = YZ̃ᵀ and ‖Y‖² with Z̃ = [Z; 1] (products in the activations' dtype,
    sums in float64 so long calibration runs do not lose precision)."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.target_energy = 0.0

    def add(self, activations: torch.Tensor, targets: torch.Tensor) -> None:
        """activations: tokens × n (input of down_proj); targets: tokens × m (what the MLP should output)."""
        z = activations.reshape(-1, activations.shape[-1]).float()
        y = targets.reshape(-1, targets.shape[-1]).float()
        ones = torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)
        z = torch.cat([z, ones], dim=1)
        gram, cross = (z.T @ z).double(), (y.T @ z).double()
        if self.gram is None:
            self.gram, self.cross = gram, cross
        else:
            self.gram += gram
            self.cross += cross
        self.target_energy += float(y.double().pow(2).sum())

    def problem(self, dense_down: torch.Tensor, n_prune: int) -> LayerProblem:
        if self.gram is None or self.cross is None:
            raise RuntimeError("no calibration tokens were accumulated for this layer")
        return LayerProblem(gram=self.gram, cross=self.cross, target_energy=self.target_energy,
                            dense_down=dense_down.detach().float(), n_prune=n_prune)
