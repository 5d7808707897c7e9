"""The prunable-part abstraction: in every family each part's kept units give the output of the
masked original, and a new kind of unit (here pairs of MLP channels) is one part class that the
walk prunes through the same sequence as channels and heads."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer
from family_models import EVALUATION, FAMILIES, family_model, logits
from torch import nn

from spap_core.methods.registry import PruneSettings
from spap_core.models.adapters import MlpWeights, PrunablePart, model_adapter
from spap_core.models.adapters.llama import LlamaAdapter, LlamaMlpChannels
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.walk import prune_model

CALIBRATION = torch.randint(3, 200, (4, 32), generator=torch.Generator().manual_seed(0))


def _dropped_units(part: PrunablePart, layer: nn.Module) -> list[int]:
    """Units whose removal the layer can hold: for heads a whole KV group (every group then serves
    as many heads), for other units a few scattered ones."""
    counts = getattr(part, "counts", None)
    if counts is None:
        return [1, 5, 6]
    heads, kv_heads = counts(layer)
    group = heads // kv_heads
    return list(range(heads - group, heads)) if kv_heads > 1 else [heads - 1]


def _columns(part: PrunablePart, layer: nn.Module, units: list[int]) -> torch.Tensor:
    size = part.unit_columns(layer)
    return torch.tensor([unit * size + offset for unit in units for offset in range(size)])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_part_keeps_units_as_the_masked_original_computes_them(model_type):
    """Taking the kept units (smaller modules) gives the logits of the original model whose output
    projection has the dropped units' columns zeroed, for every part of every family."""
    for part_index in range(len(model_adapter(family_model(model_type)).parts)):
        masked, shrunk = family_model(model_type), family_model(model_type)
        masked_part = model_adapter(masked).parts[part_index]
        shrunk_family = model_adapter(shrunk)
        shrunk_part = shrunk_family.parts[part_index]
        for masked_layer, shrunk_layer in zip(model_adapter(masked).decoder_layers(masked),
                                              shrunk_family.decoder_layers(shrunk)):
            dropped = _dropped_units(masked_part, masked_layer)
            weights = masked_part.weights(masked_layer)
            output = weights.output.detach().clone()
            output[:, _columns(masked_part, masked_layer, dropped)] = 0
            width = shrunk_part.width(shrunk_layer)
            kept = torch.tensor([unit for unit in range(width) if unit not in dropped])
            with torch.no_grad():
                masked_part.set_weights(masked_layer, replace(weights, output=output))
                shrunk_part.set_weights(shrunk_layer, shrunk_part.weights(shrunk_layer).kept(kept))
            assert shrunk_part.width(shrunk_layer) == width - len(dropped), (model_type, type(shrunk_part).__name__)
        torch.testing.assert_close(logits(shrunk, EVALUATION), logits(masked, EVALUATION), rtol=1e-4, atol=1e-5,
                                   msg=f"{model_type}: {type(shrunk_part).__name__}")


@dataclass(frozen=True)
class _PairWeights(MlpWeights):
    """MLP weights whose units are pairs of channels (2k, 2k+1)."""

    def kept(self, keep: torch.Tensor) -> _PairWeights:
        channels = (keep.reshape(-1, 1) * 2 + torch.arange(2)).flatten()
        kept = super().kept(channels)
        return _PairWeights(kept.inputs, kept.input_biases, kept.output, kept.output_bias)


class _ChannelPairs(LlamaMlpChannels):
    """A third kind of unit: two neighbouring MLP channels, pruned together."""

    def unit_columns(self, layer: nn.Module) -> int:
        return 2

    def weights(self, layer: nn.Module) -> _PairWeights:
        weights = super().weights(layer)
        return _PairWeights(weights.inputs, weights.input_biases, weights.output, weights.output_bias)


class _PairedLlama(LlamaAdapter):
    mlp_channels_type = _ChannelPairs


@pytest.mark.parametrize("method", ["magnitude", "flap"])
def test_a_new_kind_of_unit_is_one_part_class_the_walk_prunes(method):
    """With the pair part in place of the MLP channels, the walk captures, decides and shrinks by
    pairs: λ counts pairs, every layer keeps whole pairs, and its record is over pairs."""
    model = tiny_llama()
    loaded = LoadedModel(model=model, tokenizer=tiny_tokenizer(), source="tiny", description="paired",
                         family=_PairedLlama(model))
    result = prune_model(loaded, CALIBRATION, PruneSettings(method=method, sparsity=0.25))
    family = loaded.family
    pairs = 128 // 2
    for record, layer in zip(result.layers, family.decoder_layers(result.model)):
        assert record.width == pairs and len(record.keep) == pairs - 16
        kept_channels = (torch.as_tensor(record.keep).reshape(-1, 1) * 2 + torch.arange(2)).flatten()
        assert family.mlp_channels.width(layer) == pairs - 16
        assert family.mlp_channels.output_projection(layer).in_features == len(kept_channels) == 96
        dense_layer = family.decoder_layers(model)[result.layers.index(record)]
        torch.testing.assert_close(family.mlp_channels.weights(layer).inputs[0],
                                   family.mlp_channels.weights(dense_layer).inputs[0][kept_channels])
    assert torch.isfinite(logits(result.model, EVALUATION)).all()
