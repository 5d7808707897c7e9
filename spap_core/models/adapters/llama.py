"""Llama and the families shaped like it (Qwen2/3, Mistral, and any model whose decoder layers hold
`mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj` and `mlp.act_fn`): a split GLU MLP."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from spap_core.models.adapters.base import ModelAdapter
from spap_core.models.adapters.config import text_config
from spap_core.models.adapters.parts import AttentionHeads, AttentionWeights, MlpChannels, MlpWeights

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class LlamaMlpChannels(MlpChannels):
    """Configs with an `mlp_bias` switch (the Llama family) create a down_proj bias when it is on,
    and gate/up biases with it."""

    @property
    def stores_output_bias(self) -> bool:
        return hasattr(self.family.config, "mlp_bias")

    def set_weights(self, layer: nn.Module, weights: MlpWeights) -> None:
        # `mlp_bias=True` gives gate/up biases too: zero ones keep the checkpoint complete.
        if weights.output_bias is not None:
            weights = replace(weights, input_biases=tuple(
                torch.zeros(len(w), dtype=w.dtype, device=w.device) if b is None else b
                for w, b in zip(weights.inputs, weights.input_biases)))
        super().set_weights(layer, weights)

    def record_shape(self, model: nn.Module) -> None:
        super().record_shape(model)
        if self.holds_output_bias(model):
            text_config(model).mlp_bias = True


class LlamaAttentionHeads(AttentionHeads):
    """Configs with an `attention_bias` switch (Llama, Qwen3, Gemma 2/3) create an o_proj bias when
    it is on, and q/k/v biases with it (Qwen2's class never does; Mistral's has no biases)."""

    @property
    def stores_output_bias(self) -> bool:
        return hasattr(self.family.config, "attention_bias")

    def set_weights(self, layer: nn.Module, weights: AttentionWeights) -> None:
        # `attention_bias=True` gives q/k/v biases too: zero ones keep the checkpoint complete.
        if weights.output_bias is not None:
            query_bias, key_bias, value_bias = (
                torch.zeros(len(w), dtype=w.dtype, device=w.device) if b is None else b
                for w, b in zip((weights.query, weights.key, weights.value), weights.biases))
            weights = replace(weights, biases=(query_bias, key_bias, value_bias))
        super().set_weights(layer, weights)

    def record_shape(self, model: nn.Module) -> None:
        super().record_shape(model)
        if self.holds_output_bias(model):
            text_config(model).attention_bias = True


class LlamaAdapter(ModelAdapter):
    model_types = ("llama", "qwen2", "qwen3", "mistral")
    families = "Llama, Qwen2/3, Mistral"
    glu = True
    kind = "GLU: act(gate_proj·x) ⊙ up_proj·x → down_proj"
    input_names = ("gate_proj", "up_proj")
    output_name = "down_proj"
    activation_name = "act_fn"
    mlp_channels_type = LlamaMlpChannels
    attention_heads_type = LlamaAttentionHeads

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether a model of another type is shaped like Llama (so this adapter can take it)."""
        try:
            layers = cast("PreTrainedModel", model).get_decoder().layers
        except AttributeError:
            return False
        names = (*cls.input_names, cls.output_name, cls.activation_name)
        return all(all(hasattr(getattr(layer, cls.mlp_name, None), name) for name in names) for layer in layers)
