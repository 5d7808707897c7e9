"""Llama and the families shaped like it (Qwen2/3, Mistral, and any model whose decoder layers hold
`mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj` and `mlp.act_fn`): a split GLU MLP."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from spap_core.models.adapters.base import AttentionWeights, MlpWeights, ModelAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class LlamaAdapter(ModelAdapter):
    model_types = ("llama", "qwen2", "qwen3", "mistral")
    families = "Llama, Qwen2/3, Mistral"
    glu = True
    kind = "GLU: act(gate_proj·x) ⊙ up_proj·x → down_proj"
    input_names = ("gate_proj", "up_proj")
    output_name = "down_proj"
    activation_name = "act_fn"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether a model of another type is shaped like Llama (so this adapter can take it)."""
        try:
            layers = cast("PreTrainedModel", model).get_decoder().layers
        except AttributeError:
            return False
        names = (*cls.input_names, cls.output_name, cls.activation_name)
        return all(all(hasattr(getattr(layer, cls.mlp_name, None), name) for name in names) for layer in layers)

    @property
    def stores_down_bias(self) -> bool:
        """Configs with an `mlp_bias` switch (the Llama family) create a down_proj bias when it is on."""
        return hasattr(self.config, "mlp_bias")

    def set_mlp_weights(self, layer: nn.Module, weights: MlpWeights) -> None:
        # `mlp_bias=True` gives gate/up biases too: zero ones keep the checkpoint complete.
        if weights.output_bias is not None:
            weights = MlpWeights(
                inputs=weights.inputs, output=weights.output, output_bias=weights.output_bias,
                input_biases=tuple(torch.zeros(len(w), dtype=w.dtype, device=w.device) if b is None else b
                                   for w, b in zip(weights.inputs, weights.input_biases)))
        super().set_mlp_weights(layer, weights)

    def record_widths(self, config, width: int, output_bias: bool) -> None:
        super().record_widths(config, width, output_bias)
        if output_bias:
            config.mlp_bias = True

    @property
    def stores_attention_bias(self) -> bool:
        """Configs with an `attention_bias` switch (Llama, Qwen3, Gemma 2/3) create an o_proj bias when
        it is on (Qwen2's class never does; Mistral's has no biases)."""
        return hasattr(self.config, "attention_bias")

    def set_attention_weights(self, layer: nn.Module, weights: AttentionWeights) -> None:
        # `attention_bias=True` gives q/k/v biases too: zero ones keep the checkpoint complete.
        if weights.output_bias is not None:
            query_bias, key_bias, value_bias = (
                torch.zeros(len(w), dtype=w.dtype, device=w.device) if b is None else b
                for w, b in zip((weights.query, weights.key, weights.value), weights.biases))
            weights = replace(weights, biases=(query_bias, key_bias, value_bias))
        super().set_attention_weights(layer, weights)

    def record_heads(self, config, heads: int, kv_heads: int, head_dim: int, output_bias: bool) -> None:
        super().record_heads(config, heads, kv_heads, head_dim, output_bias)
        if output_bias:
            config.attention_bias = True
