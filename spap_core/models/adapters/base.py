"""What the pipeline needs to know of a model family, asked of one adapter object (in the manner of
SliceGPT's ModelAdapter): where the decoder layers, the MLP and the attention are, the names of their
projections, and the family's prunable parts (`parts`: its attention heads and MLP channels, see
spap_core.models.adapters.parts), which read and replace those projections. Nothing outside the
adapters names a projection.

Every MLP the field prunes computes Z = act(W_in x + b_in) (plain: OPT, GPT-2, GPT-NeoX, Phi) or
Z = act(W_gate x + b_gate) ⊙ (W_up x + b_up) (GLU: Llama, Qwen, Mistral, Gemma, Phi-3), then
W_out Z + b_out; every attention concatenates its heads' outputs before its output projection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.models.adapters.config import text_config
from spap_core.models.adapters.parts import AttentionHeads, MlpChannels, PrunablePart
from spap_core.models.adapters.projections import is_projection

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ModelAdapter:
    """One model family. Subclasses name the modules; its parts (`mlp_channels`, `attention_heads`)
    read and replace the weights by those names. `model_types` are the transformers model types it
    takes (the Llama adapter also takes any model shaped like Llama). A family whose modules sit
    otherwise than by name (Phi-3's fused projections) or whose config switches an output bias on
    (Llama's) names its own part classes in `mlp_channels_type` and `attention_heads_type`."""

    model_types: ClassVar[tuple[str, ...]] = ()
    families: ClassVar[str]  # how messages name the families it takes: "Llama, Qwen2/3, Mistral"
    glu: ClassVar[bool]
    kind: ClassVar[str]  # how the MLP is described on screen: "GLU (gate_proj ⊙ up_proj → down_proj)"
    width_key: ClassVar[str] = "intermediate_size"  # the config field that holds the MLP width
    # Where the modules are: the layer's attribute holding the MLP ("" = the layer itself, as in
    # OPT), the MLP's projections and activation, and the layer's attention.
    mlp_name: ClassVar[str] = "mlp"
    input_names: ClassVar[tuple[str, ...]]  # the input projections, in order (GLU: gate, then up)
    output_name: ClassVar[str]
    activation_name: ClassVar[str]
    attention_name: ClassVar[str] = "self_attn"
    # Whether every output projection of the family has a bias of its own (OPT, GPT-2, GPT-NeoX,
    # Phi): a method's bias compensation then goes into it.
    native_output_bias: ClassVar[bool] = False
    # The attention's projections, by name in the attention module; `head_refusal` says why the
    # family's heads cannot be pruned (None: they can).
    attention_input_names: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")
    attention_output_name: ClassVar[str] = "o_proj"
    native_attention_bias: ClassVar[bool] = False  # the attention output projection has a bias of its own
    head_refusal: ClassVar[str | None] = None
    mlp_channels_type: ClassVar[type[MlpChannels]] = MlpChannels
    attention_heads_type: ClassVar[type[AttentionHeads]] = AttentionHeads

    def __init__(self, model: nn.Module) -> None:
        self.config = text_config(model)
        self.model_type: str = getattr(self.config, "model_type", "unknown")
        self.mlp_channels = self.mlp_channels_type(self)
        self.attention_heads = self.attention_heads_type(self)

    @property
    def parts(self) -> tuple[PrunablePart, ...]:
        """The parts of a decoder layer this family can prune, in the order the walk prunes them:
        the attention heads (unless the family refuses them), then the MLP channels."""
        if self.head_refusal is not None:
            return (self.mlp_channels,)
        return (self.attention_heads, self.mlp_channels)

    # ------------------------------------------------------------------ where the modules are
    def decoder(self, model: nn.Module) -> nn.Module:
        """The module that embeds input_ids and runs the decoder layers."""
        return cast("PreTrainedModel", model).get_decoder()

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return cast(nn.ModuleList, self.decoder(model).layers)

    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        """The module holding the MLP's projections (the MLP module, or the layer itself in OPT)."""
        return getattr(layer, self.mlp_name) if self.mlp_name else layer

    def attention(self, layer: nn.Module) -> nn.Module:
        """The layer's attention module (its parameters are not pruned here)."""
        return getattr(layer, self.attention_name)

    # ------------------------------------------------------------------ the output head
    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of final hidden states (the backbone's output, final norm included), as the
        family's `*ForCausalLM.forward` computes them: the output embedding (with its bias where it
        has one, Phi's), then tanh soft-capping where the config sets `final_logit_softcapping`
        (Gemma 2 and 3; Gemma 3's multimodal config has no such field, and its forward no capping).
        OPT's `project_out` belongs to its decoder, so it is already in `hidden`."""
        logits = cast("PreTrainedModel", model).get_output_embeddings()(hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------------ how the output is used
    def mlp_output_to_residual(self, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map applied to the MLP output before it is added to the residual stream."""
        return lambda y: y

    def mlp_output_is_residual(self, layer: nn.Module) -> bool:
        return True

    # ------------------------------------------------------------------ checks
    def validate(self, model: nn.Module) -> None:
        """Refuse, naming what is missing, a model this adapter cannot prune."""
        for index, layer in enumerate(self.decoder_layers(model)):
            names = [*self.input_names, self.output_name, self.activation_name]
            parent = self.mlp_parent(layer)
            missing = [name for name in names if not hasattr(parent, name)]
            if missing:
                raise SpapInputError(f"Model type '{self.model_type}': layer {index}'s MLP "
                                     f"({type(parent).__name__}) lacks {', '.join(missing)}.")
            not_plain = [name for name in names[:-1] if not is_projection(getattr(parent, name))]
            if not_plain:
                raise SpapInputError(
                    f"Model type '{self.model_type}': {', '.join(not_plain)} in layer {index} are not plain "
                    "Linear layers (quantized?); load the model in floating point.")
            width = self.mlp_channels.width(layer)
            if width < 2:
                raise SpapInputError(
                    f"Model type '{self.model_type}': layer {index}'s MLP has {width} intermediate "
                    "channel; structured pruning needs at least 2 (one to remove, one to keep).")
