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
from spap_core.families import GluFamily, glu_family
from spap_core.methods.problem import LayerDecision


OFFLOADED_SHARD_SIZE = "1GB"
LAYER_WIDTHS_KEY = "spap_layer_widths"  # config entry of a model with per-layer MLP widths


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
    the widths (per-layer ones under `spap_layer_widths`, with the widest as intermediate_size),
    and `mlp_bias` where a method (FLAP, SPAP's bias compensation) added a down_proj bias.
    Reads module attributes only, so it works when the layers' weights are offloaded."""
    mlps = [family.mlp(layer) for layer in family.decoder_layers(model)]
    widths = [mlp.down_proj.in_features for mlp in mlps]
    model.config.intermediate_size = max(widths)  # one int: transformers' configs refuse a list
    if len(set(widths)) > 1:
        setattr(model.config, LAYER_WIDTHS_KEY, widths)
    elif hasattr(model.config, LAYER_WIDTHS_KEY):
        delattr(model.config, LAYER_WIDTHS_KEY)
    if any(mlp.down_proj.bias is not None for mlp in mlps):
        if not family.stores_down_bias:
            raise SpapInputError(
                f"Model type '{family.model_type}' cannot store a down_proj bias in transformers; "
                "turn bias compensation off (--no-bias) or use a method without it."
            )
        model.config.mlp_bias = True


def save_pruned(model: PreTrainedModel, tokenizer, directory: str | Path) -> Path:
    """save_pretrained as safetensors. Per-layer widths (a global allocation) are saved padded with
    zero channels to the widest layer, because vanilla transformers classes take one
    intermediate_size: a zero gate/up row and a zero down_proj column add exactly nothing, so vanilla
    `from_pretrained` gives the same outputs, and `spap_core.models.load_model` removes the padding
    again (the widths are kept in the config under `spap_layer_widths`)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    widths = getattr(model.config, LAYER_WIDTHS_KEY, None)
    if widths is not None:
        if is_dispatched(model):
            raise SpapInputError("A model with per-layer MLP widths is saved padded from memory; an offloaded one "
                                 "cannot be (prune it with uniform allocation, or without --device-map).")
        _save_padded(model, glu_family(model), widths, path)
    elif is_dispatched(model):
        # Offloaded weights are read back shard by shard: small shards keep that within memory
        # (the warning that says so assumes transformers' 50 GB default).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            model.save_pretrained(path, safe_serialization=True, max_shard_size=OFFLOADED_SHARD_SIZE)
    else:
        model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _save_padded(model: PreTrainedModel, family: GluFamily, widths: list[int], path: Path) -> None:
    width = max(widths)
    names = {id(module): name for name, module in model.named_modules()}
    state = dict(model.state_dict())
    for mlp in (family.mlp(layer) for layer in family.decoder_layers(model)):
        prefix = names[id(mlp)]
        missing = width - mlp.down_proj.in_features
        for projection in ("gate_proj", "up_proj"):
            for kind in ("weight", "bias"):
                key = f"{prefix}.{projection}.{kind}"
                if key in state:  # rows of the intermediate channels
                    state[key] = torch.nn.functional.pad(state[key], (0, 0) * (state[key].dim() - 1) + (0, missing))
        state[f"{prefix}.down_proj.weight"] = torch.nn.functional.pad(state[f"{prefix}.down_proj.weight"], (0, missing))
    model.save_pretrained(path, safe_serialization=True, state_dict=state)  # the config says max and widths


def remove_padding(model: PreTrainedModel, family: GluFamily) -> None:
    """Shrink every MLP of a model saved by `save_pruned` with per-layer widths back to its width
    (its padding channels are the last ones, and zero); the config keeps the widths, so a save
    pads again."""
    widths = getattr(model.config, LAYER_WIDTHS_KEY, None)
    if widths is None:
        return
    if is_dispatched(model):
        raise SpapInputError("This model was saved with per-layer MLP widths (padded); load it without --device-map.")
    for mlp, width in zip((family.mlp(layer) for layer in family.decoder_layers(model)), widths):
        keep = torch.arange(width, device=mlp.down_proj.weight.device)
        shrink_mlp(mlp, LayerDecision(keep=keep, down_weight=mlp.down_proj.weight[:, keep]))
