"""The modules a prunable part's projections are made of (torch's Linear, transformers' Conv1D),
read and rebuilt in one orientation: weights out × in, whatever the module stores."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from spap_core.models.offload import real_tensor

PROJECTIONS = (nn.Linear, Conv1D)


def is_projection(module: object) -> bool:
    return isinstance(module, PROJECTIONS)


def projection_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or a Conv1D."""
    if isinstance(module, Conv1D):
        return module.nf, module.nx
    linear = cast(nn.Linear, module)  # the other kind of projection
    return linear.out_features, linear.in_features


def projection_weight(module: nn.Module) -> torch.Tensor:
    """The weight as out × in (a Conv1D stores it in × out), read from the offload hook when the
    module's own weight is on the meta device."""
    weight = real_tensor(module, "weight")
    return weight.T if isinstance(module, Conv1D) else weight


def projection_bias(module: nn.Module) -> torch.Tensor | None:
    return None if module.bias is None else real_tensor(module, "bias")


def projection_like(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module of `module`'s kind, device and dtype holding `weight` (out × in) and `bias`; a
    Conv1D always has a bias (zero when none is given), as transformers' GPT-2 expects."""
    out_features, in_features = weight.shape
    like = real_tensor(module, "weight")
    device, dtype = like.device, like.dtype
    with torch.no_grad():
        if isinstance(module, Conv1D):
            layer = Conv1D(out_features, in_features).to(device=device, dtype=dtype)
            layer.weight.copy_(weight.T)
            layer.bias.copy_(torch.zeros(out_features, device=device, dtype=dtype) if bias is None else bias)
            return layer
        layer = torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias is not None, device=device,
                                         dtype=dtype)
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer
