"""The model families SPAP Explorer prunes, one adapter class each, and the choice of the adapter
for a loaded model. A new family is one module with a ModelAdapter subclass plus one line in
ADAPTERS (and its tests: tests/spap_core/models/adapters/test_families.py builds a tiny random model
of every family)."""

from __future__ import annotations

from torch import nn

from spap_core.errors import SpapInputError
from spap_core.models.adapters.base import ModelAdapter
from spap_core.models.adapters.config import text_config
from spap_core.models.adapters.gemma import GemmaAdapter
from spap_core.models.adapters.gpt2 import Gpt2Adapter
from spap_core.models.adapters.gpt_neox import GptNeoXAdapter
from spap_core.models.adapters.llama import LlamaAdapter
from spap_core.models.adapters.opt import OptAdapter
from spap_core.models.adapters.parts import (
    AttentionHeads,
    AttentionWeights,
    MlpChannels,
    MlpFunction,
    MlpWeights,
    PrunablePart,
)
from spap_core.models.adapters.phi import PhiAdapter
from spap_core.models.adapters.phi3 import Phi3Adapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (LlamaAdapter, GemmaAdapter, OptAdapter, Gpt2Adapter, GptNeoXAdapter,
                                            PhiAdapter, Phi3Adapter)
SUPPORTED = ", ".join(adapter.families for adapter in ADAPTERS)

__all__ = ["ADAPTERS", "SUPPORTED", "AttentionHeads", "AttentionWeights", "MlpChannels", "MlpFunction", "MlpWeights",
           "ModelAdapter", "PrunablePart", "model_adapter", "text_config"]


def model_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter of `model`'s family, after checking that every decoder layer has the MLP it
    expects; a model of another type is taken by the Llama adapter when it is shaped like Llama.
    Anything else is refused in one line, before any work, naming the families that are supported."""
    model_type = getattr(text_config(model), "model_type", "unknown")
    chosen = next((adapter for adapter in ADAPTERS if model_type in adapter.model_types), None)
    if chosen is None and LlamaAdapter.matches(model):
        chosen = LlamaAdapter
    if chosen is None:
        raise SpapInputError(
            f"Model type '{model_type}' is not supported: SPAP Explorer prunes the MLP channels of {SUPPORTED} "
            "models, and of any decoder whose layers hold mlp.gate_proj, up_proj and down_proj as Llama's do.")
    adapter = chosen(model)
    try:
        adapter.validate(model)
    except AttributeError as exc:  # a model of the right type whose modules are laid out otherwise
        raise SpapInputError(f"Model type '{model_type}' is laid out differently from what its adapter "
                             f"({chosen.__name__}) expects: {exc}.") from exc
    return adapter
