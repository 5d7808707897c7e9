"""OPT: a plain ReLU MLP held by the decoder layer itself (`fc1` → `activation_fn` → `fc2`, with
biases unless `enable_bias` is off). Only the pre-norm models: in post-norm OPT (opt-350m,
`do_layer_norm_before=False`) the MLP output is normalised together with the residual stream, so it
cannot be refitted on its own."""

from __future__ import annotations

from torch import nn

from spap_core.errors import SpapInputError
from spap_core.models.adapters.base import ModelAdapter
from spap_core.models.adapters.parts import MlpChannels


class OptMlpChannels(MlpChannels):
    """fc2 holds a bias unless the config's `enable_bias` is off."""

    @property
    def stores_output_bias(self) -> bool:
        return bool(getattr(self.family.config, "enable_bias", True))


class OptAdapter(ModelAdapter):
    model_types = ("opt",)
    families = "OPT"
    glu = False
    kind = "plain: act(fc1·x) → fc2"
    width_key = "ffn_dim"
    mlp_name = ""  # fc1, fc2 and the activation sit on the decoder layer itself
    input_names = ("fc1",)
    output_name = "fc2"
    activation_name = "activation_fn"
    head_refusal = ("its transformers class derives head_dim from hidden_size ÷ num_attention_heads, so a layer "
                    "cannot hold fewer heads of the same size")
    mlp_channels_type = OptMlpChannels

    def validate(self, model: nn.Module) -> None:
        if not getattr(self.config, "do_layer_norm_before", True):
            raise SpapInputError(
                "This OPT model normalises after the residual addition (do_layer_norm_before=False, as "
                "opt-350m does): its MLP output is normalised together with the residual stream, so the layer "
                "problem has no fixed target. Pre-norm OPT models (opt-125m, 1.3b and larger) are supported.")
        super().validate(model)
