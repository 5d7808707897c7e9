"""Physical pruning: replace each pruned part's projections by smaller ones, so the pruned model really
holds fewer parameters and does fewer FLOPs, and saves in a format vanilla transformers loads. The
family's adapter says which modules those are and how their weights are laid out."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
from transformers import PreTrainedModel

from spap_core.errors import SpapInputError
from spap_core.models.adapters import MlpWeights, ModelAdapter, PrunablePart, model_adapter
from spap_core.models.offload import is_dispatched
from spap_core.problem.objective import LayerDecision

OFFLOADED_SHARD_SIZE = "1GB"
LAYER_WIDTHS_KEY = "spap_layer_widths"  # config entry of a model with per-layer MLP widths


def shrink_part(part: PrunablePart, layer: torch.nn.Module, units: torch.Tensor, decision: LayerDecision) -> None:
    """Keep only the units `units` of `part` (sorted): whatever rows of its other projections
    produce them (or the recovery's new input rows, MLP channels only), the decision's output
    columns, and the output bias: the family's own (a native bias, OPT's fc2 say) plus what the
    method adds to it."""
    dense = part.weights(layer)
    kept = dense.kept(units)
    if decision.input_weights is not None:
        kept = replace(cast(MlpWeights, kept), inputs=tuple(decision.input_weights))
    bias = decision.output_bias
    if dense.output_bias is not None:
        bias = dense.output_bias + (0 if bias is None else bias.to(dense.output_bias))
    with torch.no_grad():
        part.set_weights(layer, replace(kept, output=decision.output_weight.to(kept.output), output_bias=bias))


def finalize_config(model: PreTrainedModel, family: ModelAdapter) -> None:
    """Make the config agree with the shrunk modules, so save_pretrained/from_pretrained round-trip:
    the widths (per-layer ones under `spap_layer_widths`, with the widest as the family's width
    field), and the output-bias switch where a method (FLAP, SPAP's bias compensation) added a bias
    the class would not otherwise create. Reads module shapes only, so it works when the layers'
    weights are offloaded."""
    widths = [family.mlp_channels.width(layer) for layer in family.decoder_layers(model)]
    if len(set(widths)) > 1:
        setattr(model.config, LAYER_WIDTHS_KEY, widths)  # the family's width field takes one int: the widest
    elif hasattr(model.config, LAYER_WIDTHS_KEY):
        delattr(model.config, LAYER_WIDTHS_KEY)
    for part in family.parts:
        part.record_shape(model)


def save_pruned(model: PreTrainedModel, tokenizer, directory: str | Path) -> Path:
    """save_pretrained as safetensors. Per-layer widths (a global allocation) are saved padded with
    zero channels to the widest layer, because vanilla transformers classes take one width: a zero
    input row and a zero output column add exactly nothing, so vanilla `from_pretrained` gives the
    same outputs, and `spap_core.models.loading.load_model` removes the padding again (the widths are kept
    in the config under `spap_layer_widths`)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    widths = getattr(model.config, LAYER_WIDTHS_KEY, None)
    if widths is not None:
        if is_dispatched(model):
            raise SpapInputError("A model with per-layer MLP widths is saved padded from memory; an offloaded one "
                                 "cannot be (prune it with uniform allocation, or without --device-map).")
        _save_padded(model, model_adapter(model), path)
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


def _save_padded(model: PreTrainedModel, family: ModelAdapter, path: Path) -> None:
    """Pad every MLP to the widest, save, and put the layers' own widths back (the padded copies
    are zeros beside weights that are kept as they are)."""
    layers = family.decoder_layers(model)
    own = [family.mlp_channels.weights(layer) for layer in layers]
    width = max(weights.width for weights in own)
    try:
        for layer, weights in zip(layers, own):
            family.mlp_channels.set_weights(layer, weights.padded(width))
        model.save_pretrained(path, safe_serialization=True)  # the config says the widest and the widths
    finally:
        for layer, weights in zip(layers, own):
            family.mlp_channels.set_weights(layer, weights)


def remove_padding(model: PreTrainedModel, family: ModelAdapter) -> None:
    """Shrink every MLP of a model saved by `save_pruned` with per-layer widths back to its width
    (its padding channels are the last ones, and zero); the config keeps the widths, so a save
    pads again."""
    widths = getattr(model.config, LAYER_WIDTHS_KEY, None)
    if widths is None:
        return
    if is_dispatched(model):
        raise SpapInputError("This model was saved with per-layer MLP widths (padded); load it without --device-map.")
    for layer, width in zip(family.decoder_layers(model), widths):
        keep = torch.arange(width)
        family.mlp_channels.set_weights(layer, family.mlp_channels.weights(layer).kept(keep))


def load_pruned(directory: str | Path, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    """A model that `save_pruned` wrote, read back with plain transformers (safetensors only, no
    remote code) on `device` in `dtype`, with any per-layer widths unpadded: for the tool's own
    files (a Ray worker's result, weights a session put on disk), not for a path a user names,
    which goes through spap_core.models.loading.load_model and its checks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    remove_padding(model, model_adapter(model))
    # transformers wraps PreTrainedModel.to with functools.wraps, which mypy leaves unbound (self unfilled)
    return model.to(device).eval()  # type: ignore[arg-type]
