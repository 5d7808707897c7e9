"""Physical pruning: replace each GLU MLP's Linear layers by smaller ones, so the pruned model
really holds fewer parameters and does fewer FLOPs, and saves in a format vanilla transformers loads."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import skip_init
from transformers import PreTrainedModel

from spap_core.errors import SpapInputError
from spap_core.offload import is_dispatched
from spap_core.families import GluFamily
from spap_core.methods.problem import LayerDecision


OFFLOADED_SHARD_SIZE = "1GB"


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = skip_init(nn.Linear, in_features, out_features, bias=bias is not None,  # no random init to overwrite
                      device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _kept_bias(projection: nn.Linear, keep: torch.Tensor, needed: bool) -> torch.Tensor | None:
    if projection.bias is not None:
        return projection.bias[keep]
    if not needed:
        return None
    return torch.zeros(len(keep), dtype=projection.weight.dtype, device=projection.weight.device)


def shrink_mlp(mlp: nn.Module, decision: LayerDecision) -> None:
    """Keep only decision.keep channels: rows of gate/up, columns of down (with new weights)."""
    keep = decision.keep.to(mlp.down_proj.weight.device)
    with torch.no_grad():
        gate = decision.gate_weight if decision.gate_weight is not None else mlp.gate_proj.weight[keep]
        up = decision.up_weight if decision.up_weight is not None else mlp.up_proj.weight[keep]
        down_bias = decision.down_bias
        if mlp.down_proj.bias is not None:
            down_bias = mlp.down_proj.bias + (0 if down_bias is None else down_bias.to(mlp.down_proj.bias))
        # A down_proj bias is stored through `mlp_bias=True`, with which vanilla Llama also
        # creates gate/up biases: zero ones keep the checkpoint complete.
        gate_bias = _kept_bias(mlp.gate_proj, keep, down_bias is not None)
        up_bias = _kept_bias(mlp.up_proj, keep, down_bias is not None)
        mlp.gate_proj = _linear(gate, gate_bias, mlp.gate_proj)
        mlp.up_proj = _linear(up, up_bias, mlp.up_proj)
        mlp.down_proj = _linear(decision.down_weight, down_bias, mlp.down_proj)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def finalize_config(model: PreTrainedModel, family: GluFamily) -> None:
    """Make the config agree with the shrunk modules, so save_pretrained/from_pretrained round-trip:
    the widths, and `mlp_bias` where a method (FLAP, SPAP's bias compensation) added a down_proj bias.
    Reads module attributes only, so it works when the layers' weights are offloaded."""
    mlps = [family.mlp(layer) for layer in family.decoder_layers(model)]
    widths = {mlp.down_proj.in_features for mlp in mlps}
    if len(widths) == 1:
        model.config.intermediate_size = widths.pop()
    else:
        model.config.intermediate_size = [mlp.down_proj.in_features for mlp in mlps]
    if any(mlp.down_proj.bias is not None for mlp in mlps):
        if not family.stores_down_bias:
            raise SpapInputError(
                f"Model type '{family.model_type}' cannot store a down_proj bias in transformers; "
                "turn bias compensation off (--no-bias) or use a method without it."
            )
        model.config.mlp_bias = True


def save_pruned(model: PreTrainedModel, tokenizer, directory: str | Path) -> Path:
    """save_pretrained as safetensors; refuses per-layer widths, which vanilla classes cannot load."""
    if isinstance(model.config.intermediate_size, list):
        raise SpapInputError(
            "Layers have different MLP widths; vanilla transformers classes need one intermediate_size. "
            "Use uniform sparsity to save a loadable model."
        )
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if is_dispatched(model):
        # Offloaded weights are read back shard by shard: small shards keep that within memory
        # (the warning that says so assumes transformers' 50 GB default).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            model.save_pretrained(path, safe_serialization=True, max_shard_size=OFFLOADED_SHARD_SIZE)
    else:
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
