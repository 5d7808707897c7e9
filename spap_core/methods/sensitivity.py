"""How much the model's loss depends on each MLP channel, measured on the dense model: the
empirical Fisher information of a multiplicative mask mᵢ = 1 on every intermediate channel,
Fᵢ = Σ_windows (∂L/∂mᵢ)², in the manner of Kwon et al. 2022 ("A fast post-training pruning
framework for transformers"). To second order, zeroing a set S of channels raises the calibration
loss by about ½ Σ_{i∈S} Fᵢ, so the same number is comparable across layers: that is what a global
budget needs and what a layer's own statistics (its Gram, its output energy) cannot give, since they
do not know how much the rest of the network amplifies or forgives that layer's error.

It needs one backward pass per window through the whole model, so the model must fit in memory
with one window's activations: an offloaded model is refused before any work
(spap_core.pipeline.walk.check_prunable)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from torch import nn

from spap_core.errors import PruningCancelled
from spap_core.models.adapters.projections import projection_shape
from spap_core.models.offload import execution_device

# The windows the Fisher is summed over. With 8 windows of 512 tokens the allocation was the best
# measured; all 32 calibration windows allocated worse (48.37 against 47.73 at 40%, docs/spap-design.md)
# for 24 more forward and backward passes.
FISHER_WINDOWS = 8


def channel_fisher(model: nn.Module, output_projections: list[nn.Module], windows: torch.Tensor,
                   cancel: threading.Event | None = None) -> list[np.ndarray]:
    """Fᵢ for every intermediate channel of every layer (one float64 array per MLP output
    projection), from the first FISHER_WINDOWS calibration windows [N, L], one window per backward
    pass: the empirical Fisher sums squared per-sample gradients, and a batch would square their sum
    instead."""
    masks = [torch.ones(projection_shape(out)[1], device=cast(torch.Tensor, out.weight).device, requires_grad=True)
             for out in output_projections]
    handles = [out.register_forward_pre_hook(_masked_input(mask)) for out, mask in zip(output_projections, masks)]
    fisher = [torch.zeros(mask.shape, dtype=torch.float64, device=mask.device) for mask in masks]
    device = execution_device(model)
    try:
        with torch.enable_grad():
            for window in windows[:FISHER_WINDOWS]:
                if cancel is not None and cancel.is_set():
                    raise PruningCancelled("cancelled while measuring the channels' sensitivity")
                window = window[None].to(device)
                loss = model(input_ids=window, labels=window, use_cache=False).loss
                for total, grad in zip(fisher, torch.autograd.grad(loss, masks)):
                    total += grad.double().pow(2)
    finally:
        for handle in handles:
            handle.remove()
    return [total.cpu().numpy() for total in fisher]


def _masked_input(mask: torch.Tensor) -> Callable[[nn.Module, tuple], tuple]:
    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (args[0] * mask.to(args[0].dtype),) + tuple(args[1:])

    return hook
