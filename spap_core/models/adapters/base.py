"""What the pipeline needs to know of a model family, asked of one adapter object (in the manner of
SliceGPT's ModelAdapter): where the decoder layers are, the MLP's input projections, its activation
and output projection, whether the family's transformers class can store an output bias, and how
the MLP output reaches the residual stream. Nothing outside the adapters names a projection.

Every MLP the field prunes computes Z = act(W_in x + b_in) (plain: OPT, GPT-2, GPT-NeoX, Phi) or
Z = act(W_gate x + b_gate) ⊙ (W_up x + b_up) (GLU: Llama, Qwen, Mistral, Gemma, Phi-3), then
W_out Z + b_out. Pruning intermediate channel i removes row i of every input projection (and its
bias entry) and column i of the output projection, so the layer problem over Z is the same for all
of them. The adapters give those weights in one orientation, `MlpWeights` (rows of an input
weight = channels; columns of the output weight = channels), whatever the modules store: GPT-2's
Conv1D keeps them transposed, Phi-3 fuses gate and up into one `gate_up_proj`.

Attention heads are pruned the same way: the output projection's input is the concatenation of the
heads' outputs, so a head is a block of `head_dim` of its columns, and removing it removes its rows
of the query projection (and, with its whole KV group, the key and value rows). `AttentionWeights`
holds them in that orientation. Families whose transformers class derives head_dim from the hidden
size (OPT, GPT-2, GPT-NeoX) cannot hold fewer heads and say so (`head_refusal`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from spap_core.errors import SpapInputError
from spap_core.models.offload import real_tensor

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

Activation = Callable[[torch.Tensor], torch.Tensor]
PROJECTIONS = (nn.Linear, Conv1D)  # the modules an MLP's projections are made of


def text_config(model: nn.Module) -> PretrainedConfig:
    """The config of the language model itself: a multimodal config (Gemma 3) nests it."""
    config = cast("PretrainedConfig", model.config)  # every model an adapter takes is a transformers model
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def is_projection(module: object) -> bool:
    return isinstance(module, PROJECTIONS)


def projection_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or a Conv1D."""
    if isinstance(module, Conv1D):
        return module.nf, module.nx
    linear = cast(nn.Linear, module)  # the other kind of projection
    return linear.out_features, linear.in_features


def projection_weight(module: nn.Module) -> torch.Tensor:
    """The weight as out × in (a Conv1D stores it in × out), read from the offload hook when the
    module's own weight is on the meta device."""
    weight = real_tensor(module, "weight")
    return weight.T if isinstance(module, Conv1D) else weight


def projection_bias(module: nn.Module) -> torch.Tensor | None:
    return None if module.bias is None else real_tensor(module, "bias")


def projection_like(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module of `module`'s kind, device and dtype holding `weight` (out × in) and `bias`; a
    Conv1D always has a bias (zero when none is given), as transformers' GPT-2 expects."""
    out_features, in_features = weight.shape
    like = real_tensor(module, "weight")
    device, dtype = like.device, like.dtype
    with torch.no_grad():
        if isinstance(module, Conv1D):
            layer = Conv1D(out_features, in_features).to(device=device, dtype=dtype)
            layer.weight.copy_(weight.T)
            layer.bias.copy_(torch.zeros(out_features, device=device, dtype=dtype) if bias is None else bias)
            return layer
        layer = torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias is not None, device=device,
                                         dtype=dtype)
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer


@dataclass(frozen=True)
class MlpWeights:
    """One MLP's weights, channel-aligned: `inputs` are n × d (GLU: gate then up), `output` is m × n."""

    inputs: tuple[torch.Tensor, ...]
    input_biases: tuple[torch.Tensor | None, ...]
    output: torch.Tensor
    output_bias: torch.Tensor | None

    @property
    def width(self) -> int:
        return self.output.shape[1]

    def kept(self, keep: torch.Tensor) -> MlpWeights:
        """Only the channels `keep` (sorted indices)."""
        keep = keep.to(self.output.device)
        return replace(self, inputs=tuple(w[keep] for w in self.inputs),
                       input_biases=tuple(None if b is None else b[keep] for b in self.input_biases),
                       output=self.output[:, keep])

    def padded(self, width: int) -> MlpWeights:
        """Zero channels appended up to `width`: a zero output column adds exactly nothing."""
        missing = width - self.width
        pad = torch.nn.functional.pad
        return replace(self, inputs=tuple(pad(w, (0, 0, 0, missing)) for w in self.inputs),
                       input_biases=tuple(None if b is None else pad(b, (0, missing)) for b in self.input_biases),
                       output=pad(self.output, (0, missing)))


@dataclass(frozen=True)
class AttentionWeights:
    """One attention's projections, head-aligned: query rows are `heads` blocks of `head_dim`, key
    and value rows `kv_heads` blocks, output columns `heads` blocks (every tensor out × in)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    output: torch.Tensor
    biases: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]  # query, key, value
    output_bias: torch.Tensor | None
    head_dim: int

    @property
    def heads(self) -> int:
        return self.query.shape[0] // self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.key.shape[0] // self.head_dim

    def _rows(self, units: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.head_dim, device=units.device)
        return (units.reshape(-1, 1) * self.head_dim + offsets).flatten().to(self.query.device)

    def kept(self, heads: torch.Tensor) -> AttentionWeights:
        """Only the query heads `heads` (sorted, grouped as the layout keeps them) and the KV heads
        that serve them."""
        heads = heads.cpu()
        groups = torch.unique(heads // (self.heads // self.kv_heads))
        query_rows, kv_rows = self._rows(heads), self._rows(groups)
        query_bias, key_bias, value_bias = self.biases
        return replace(self, query=self.query[query_rows], key=self.key[kv_rows], value=self.value[kv_rows],
                       output=self.output[:, query_rows],
                       biases=(None if query_bias is None else query_bias[query_rows],
                               None if key_bias is None else key_bias[kv_rows],
                               None if value_bias is None else value_bias[kv_rows]))


@dataclass(frozen=True)
class MlpFunction:
    """Z from the MLP input x: act(W₀x + b₀) ⊙ (W₁x + b₁) for a GLU, act(W₀x + b₀) otherwise. The
    recovery steps differentiate through it with the kept input weights."""

    activation: Activation
    glu: bool

    def __call__(self, x: torch.Tensor, inputs: Sequence[torch.Tensor],
                 biases: Sequence[torch.Tensor | None]) -> torch.Tensor:
        pre = [x @ w.T if b is None else x @ w.T + b for w, b in zip(inputs, biases)]
        return self.activation(pre[0]) * pre[1] if self.glu else self.activation(pre[0])


class ModelAdapter:
    """One model family. Subclasses name the modules; the channel-aligned weights, the shrink and
    the config update follow from those names. `model_types` are the transformers model types it
    takes (the Llama adapter also takes any model shaped like Llama). A family whose modules sit
    otherwise than by name (Phi-3's fused projection) overrides the methods that read them."""

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

    def __init__(self, model: nn.Module) -> None:
        self.config = text_config(model)
        self.model_type: str = getattr(self.config, "model_type", "unknown")

    # ------------------------------------------------------------------ where the modules are
    def decoder(self, model: nn.Module) -> nn.Module:
        """The module that embeds input_ids and runs the decoder layers."""
        return cast("PreTrainedModel", model).get_decoder()

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return cast(nn.ModuleList, self.decoder(model).layers)

    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        """The module holding the MLP's projections (the MLP module, or the layer itself in OPT)."""
        return getattr(layer, self.mlp_name) if self.mlp_name else layer

    def activation(self, layer: nn.Module) -> Activation:
        """The MLP's activation function (applied to the gate in a GLU)."""
        return getattr(self.mlp_parent(layer), self.activation_name)

    def attention(self, layer: nn.Module) -> nn.Module:
        """The layer's attention module (its parameters are not pruned here)."""
        return getattr(layer, self.attention_name)

    def input_projections(self, layer: nn.Module) -> list[nn.Module]:
        parent = self.mlp_parent(layer)
        return [getattr(parent, name) for name in self.input_names]

    def output_projection(self, layer: nn.Module) -> nn.Module:
        return getattr(self.mlp_parent(layer), self.output_name)

    def set_output_projection(self, layer: nn.Module, module: nn.Module) -> None:
        """Swap the output projection (the capture puts a recorder there for a while)."""
        setattr(self.mlp_parent(layer), self.output_name, module)

    def mlp_modules(self, layer: nn.Module) -> list[nn.Module]:
        return [*self.input_projections(layer), self.output_projection(layer)]

    def width(self, layer: nn.Module) -> int:
        """The number of intermediate channels."""
        return projection_shape(self.output_projection(layer))[1]

    # ------------------------------------------------------------------ the weights, channel-aligned
    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        inputs = self.input_projections(layer)
        output = self.output_projection(layer)
        return MlpWeights(inputs=tuple(projection_weight(m) for m in inputs),
                          input_biases=tuple(projection_bias(m) for m in inputs),
                          output=projection_weight(output), output_bias=projection_bias(output))

    def set_mlp_weights(self, layer: nn.Module, weights: MlpWeights) -> None:
        """Replace the projections by modules of the new width holding `weights`."""
        parent = self.mlp_parent(layer)
        for name, weight, bias in zip(self.input_names, weights.inputs, weights.input_biases):
            setattr(parent, name, projection_like(getattr(parent, name), weight, bias))
        setattr(parent, self.output_name, projection_like(getattr(parent, self.output_name), weights.output,
                                                          weights.output_bias))
        if hasattr(parent, "intermediate_size"):
            # torch types Module.__setattr__ as taking tensors and modules only; any attribute can be set
            parent.intermediate_size = weights.width  # type: ignore[assignment]

    def mlp_function(self, layer: nn.Module) -> MlpFunction:
        return MlpFunction(self.activation(layer), self.glu)

    def intermediate(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Z of the layer's MLP for its input x, through the modules themselves (as the model runs them)."""
        pre = [module(x) for module in self.input_projections(layer)]
        activation = self.activation(layer)
        return activation(pre[0]) * pre[1] if self.glu else activation(pre[0])

    # ------------------------------------------------------------------ attention heads
    def attention_output_projection(self, layer: nn.Module) -> nn.Module:
        return getattr(self.attention(layer), self.attention_output_name)

    def set_attention_output_projection(self, layer: nn.Module, module: nn.Module) -> None:
        """Swap the attention's output projection (the capture puts a recorder there for a while)."""
        setattr(self.attention(layer), self.attention_output_name, module)

    def head_dim(self, layer: nn.Module) -> int:
        # a plain attribute of the attention, which torch's typing of nn.Module attributes cannot see
        return int(cast(int, self.attention(layer).head_dim))

    def head_counts(self, layer: nn.Module) -> tuple[int, int]:
        """(query heads, KV heads) of the layer as its modules hold them (from shapes only, so an
        offloaded layer is not read)."""
        attention, head_dim = self.attention(layer), self.head_dim(layer)
        query, key = (projection_shape(getattr(attention, name))[0] for name in self.attention_input_names[:2])
        return query // head_dim, key // head_dim

    def attention_weights(self, layer: nn.Module) -> AttentionWeights:
        attention = self.attention(layer)
        inputs = [getattr(attention, name) for name in self.attention_input_names]
        output = getattr(attention, self.attention_output_name)
        query, key, value = (projection_weight(module) for module in inputs)
        query_bias, key_bias, value_bias = (projection_bias(module) for module in inputs)
        return AttentionWeights(query=query, key=key, value=value, output=projection_weight(output),
                                biases=(query_bias, key_bias, value_bias),
                                output_bias=projection_bias(output), head_dim=self.head_dim(layer))

    def set_attention_weights(self, layer: nn.Module, weights: AttentionWeights) -> None:
        """Replace the projections by modules holding `weights`, and tell the attention how its KV
        heads are now shared (transformers reads that from the module)."""
        attention = self.attention(layer)
        for name, weight, bias in zip(self.attention_input_names, (weights.query, weights.key, weights.value),
                                      weights.biases):
            setattr(attention, name, projection_like(getattr(attention, name), weight, bias))
        setattr(attention, self.attention_output_name,
                projection_like(getattr(attention, self.attention_output_name), weights.output, weights.output_bias))
        # torch types Module.__setattr__ as taking tensors and modules only; any attribute can be set
        attention.num_key_value_groups = weights.heads // weights.kv_heads  # type: ignore[assignment]

    def share_config(self, model: nn.Module) -> None:
        """Once every layer holds its pruned heads and the config says so: give back the model's
        config to an attention that held one of its own meanwhile (Phi-3's)."""

    @property
    def stores_attention_bias(self) -> bool:
        """Whether the family's class can store a bias on the attention's output projection."""
        return self.native_attention_bias

    def takes_heads(self, heads: int, kv_heads: int, head_dim: int) -> bool:
        """Whether the family's config class accepts these head counts (its own validation decides:
        Llama's and Gemma's want hidden_size divisible by num_attention_heads, even with head_dim set)."""
        config = copy.deepcopy(self.config)
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, kv_heads, head_dim
        try:
            if hasattr(config, "validate"):
                config.validate()
        except Exception:  # noqa: BLE001 - any refusal of the class's validators means "not these counts"
            return False
        return True

    def record_heads(self, config, heads: int, kv_heads: int, head_dim: int, output_bias: bool) -> None:
        """Write the head counts (and head_dim, which the classes would otherwise derive from the
        hidden size) into the config; refuse an output bias the class cannot create."""
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, kv_heads, head_dim
        if output_bias and not self.stores_attention_bias:
            raise SpapInputError(f"Model type '{self.model_type}' cannot store an attention output-projection bias "
                                 "in transformers; turn bias compensation off (--no-bias).")

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

    @property
    def stores_down_bias(self) -> bool:
        """Whether the family's transformers class can store an output-projection bias, so a method's
        bias compensation can be saved (elsewhere it runs its no-bias variant)."""
        return self.native_output_bias

    def record_widths(self, config, width: int, output_bias: bool) -> None:
        """Write the (widest) MLP width into the config, and switch the output bias on where the
        config decides whether the class creates one."""
        setattr(config, self.width_key, width)
        if output_bias and not self.stores_down_bias:
            raise SpapInputError(f"Model type '{self.model_type}' cannot store an output-projection (down_proj) "
                                 "bias in transformers; turn bias compensation off (--no-bias) or use a method "
                                 "without it.")

    def head_shape(self, model: nn.Module) -> tuple[int, int, int]:
        """(query heads, KV heads, head_dim), the same in every layer; refuses, naming the reason,
        a model whose heads cannot be pruned."""
        if self.head_refusal is not None:
            raise SpapInputError(f"Model type '{self.model_type}': attention heads cannot be pruned, "
                                 f"as {self.head_refusal}; "
                                 "prune its MLP channels only (head sparsity 0).")
        shapes = set()
        for index, layer in enumerate(self.decoder_layers(model)):
            attention = self.attention(layer)
            names = [*self.attention_input_names, self.attention_output_name]
            missing = [name for name in names if not is_projection(getattr(attention, name, None))]
            if missing or not hasattr(attention, "head_dim"):
                raise SpapInputError(f"Model type '{self.model_type}': layer {index}'s attention "
                                     f"({type(attention).__name__}) has no plain {', '.join(missing) or 'head_dim'}; "
                                     "its heads cannot be pruned.")
            shapes.add((*self.head_counts(layer), self.head_dim(layer)))
        if len(shapes) != 1:
            raise SpapInputError(f"Model type '{self.model_type}': its layers hold different head counts "
                                 f"({sorted(shapes)}); heads are pruned only where every layer has the same.")
        return shapes.pop()

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
            if self.width(layer) < 2:
                raise SpapInputError(
                    f"Model type '{self.model_type}': layer {index}'s MLP has {self.width(layer)} intermediate "
                    "channel; structured pruning needs at least 2 (one to remove, one to keep).")
