"""Gemma 1–3: Llama's split GLU (GeLU-tanh gate); Gemma 2 and 3 normalise the MLP output
(`post_feedforward_layernorm`) before it is added to the residual stream."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spap_core.models.adapters.llama import LlamaAdapter


class GemmaAdapter(LlamaAdapter):
    model_types = ("gemma", "gemma2", "gemma3", "gemma3_text")
    families = "Gemma 1–3"

    def mlp_output_to_residual(self, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        norm = getattr(layer, "post_feedforward_layernorm", None)
        return norm if norm is not None else super().mlp_output_to_residual(layer)

    def mlp_output_is_residual(self, layer: nn.Module) -> bool:
        return getattr(layer, "post_feedforward_layernorm", None) is None
