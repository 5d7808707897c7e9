"""Phi (phi-1, 1.5, 2): `mlp.fc1` → `activation_fn` → `mlp.fc2` with biases; attention and MLP run
in parallel on the same normalised input and both outputs are added to the residual stream."""

from __future__ import annotations

from spap_core.models.adapters.base import ModelAdapter


class PhiAdapter(ModelAdapter):
    model_types = ("phi",)
    families = "Phi"
    glu = False
    kind = "plain: act(fc1·x) → fc2"
    input_names = ("fc1",)
    output_name = "fc2"
    activation_name = "activation_fn"
    native_output_bias = True
    attention_output_name = "dense"
    native_attention_bias = True
