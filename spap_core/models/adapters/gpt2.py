"""GPT-2: `transformer.h[i].mlp` with `c_fc` → `act` → `c_proj`, both transformers' Conv1D (weights
stored in × out, always with a bias); the width is the config's `n_inner`."""

from __future__ import annotations

from typing import cast

from torch import nn

from spap_core.models.adapters.base import ModelAdapter


class Gpt2Adapter(ModelAdapter):
    model_types = ("gpt2",)
    families = "GPT-2"
    glu = False
    kind = "plain: act(c_fc·x) → c_proj"
    width_key = "n_inner"
    input_names = ("c_fc",)
    output_name = "c_proj"
    activation_name = "act"
    head_refusal = ("its transformers class derives head_dim from hidden_size ÷ num_attention_heads, so a layer "
                    "cannot hold fewer heads of the same size")
    attention_name = "attn"
    native_output_bias = True

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return cast(nn.ModuleList, self.decoder(model).h)
