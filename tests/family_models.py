"""Tiny random models of every family the adapters take (2 layers, hidden 32, MLP width 64), built
from their configs with no download, and what the family tests ask of them: the model as the
library loads it, saved as a model folder, its logits, its output biases and its size."""

from __future__ import annotations

import torch
from conftest import tiny_tokenizer
from torch import nn

from spap_core.models.adapters import model_adapter
from spap_core.models.loading import LoadedModel

VOCAB = 203  # the word-level tiny tokenizer: [UNK], [BOS], [EOS] and 200 words
CALIBRATION = torch.randint(3, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
EVALUATION = torch.randint(3, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
WIDTH = 64
TOKEN_IDS = dict(bos_token_id=1, eos_token_id=2)  # the tiny tokenizer's [BOS] and [EOS]
_NEOX = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, **TOKEN_IDS)
# id → (config class, model class, config arguments); the ids are transformers model types, except
# the GPT-NeoX variant with a sequential residual (Pythia's default is the parallel one)
_BUILDS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**SHAPE}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**SHAPE}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**SHAPE, "head_dim": 8}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**SHAPE, "sliding_window": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {**SHAPE, "head_dim": 8, "sliding_window": 16}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {**SHAPE, "head_dim": 8, "sliding_window": 16}),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(vocab_size=VOCAB, hidden_size=32, ffn_dim=WIDTH, num_hidden_layers=2,
                                                num_attention_heads=4, word_embed_proj_dim=32,
                                                max_position_embeddings=64, pad_token_id=0, **TOKEN_IDS)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=VOCAB, n_embd=32, n_inner=WIDTH, n_layer=2, n_head=4,
                                                   n_positions=64, **TOKEN_IDS)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_NEOX, "use_parallel_residual": True}),
    "gpt_neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_NEOX, "use_parallel_residual": False}),
    "phi": ("PhiConfig", "PhiForCausalLM", {**SHAPE, **TOKEN_IDS}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**SHAPE, "pad_token_id": 0, **TOKEN_IDS}),
}
FAMILIES = tuple(_BUILDS)
NEW_FAMILIES = ("opt", "gpt2", "gpt_neox", "gpt_neox_sequential", "phi", "phi3")
NATIVE_BIAS_FAMILIES = ("opt", "gpt2", "gpt_neox", "gpt_neox_sequential", "phi")  # an output bias of their own
NO_BIAS_FAMILIES = ("qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3")  # whose class cannot hold one
BIAS_METHODS = ("spap", "flap", "obs")  # the methods whose defaults add an output bias
TOKENIZER = tiny_tokenizer()


def family_model(model_type: str) -> nn.Module:
    """A tiny random model of one family (2 layers, hidden 32, MLP width 64), built from its
    config (no download). transformers initialises biases to zero, which would hide a dropped,
    doubled or misaligned MLP bias, so the MLPs' biases are random too."""
    import transformers

    config_name, model_name, arguments = _BUILDS[model_type]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**arguments)
    model = getattr(transformers, model_name)(config).eval()
    family = model_adapter(model)
    with torch.no_grad():
        for layer in family.decoder_layers(model):
            for module in family.mlp_channels.modules(layer):
                if module.bias is not None:  # at the weights' scale: no ReLU channel dead on every token
                    module.bias.normal_(std=0.02)
    return model


def loaded_family(model_type: str, tokenizer=TOKENIZER, **config) -> LoadedModel:
    """The tiny model of one family as the library loads it; `config` changes its config (head
    counts), which builds it without the random MLP biases of `family_model`."""
    model = family_model(model_type) if not config else _model_with(model_type, **config)
    return LoadedModel(model=model, tokenizer=tokenizer, source=model_type, description=model_type,
                       family=model_adapter(model))


def _model_with(model_type: str, **changes) -> nn.Module:
    """A tiny model of `model_type` with other config values (head counts, hidden size)."""
    import transformers

    config_name, model_name, arguments = _BUILDS[model_type]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**{**arguments, **changes})
    return getattr(transformers, model_name)(config).eval()


def saved_family(model_type: str, folder, model: nn.Module | None = None) -> str:
    """The tiny model (or `model`) saved as a local model folder with the tiny tokenizer next to it."""
    (family_model(model_type) if model is None else model).save_pretrained(folder, safe_serialization=True)
    TOKENIZER.save_pretrained(folder)
    return str(folder)


def logits(model: nn.Module, ids: torch.Tensor = EVALUATION) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def output_biases(model: nn.Module) -> list[torch.Tensor | None]:
    family = model_adapter(model)
    return [family.mlp_channels.weights(layer).output_bias for layer in family.decoder_layers(model)]


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
