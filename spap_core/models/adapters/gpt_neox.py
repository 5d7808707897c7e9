"""GPT-NeoX (Pythia): `mlp.dense_h_to_4h` → `act` → `mlp.dense_4h_to_h`, with biases. With the
parallel residual (Pythia's default) attention and MLP both read the layer input and their outputs
are added to it; either way the MLP output enters the residual stream unchanged."""

from __future__ import annotations

from spap_core.models.adapters.base import ModelAdapter


class GptNeoXAdapter(ModelAdapter):
    model_types = ("gpt_neox",)
    families = "GPT-NeoX/Pythia"
    glu = False
    kind = "plain: act(dense_h_to_4h·x) → dense_4h_to_h"
    input_names = ("dense_h_to_4h",)
    output_name = "dense_4h_to_h"
    activation_name = "act"
    head_refusal = ("its transformers class derives head_dim from hidden_size ÷ num_attention_heads, so a layer "
                    "cannot hold fewer heads of the same size")
    attention_name = "attention"
    native_output_bias = True
