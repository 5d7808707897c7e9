"""Phi (phi-1, 1.5, 2): `mlp.fc1` → `activation_fn` → `mlp.fc2` with biases; attention and MLP run
in parallel on the same normalised input and both outputs are added to the residual stream."""

from __future__ import annotations

from torch import nn

from spap_core.adapters.base import Activation, ModelAdapter


class PhiAdapter(ModelAdapter):
    model_types = ("phi",)
    families = "Phi"
    glu = False
    kind = "plain: act(fc1·x) → fc2"
    input_names = ("fc1",)
    output_name = "fc2"

    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def activation(self, layer: nn.Module) -> Activation:
        return layer.mlp.activation_fn

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    @property
    def stores_down_bias(self) -> bool:
        return True
