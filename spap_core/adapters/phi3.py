"""Phi-3: a GLU whose gate and up projections are fused into one `gate_up_proj` (rows 0..n-1 the
gate, n..2n-1 the up projection, as `chunk(2)` splits them), then `down_proj`; no biases, and no
config switch for one."""

from __future__ import annotations

import copy

import torch
from torch import nn

from spap_core.adapters.base import (
    AttentionWeights,
    MlpWeights,
    ModelAdapter,
    projection_bias,
    projection_like,
    projection_weight,
)


class Phi3Adapter(ModelAdapter):
    model_types = ("phi3",)
    families = "Phi-3"
    glu = True
    kind = "fused GLU: gate_up_proj (act(gate) ⊙ up) → down_proj"
    input_names = ("gate_up_proj",)
    output_name = "down_proj"
    activation_name = "activation_fn"
    attention_input_names = ("qkv_proj",)  # fused: the query rows, then the key rows, then the value rows

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        fused, down = layer.mlp.gate_up_proj, layer.mlp.down_proj
        fused_bias = projection_bias(fused)
        return MlpWeights(inputs=tuple(projection_weight(fused).chunk(2)),
                          input_biases=(None, None) if fused_bias is None else tuple(fused_bias.chunk(2)),
                          output=projection_weight(down), output_bias=projection_bias(down))

    def set_mlp_weights(self, layer: nn.Module, weights: MlpWeights) -> None:
        mlp = layer.mlp
        biases = None if weights.input_biases[0] is None else torch.cat(weights.input_biases)
        mlp.gate_up_proj = projection_like(mlp.gate_up_proj, torch.cat(weights.inputs), biases)
        mlp.down_proj = projection_like(mlp.down_proj, weights.output, weights.output_bias)

    def head_counts(self, layer: nn.Module) -> tuple[int, int]:
        attention = self.attention(layer)
        return attention.o_proj.in_features // attention.head_dim, attention.num_key_value_heads

    def attention_weights(self, layer: nn.Module) -> AttentionWeights:
        attention = self.attention(layer)
        heads, kv_heads = self.head_counts(layer)
        head_dim = attention.head_dim
        fused, fused_bias = projection_weight(attention.qkv_proj), projection_bias(attention.qkv_proj)
        sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        biases = (None, None, None) if fused_bias is None else tuple(fused_bias.split(sizes))
        return AttentionWeights(*fused.split(sizes), output=projection_weight(attention.o_proj), biases=biases,
                                output_bias=projection_bias(attention.o_proj), head_dim=head_dim)

    def set_attention_weights(self, layer: nn.Module, weights: AttentionWeights) -> None:
        """Phi-3's attention splits the fused rows by `config.num_attention_heads` at every forward
        pass, so a layer with fewer heads holds a config of its own (the same object again once
        every layer is pruned: share_config)."""
        attention = self.attention(layer)
        biases = None if weights.biases[0] is None else torch.cat(weights.biases)
        attention.qkv_proj = projection_like(attention.qkv_proj, torch.cat([weights.query, weights.key, weights.value]),
                                             biases)
        attention.o_proj = projection_like(attention.o_proj, weights.output, weights.output_bias)
        attention.config = copy.copy(attention.config)
        attention.config.num_attention_heads = weights.heads
        attention.num_key_value_heads = weights.kv_heads
        attention.num_key_value_groups = weights.heads // weights.kv_heads

    def share_config(self, model: nn.Module) -> None:
        for layer in self.decoder_layers(model):
            self.attention(layer).config = model.config

    def intermediate(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gate, up = layer.mlp.gate_up_proj(x).chunk(2, dim=-1)
        return up * layer.mlp.activation_fn(gate)
