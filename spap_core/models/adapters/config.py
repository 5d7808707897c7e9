"""The config an adapter reads and writes: the language model's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def text_config(model: nn.Module) -> PretrainedConfig:
    """The config of the language model itself: a multimodal config (Gemma 3) nests it."""
    config = cast("PretrainedConfig", model.config)  # every model an adapter takes is a transformers model
    return config.get_text_config() if hasattr(config, "get_text_config") else config
