"""LoRA adapters on a pruned model's projections, with peft: which modules get them (found through
the family's adapter, so GPT-2's Conv1D and Phi-3's fused projections are found as any Linear is),
attached in place, then merged into the weights (the model is again a plain transformers model with
exactly its pruned parameter count) or dropped (the weights are bit for bit what they were, since
the base weights are frozen while the adapters train)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from spap_core.models.adapters import ModelAdapter
from spap_core.models.adapters.projections import is_projection
from spap_core.recovery.settings import ALL, ATTENTION, MLP, RecoverySettings

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def adapted_modules(model: nn.Module, family: ModelAdapter, targets: str) -> list[nn.Module]:
    """The projections of every decoder layer that `targets` names: the MLP's (the family's MLP
    channel modules) and/or every projection inside the family's attention module."""
    modules: list[nn.Module] = []
    for layer in family.decoder_layers(model):
        if targets in (MLP, ALL):
            modules += family.mlp_channels.modules(layer)
        if targets in (ATTENTION, ALL):
            modules += [module for module in family.attention(layer).modules() if is_projection(module)]
    return modules


def lora_config(model: nn.Module, family: ModelAdapter, settings: RecoverySettings) -> LoraConfig:
    """peft's configuration: the adapted modules by their full names in `model` (which
    `target_modules` matches exactly), no dropout (a step's loss depends on the seed alone), and
    `fan_in_fan_out` where the projections are Conv1D (GPT-2 stores its weights in × out)."""
    adapted = adapted_modules(model, family, settings.targets)
    wanted = {id(module) for module in adapted}
    names = [name for name, module in model.named_modules() if id(module) in wanted]
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, target_modules=names,
                      bias="none", fan_in_fan_out=any(isinstance(module, Conv1D) for module in adapted))


@contextlib.contextmanager
def lora_adapters(model: nn.Module, family: ModelAdapter, settings: RecoverySettings,
                  seed: int) -> Iterator[PeftModel]:
    """`model` with trainable LoRA adapters (initialised from `seed`, the base weights frozen) for
    the block. The block merges them (`merge_adapters`) to keep what it trained; when it does not,
    as when it raises (a cancel), they are dropped on the way out and the model is as it was,
    every parameter's requires_grad included."""
    config = lora_config(model, family, settings)
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        torch.manual_seed(seed)
        wrapped = cast(PeftModel, get_peft_model(cast("PreTrainedModel", model), config))
    try:
        yield wrapped
    finally:
        if _has_adapters(model):
            wrapped.unload()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable.get(name, parameter.requires_grad))
        _forget_peft(model)


def merge_adapters(wrapped: PeftModel) -> None:
    """Fold the trained adapters into their base weights and remove them: the model holds plain
    Linear/Conv1D modules of its pruned shapes again."""
    wrapped.merge_and_unload()


def _has_adapters(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(module, LoraLayer) for module in model.modules())


def _forget_peft(model: nn.Module) -> None:
    """peft leaves its config on the model it wrapped; a merged or restored model has no adapter,
    and save_pretrained must not write one."""
    if hasattr(model, "peft_config"):
        del model.peft_config


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices the model's parameters are on: their random state is forked with the CPU's."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})

