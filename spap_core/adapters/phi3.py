"""Phi-3: a GLU whose gate and up projections are fused into one `gate_up_proj` (rows 0..n-1 the
gate, n..2n-1 the up projection, as `chunk(2)` splits them), then `down_proj`; no biases, and no
config switch for one."""

from __future__ import annotations

import torch
from torch import nn

from spap_core.adapters.base import MlpWeights, ModelAdapter, projection_bias, projection_like, projection_weight


class Phi3Adapter(ModelAdapter):
    model_types = ("phi3",)
    families = "Phi-3"
    glu = True
    kind = "fused GLU: gate_up_proj (act(gate) ⊙ up) → down_proj"
    input_names = ("gate_up_proj",)
    output_name = "down_proj"
    activation_name = "activation_fn"
    head_refusal = ("its attention reads the head count from the model's shared config at every forward pass, so "
                    "one layer cannot hold fewer heads while the walk still runs the others at full width")

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

    def intermediate(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gate, up = layer.mlp.gate_up_proj(x).chunk(2, dim=-1)
        return up * layer.mlp.activation_fn(gate)
