"""Where each model family keeps its GLU MLP, so the rest of the code never branches on model_type.

All supported families (Llama, Qwen2/3, Mistral, Gemma 1-3) expose ``model.model.layers[i].mlp``
with ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn``. They differ in how the MLP output
re-enters the residual stream: Gemma 2/3 normalise it first (``post_feedforward_layernorm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from spap_core.errors import SpapInputError

GLU_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class GluFamily:
    """How to reach and read the GLU MLPs of one loaded model."""

    model_type: str
    # Whether the family's vanilla transformers class can store a down_proj bias (configs with an
    # `mlp_bias` switch: the Llama family). Elsewhere a method that adds one runs its no-bias variant.
    stores_down_bias: bool = False

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_decoder().layers

    def mlp(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def mlp_output_is_residual(self, layer: nn.Module) -> bool:
        return getattr(layer, "post_feedforward_layernorm", None) is None

    def mlp_output_to_residual(self, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map applied to the MLP output before it is added to the residual stream."""
        norm = getattr(layer, "post_feedforward_layernorm", None)
        return norm if norm is not None else (lambda y: y)


def glu_family(model: nn.Module) -> GluFamily:
    """Check that every decoder layer has a GLU MLP and return the family adapter.

    Raises SpapInputError naming exactly what is missing, so a non-GLU model (GPT-2, OPT, Phi-3's
    fused gate_up_proj) is refused before any work is done.
    """
    model_type = getattr(model.config, "model_type", "unknown")
    try:
        layers = model.get_decoder().layers
    except AttributeError as exc:
        raise SpapInputError(
            f"Model type '{model_type}' has no decoder layer list (model.model.layers); "
            "SPAP needs a decoder-only causal LM with a GLU MLP (Llama, Qwen2, Mistral, Gemma)."
        ) from exc
    for index, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is None:
            raise SpapInputError(
                f"Model type '{model_type}' is not supported: its decoder layers ({type(layer).__name__}) have no "
                "GLU MLP module ('mlp' with gate_proj/up_proj/down_proj). SPAP Explorer prunes the MLP channels of "
                "Llama, Qwen2/3, Mistral and Gemma models.")
        missing = [name for name in (*GLU_PROJECTIONS, "act_fn") if not hasattr(mlp, name)]
        if missing:
            raise SpapInputError(
                f"Model type '{model_type}' is not a GLU model: layer {index}'s MLP "
                f"({type(mlp).__name__}) lacks {', '.join(missing)}. SPAP prunes the intermediate "
                "channels of gate_proj/up_proj/down_proj MLPs (Llama, Qwen2, Mistral, Gemma)."
            )
        not_linear = [name for name in GLU_PROJECTIONS if not isinstance(getattr(mlp, name), nn.Linear)]
        if not_linear:
            raise SpapInputError(
                f"Model type '{model_type}': {', '.join(not_linear)} in layer {index} are not plain "
                "Linear layers (quantized?); load the model in floating point."
            )
        if mlp.down_proj.in_features < 2:
            raise SpapInputError(
                f"Model type '{model_type}': layer {index}'s MLP has {mlp.down_proj.in_features} intermediate "
                "channel; structured pruning needs at least 2 (one to remove, one to keep).")
    return GluFamily(model_type=model_type, stores_down_bias=hasattr(model.config, "mlp_bias"))
