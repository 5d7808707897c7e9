"""The prunable parts of a decoder layer: one kind of unit each (an MLP's intermediate channels, an
attention's heads), described by what the pruning walk needs of it, so the walk runs one sequence
for every part and a new kind of unit is one `PrunablePart` subclass.

Every part ends in an output projection whose input is the concatenation of its units' outputs: a
unit is a block of `unit_columns` consecutive input columns of that projection (1 for an MLP
channel, head_dim for a head). Removing a unit removes its columns there and whatever rows of the
part's other projections produce it, so the layer problem over the projection's input is the same
for every part. A part gives its weights in that orientation (`MlpWeights`, `AttentionWeights`),
whatever the modules store: GPT-2's Conv1D keeps them transposed, Phi-3 fuses gate and up (and q,
k, v) into one projection; a family whose modules differ overrides its part's methods.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar, cast

import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.models.adapters.config import text_config
from spap_core.models.adapters.projections import (
    is_projection,
    projection_bias,
    projection_like,
    projection_shape,
    projection_weight,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Activation = Callable[[torch.Tensor], torch.Tensor]
WeightsT = TypeVar("WeightsT", bound="PartWeights")


class PartWeights(Protocol):
    """A part's weights, unit-aligned: `output` is the output projection (m × units·columns)."""

    @property
    def output(self) -> torch.Tensor: ...

    @property
    def output_bias(self) -> torch.Tensor | None: ...

    def kept(self: WeightsT, units: torch.Tensor) -> WeightsT:
        """Only the units `units` (sorted indices)."""
        ...

    def unit_totals(self) -> torch.Tensor:
        """Per unit, the sum (float64) of the entries of the weights removing it removes, biases
        left out: on weights that hold a per-entry quantity instead (a first-order Taylor term),
        that quantity over each unit's coupled group."""
        ...


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

    def unit_totals(self) -> torch.Tensor:
        """Channel i: row i of every input projection and column i of the output projection."""
        totals = self.output.sum(dim=0, dtype=torch.float64)
        for weight in self.inputs:
            totals = totals + weight.sum(dim=1, dtype=torch.float64)
        return totals

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

    def unit_totals(self) -> torch.Tensor:
        """Head h: its query rows and its block of output columns, plus an equal share (1 ÷ the
        heads per KV group) of its KV group's key and value rows. `kept` removes a group's key and
        value rows with its last head, which a priority over single heads cannot charge to any one
        of them; the equal share keeps the heads of one group comparable by what is theirs alone,
        and a group's heads together carry the whole of its key and value rows."""
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        query = self.query.reshape(heads, -1).sum(dim=1, dtype=torch.float64)
        output = self.output.reshape(self.output.shape[0], heads, head_dim).sum(dim=(0, 2), dtype=torch.float64)
        shared = (self.key.reshape(kv_heads, -1).sum(dim=1, dtype=torch.float64)
                  + self.value.reshape(kv_heads, -1).sum(dim=1, dtype=torch.float64))
        group = heads // kv_heads
        return query + output + (shared / group).repeat_interleave(group)


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


class Family(Protocol):
    """What a part reads of its family's adapter (spap_core.models.adapters.base.ModelAdapter):
    where the modules are and what its transformers class can store."""

    config: PretrainedConfig
    model_type: str
    glu: ClassVar[bool]
    width_key: ClassVar[str]
    input_names: ClassVar[tuple[str, ...]]
    output_name: ClassVar[str]
    activation_name: ClassVar[str]
    native_output_bias: ClassVar[bool]
    attention_input_names: ClassVar[tuple[str, ...]]
    attention_output_name: ClassVar[str]
    native_attention_bias: ClassVar[bool]
    head_refusal: ClassVar[str | None]

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList: ...

    def mlp_parent(self, layer: nn.Module) -> nn.Module: ...

    def attention(self, layer: nn.Module) -> nn.Module: ...


class PrunablePart(ABC, Generic[WeightsT]):
    """One kind of prunable unit of a family's decoder layers: where its output projection sits
    (the walk puts a recorder there while it captures the units' activations), its width in units
    and columns per unit, its weights unit-aligned and how modules holding fewer units replace
    them, whether the family's class can store an output bias for it, and how the config records
    its pruned shape. `description` names its output projection in messages."""

    description: str

    def __init__(self, family: Family) -> None:
        self.family = family

    @abstractmethod
    def parent(self, layer: nn.Module) -> nn.Module:
        """The module holding the part's output projection."""

    @property
    @abstractmethod
    def output_name(self) -> str:
        """The output projection's attribute name in `parent`."""

    def output_projection(self, layer: nn.Module) -> nn.Module:
        return getattr(self.parent(layer), self.output_name)

    def set_output_projection(self, layer: nn.Module, module: nn.Module) -> None:
        """Swap the output projection (the capture puts a recorder there for a while)."""
        setattr(self.parent(layer), self.output_name, module)

    @abstractmethod
    def unit_columns(self, layer: nn.Module) -> int:
        """The output projection's input columns per unit."""

    def width(self, layer: nn.Module) -> int:
        """The layer's units (from module shapes only, so an offloaded layer is not read)."""
        return projection_shape(self.output_projection(layer))[1] // self.unit_columns(layer)

    @abstractmethod
    def weights(self, layer: nn.Module) -> WeightsT:
        """The part's weights, unit-aligned."""

    @abstractmethod
    def set_weights(self, layer: nn.Module, weights: WeightsT) -> None:
        """Replace the part's projections by modules of the new width holding `weights`."""

    @property
    @abstractmethod
    def stores_output_bias(self) -> bool:
        """Whether the family's transformers class can store a bias on the output projection, so
        a method's bias compensation can be saved (elsewhere it runs its no-bias variant)."""

    def holds_output_bias(self, model: nn.Module) -> bool:
        """Whether the output projection holds a bias in any of the model's layers."""
        return any(self.output_projection(layer).bias is not None for layer in self.family.decoder_layers(model))

    @abstractmethod
    def record_shape(self, model: nn.Module) -> None:
        """Write the part's shape, as the model's layers hold it after pruning, into its config
        (with the output-bias switch where the config decides whether the class creates one), so
        save_pretrained/from_pretrained round-trip; refuse an output bias the class cannot create."""


class MlpChannels(PrunablePart[MlpWeights]):
    """The MLP's intermediate channels: row i of every input projection (and its bias entry) and
    column i of the output projection. The MLP sits where the family's adapter names it."""

    description = "MLP output projection"

    def parent(self, layer: nn.Module) -> nn.Module:
        """The module holding the MLP's projections (the MLP module, or the layer itself in OPT)."""
        return self.family.mlp_parent(layer)

    @property
    def output_name(self) -> str:
        return self.family.output_name

    def unit_columns(self, layer: nn.Module) -> int:
        return 1

    def input_projections(self, layer: nn.Module) -> list[nn.Module]:
        parent = self.parent(layer)
        return [getattr(parent, name) for name in self.family.input_names]

    def modules(self, layer: nn.Module) -> list[nn.Module]:
        return [*self.input_projections(layer), self.output_projection(layer)]

    def activation(self, layer: nn.Module) -> Activation:
        """The MLP's activation function (applied to the gate in a GLU)."""
        return getattr(self.parent(layer), self.family.activation_name)

    def function(self, layer: nn.Module) -> MlpFunction:
        return MlpFunction(self.activation(layer), self.family.glu)

    def activations(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Z of the layer's MLP for its input x, through the modules themselves (as the model runs them)."""
        pre = [module(x) for module in self.input_projections(layer)]
        activation = self.activation(layer)
        return activation(pre[0]) * pre[1] if self.family.glu else activation(pre[0])

    def weights(self, layer: nn.Module) -> MlpWeights:
        inputs = self.input_projections(layer)
        output = self.output_projection(layer)
        return MlpWeights(inputs=tuple(projection_weight(m) for m in inputs),
                          input_biases=tuple(projection_bias(m) for m in inputs),
                          output=projection_weight(output), output_bias=projection_bias(output))

    def set_weights(self, layer: nn.Module, weights: MlpWeights) -> None:
        parent = self.parent(layer)
        for name, weight, bias in zip(self.family.input_names, weights.inputs, weights.input_biases):
            setattr(parent, name, projection_like(getattr(parent, name), weight, bias))
        self.set_output_projection(layer, projection_like(self.output_projection(layer), weights.output,
                                                          weights.output_bias))
        if hasattr(parent, "intermediate_size"):
            # torch types Module.__setattr__ as taking tensors and modules only; any attribute can be set
            parent.intermediate_size = weights.width  # type: ignore[assignment]

    @property
    def stores_output_bias(self) -> bool:
        return self.family.native_output_bias

    def record_shape(self, model: nn.Module) -> None:
        """The (widest) MLP width into the family's width field."""
        layers = self.family.decoder_layers(model)
        setattr(text_config(model), self.family.width_key, max(self.width(layer) for layer in layers))
        if self.holds_output_bias(model) and not self.stores_output_bias:
            raise SpapInputError(f"Model type '{self.family.model_type}' cannot store an output-projection "
                                 "(down_proj) bias in transformers; turn bias compensation off (--no-bias) or use a "
                                 "method without it.")


class AttentionHeads(PrunablePart[AttentionWeights]):
    """The attention's query heads: a head is a block of `head_dim` columns of the output
    projection and of rows of the query projection; the key and value rows of a KV group go with
    the last head it serves. Families whose transformers class derives head_dim from the hidden
    size (OPT, GPT-2, GPT-NeoX) cannot hold fewer heads and say so (the adapter's `head_refusal`)."""

    description = "attention output projection"

    def parent(self, layer: nn.Module) -> nn.Module:
        return self.family.attention(layer)

    @property
    def output_name(self) -> str:
        return self.family.attention_output_name

    def unit_columns(self, layer: nn.Module) -> int:
        """head_dim: a plain attribute of the attention, which torch's typing of nn.Module attributes cannot see."""
        return int(cast(int, self.parent(layer).head_dim))

    def counts(self, layer: nn.Module) -> tuple[int, int]:
        """(query heads, KV heads) of the layer as its modules hold them (from shapes only, so an
        offloaded layer is not read)."""
        attention, head_dim = self.parent(layer), self.unit_columns(layer)
        query, key = (projection_shape(getattr(attention, name))[0] for name in self.family.attention_input_names[:2])
        return query // head_dim, key // head_dim

    def shape(self, model: nn.Module) -> tuple[int, int, int]:
        """(query heads, KV heads, head_dim), the same in every layer; refuses, naming the reason,
        a model whose heads cannot be pruned."""
        family = self.family
        if family.head_refusal is not None:
            raise SpapInputError(f"Model type '{family.model_type}': attention heads cannot be pruned, "
                                 f"as {family.head_refusal}; "
                                 "prune its MLP channels only (head sparsity 0).")
        shapes = set()
        for index, layer in enumerate(family.decoder_layers(model)):
            attention = self.parent(layer)
            names = [*family.attention_input_names, self.output_name]
            missing = [name for name in names if not is_projection(getattr(attention, name, None))]
            if missing or not hasattr(attention, "head_dim"):
                raise SpapInputError(f"Model type '{family.model_type}': layer {index}'s attention "
                                     f"({type(attention).__name__}) has no plain {', '.join(missing) or 'head_dim'}; "
                                     "its heads cannot be pruned.")
            shapes.add((*self.counts(layer), self.unit_columns(layer)))
        if len(shapes) != 1:
            raise SpapInputError(f"Model type '{family.model_type}': its layers hold different head counts "
                                 f"({sorted(shapes)}); heads are pruned only where every layer has the same.")
        return shapes.pop()

    def takes(self, heads: int, kv_heads: int, head_dim: int) -> bool:
        """Whether the family's config class accepts these head counts (its own validation decides:
        Llama's and Gemma's want hidden_size divisible by num_attention_heads, even with head_dim set)."""
        config = copy.deepcopy(self.family.config)
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, kv_heads, head_dim
        try:
            if hasattr(config, "validate"):
                config.validate()
        except Exception:  # noqa: BLE001 - any refusal of the class's validators means "not these counts"
            return False
        return True

    def weights(self, layer: nn.Module) -> AttentionWeights:
        attention = self.parent(layer)
        inputs = [getattr(attention, name) for name in self.family.attention_input_names]
        output = self.output_projection(layer)
        query, key, value = (projection_weight(module) for module in inputs)
        query_bias, key_bias, value_bias = (projection_bias(module) for module in inputs)
        return AttentionWeights(query=query, key=key, value=value, output=projection_weight(output),
                                biases=(query_bias, key_bias, value_bias),
                                output_bias=projection_bias(output), head_dim=self.unit_columns(layer))

    def set_weights(self, layer: nn.Module, weights: AttentionWeights) -> None:
        """Also tell the attention how its KV heads are shared (transformers reads that from the module)."""
        attention = self.parent(layer)
        for name, weight, bias in zip(self.family.attention_input_names, (weights.query, weights.key, weights.value),
                                      weights.biases):
            setattr(attention, name, projection_like(getattr(attention, name), weight, bias))
        self.set_output_projection(layer, projection_like(self.output_projection(layer), weights.output,
                                                          weights.output_bias))
        # torch types Module.__setattr__ as taking tensors and modules only; any attribute can be set
        attention.num_key_value_groups = weights.heads // weights.kv_heads  # type: ignore[assignment]

    @property
    def stores_output_bias(self) -> bool:
        return self.family.native_attention_bias

    def record_shape(self, model: nn.Module) -> None:
        """The head counts, and head_dim, which the classes would otherwise derive from the hidden size."""
        layers = self.family.decoder_layers(model)
        heads = {(*self.counts(layer), self.unit_columns(layer)) for layer in layers}
        if len(heads) != 1:  # the walk keeps one layout in every layer: anything else is a bug
            raise RuntimeError(f"layers with different head counts after pruning: {sorted(heads)}")
        config: PretrainedConfig = text_config(model)
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads.pop()
        if self.holds_output_bias(model) and not self.stores_output_bias:
            raise SpapInputError(f"Model type '{self.family.model_type}' cannot store an attention output-projection "
                                 "bias in transformers; turn bias compensation off (--no-bias).")
