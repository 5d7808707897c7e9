"""Phi-3: a GLU whose gate and up projections are fused into one `gate_up_proj` (rows 0..n-1 the
gate, n..2n-1 the up projection, as `chunk(2)` splits them), then `down_proj`; no biases, and no
config switch for one."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from spap_core.models.adapters.base import ModelAdapter
from spap_core.models.adapters.parts import AttentionHeads, AttentionWeights, MlpChannels, MlpWeights
from spap_core.models.adapters.projections import (
    projection_bias,
    projection_like,
    projection_shape,
    projection_weight,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def _fused_bias(biases: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The bias of a fused projection from its parts' biases (None when the first part has none)."""
    if biases[0] is None:
        return None
    present = [bias for bias in biases if bias is not None]
    if len(present) < len(biases):
        raise ValueError("The parts of a fused projection must all have a bias or none.")
    return torch.cat(present)


class Phi3MlpChannels(MlpChannels):
    """Rows 0..n-1 of `gate_up_proj` are the gate, n..2n-1 the up projection (as `chunk(2)` splits them)."""

    def weights(self, layer: nn.Module) -> MlpWeights:
        fused, down = self.input_projections(layer)[0], self.output_projection(layer)
        fused_bias = projection_bias(fused)
        return MlpWeights(inputs=tuple(projection_weight(fused).chunk(2)),
                          input_biases=(None, None) if fused_bias is None else tuple(fused_bias.chunk(2)),
                          output=projection_weight(down), output_bias=projection_bias(down))

    def set_weights(self, layer: nn.Module, weights: MlpWeights) -> None:
        fused, down = self.input_projections(layer)[0], self.output_projection(layer)
        setattr(self.parent(layer), self.family.input_names[0], projection_like(fused, torch.cat(weights.inputs),
                                                                                 _fused_bias(weights.input_biases)))
        self.set_output_projection(layer, projection_like(down, weights.output, weights.output_bias))

    def activations(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.input_projections(layer)[0](x).chunk(2, dim=-1)
        return up * self.activation(layer)(gate)


class Phi3AttentionHeads(AttentionHeads):
    """`qkv_proj` holds the query rows, then the key rows, then the value rows. The attention
    splits them by `config.num_attention_heads` at every forward pass, so a layer with fewer heads
    holds a config of its own while the walk runs (`set_weights`), and the model's config again
    once it records the pruned counts (`record_shape`)."""

    def counts(self, layer: nn.Module) -> tuple[int, int]:
        # num_key_value_heads: a plain attribute, which torch's typing of nn.Module attributes cannot see
        return (projection_shape(self.output_projection(layer))[1] // self.unit_columns(layer),
                cast(int, self.parent(layer).num_key_value_heads))

    def weights(self, layer: nn.Module) -> AttentionWeights:
        fused_projection = getattr(self.parent(layer), self.family.attention_input_names[0])
        output = self.output_projection(layer)
        heads, kv_heads = self.counts(layer)
        head_dim = self.unit_columns(layer)
        fused, fused_bias = projection_weight(fused_projection), projection_bias(fused_projection)
        sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        query, key, value = fused.split(sizes)
        query_bias, key_bias, value_bias = (None, None, None) if fused_bias is None else fused_bias.split(sizes)
        return AttentionWeights(query=query, key=key, value=value, output=projection_weight(output),
                                biases=(query_bias, key_bias, value_bias), output_bias=projection_bias(output),
                                head_dim=head_dim)

    def set_weights(self, layer: nn.Module, weights: AttentionWeights) -> None:
        attention, fused_name = self.parent(layer), self.family.attention_input_names[0]
        setattr(attention, fused_name, projection_like(getattr(attention, fused_name),
                                                       torch.cat([weights.query, weights.key, weights.value]),
                                                       _fused_bias(weights.biases)))
        self.set_output_projection(layer, projection_like(self.output_projection(layer), weights.output,
                                                          weights.output_bias))
        attention.config = copy.copy(attention.config)
        cast("PretrainedConfig", attention.config).num_attention_heads = weights.heads
        # torch types Module.__setattr__ as taking tensors and modules only; any attribute can be set
        attention.num_key_value_heads = weights.kv_heads  # type: ignore[assignment]
        attention.num_key_value_groups = weights.heads // weights.kv_heads  # type: ignore[assignment]

    def record_shape(self, model: nn.Module) -> None:
        super().record_shape(model)
        for layer in self.family.decoder_layers(model):
            self.parent(layer).config = model.config


class Phi3Adapter(ModelAdapter):
    model_types = ("phi3",)
    families = "Phi-3"
    glu = True
    kind = "fused GLU: gate_up_proj (act(gate) ⊙ up) → down_proj"
    input_names = ("gate_up_proj",)
    output_name = "down_proj"
    activation_name = "activation_fn"
    attention_input_names = ("qkv_proj",)  # fused: the query rows, then the key rows, then the value rows
    mlp_channels_type = Phi3MlpChannels
    attention_heads_type = Phi3AttentionHeads
