"""Perplexity from chunks of the final hidden states: the same NLL as the cross-entropy of the full
logits that each family's own forward gives, on every family (Gemma 2's soft-capping and Phi's head
bias included), whatever the chunk, in memory and with the model placed by accelerate; the head
never produces more than one chunk of logits; each window's mean loss is kept, and they add up to
the NLL; a model taken by the shape of its layers whose head does more than its output embedding is
refused; batches are reported and a cancel stops them."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama, tiny_tokenizer
from family_models import FAMILIES, VOCAB, family_model
from torch import nn

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.evaluation import perplexity as evaluate
from spap_core.evaluation.perplexity import chunk_tokens_for, perplexity
from spap_core.models.loading import Placement, load_model

# 3 windows of 32 at batch 2: batches of 62 and 31 predicted tokens
WINDOWS = torch.randint(3, VOCAB, (3, 32), generator=torch.Generator().manual_seed(5))
BATCH = 2
# the default; smaller than a window and dividing neither batch; one window's predictions; larger
# than every batch
CHUNKS = (None, 7, 31, 1000)


def full_logits_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = BATCH) -> float:
    """The reference: the model's own forward, all of a batch's logits, one cross-entropy."""
    total = 0.0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                           reduction="sum"))
    return total


def with_random_head_bias(model: nn.Module) -> nn.Module:
    """transformers initialises a head bias (Phi's) to zero, which would hide a dropped one."""
    bias = model.get_output_embeddings().bias
    if bias is not None:
        with torch.no_grad():
            bias.normal_(std=0.5)
    return model


def gemma(final_logit_softcapping: float | None = None) -> nn.Module:
    """Gemma 1 (not among the pruning tests' families), or Gemma 2 with a cap that bites on these logits."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    if final_logit_softcapping is None:
        return GemmaForCausalLM(GemmaConfig(**shape)).eval()
    config = Gemma2Config(**shape, sliding_window=16, final_logit_softcapping=final_logit_softcapping)
    return Gemma2ForCausalLM(config).eval()


MODELS = {**{name: lambda name=name: with_random_head_bias(family_model(name)) for name in FAMILIES},
          "gemma": gemma, "gemma2_tight_cap": lambda: gemma(final_logit_softcapping=0.05)}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_chunked_nll_equals_the_full_logits_cross_entropy_on_every_family(name):
    model = MODELS[name]()
    expected = full_logits_nll(model, WINDOWS)
    for chunk in CHUNKS:
        result = perplexity(model, WINDOWS, batch_size=BATCH, chunk_tokens=chunk)
        assert result.nll == pytest.approx(expected, rel=1e-6), (name, chunk)
        assert result.tokens == 3 * 31


def test_each_windows_mean_loss_is_its_own_cross_entropy_and_they_add_up_to_the_nll():
    model = tiny_llama()
    with torch.no_grad():
        logits = model(input_ids=WINDOWS, use_cache=False).logits[:, :-1].float()
    # one window at a time: the mean cross-entropy of its 31 predictions
    expected = [float(F.cross_entropy(window_logits, window[1:])) for window_logits, window in zip(logits, WINDOWS)]
    assert len(set(expected)) == len(expected)  # the windows' losses differ, so an order or a mix-up shows
    for chunk in CHUNKS:
        result = perplexity(model, WINDOWS, batch_size=BATCH, chunk_tokens=chunk)
        assert result.window_nll == pytest.approx(expected, rel=1e-6), chunk
        assert sum(result.window_nll) * 31 == pytest.approx(result.nll, rel=1e-12)
        assert result.nll == pytest.approx(full_logits_nll(model, WINDOWS), rel=1e-6)
        low, high = result.ci95
        assert low < result.perplexity < high


def llama_shaped(config_name: str, model_name: str, **head: float) -> nn.Module:
    """A model of a type no adapter declares, taken by the Llama adapter for its layers' shape."""
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64, bos_token_id=1, eos_token_id=2, **head)
    return getattr(transformers, model_name)(config).eval()


def test_a_model_taken_by_shape_is_measured_when_its_head_is_the_output_embedding_and_refused_otherwise():
    olmo = llama_shaped("OlmoConfig", "OlmoForCausalLM")
    assert perplexity(olmo, WINDOWS, batch_size=BATCH, chunk_tokens=7).nll == pytest.approx(
        full_logits_nll(olmo, WINDOWS), rel=1e-6)
    for model in (llama_shaped("GraniteConfig", "GraniteForCausalLM", logits_scaling=4.0),
                  llama_shaped("CohereConfig", "CohereForCausalLM", logit_scale=0.25)):
        with pytest.raises(SpapInputError, match=f"Model type '{model.config.model_type}'.*logits otherwise"):
            perplexity(model, WINDOWS, batch_size=BATCH)


def test_the_tiny_models_exercise_the_head_extras():
    """Gemma 2's default cap (30) is on, though it hardly bends a tiny model's logits (hence the model
    with a tight cap, whose NLL moves by 0.8 without it), and Phi's head bias is not zero."""
    assert family_model("gemma2").config.final_logit_softcapping == 30.0
    assert MODELS["phi"]().get_output_embeddings().bias.abs().sum() > 0


def test_the_head_never_produces_more_than_one_chunk_of_logits(monkeypatch):
    model = tiny_llama()
    vocabulary = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(evaluate, "LOGITS_PER_CHUNK", 5 * vocabulary)
    largest, use_cache = [], []
    model.get_output_embeddings().register_forward_hook(lambda _m, _i, output: largest.append(output.numel()))
    model.base_model.register_forward_pre_hook(lambda _m, _a, kwargs: use_cache.append(kwargs.get("use_cache")),
                                               with_kwargs=True)
    windows = torch.randint(3, vocabulary, (4, 32), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows, batch_size=4)
    assert chunk_tokens_for(vocabulary) == 5
    assert max(largest) == 5 * vocabulary < windows.numel() * vocabulary
    assert len(largest) == -(-4 * 31 // 5)  # every predicted token once, in chunks of 5
    assert use_cache == [False]  # one backbone pass for the batch, without a KV cache
    assert result.nll == pytest.approx(full_logits_nll(model, windows, 4), rel=1e-6)


def test_the_chunk_follows_the_logits_budget():
    assert chunk_tokens_for(49152) == 2**24 // 49152 == 341
    assert chunk_tokens_for(2**30) == 1


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_for_offload")
    tiny_llama(seed=4).save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


HEAD_IN_MEMORY = {"model.layers": "disk", "model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}


@pytest.mark.parametrize("device_map", [
    "disk",  # --low-memory: everything on disk; the head's weights are held for a batch's chunks, then offloaded again
    HEAD_IN_MEMORY,  # the decoder layers on disk, the embeddings and the head in memory
])
def test_a_model_placed_by_accelerate_gives_the_in_memory_nll(tiny_dir, device_map):
    windows = torch.randint(3, VOCAB, (4, 32), generator=torch.Generator().manual_seed(2))
    expected = full_logits_nll(load_model(str(tiny_dir), device="cpu").model, windows)
    placed = load_model(str(tiny_dir), device="cpu", placement=Placement(device_map)).model
    head = placed.get_output_embeddings()
    head_offloaded = getattr(getattr(head, "_hf_hook", None), "offload", False)
    assert head_offloaded == (device_map == "disk")
    hooks_during = []
    for chunk in (None, 7):
        result = perplexity(placed, windows, batch_size=BATCH, chunk_tokens=chunk,
                            on_batch=lambda *_: hooks_during.append(len(placed.model.layers[0]._forward_hooks)))
        assert result.nll == pytest.approx(expected, rel=1e-5)
    assert hooks_during == [1] * 4
    if head_offloaded:
        assert head.weight.device.type == "meta" and head._hf_hook.offload
    # the hooks that return freed memory after each offloaded layer are gone with the evaluation
    assert not any(layer._forward_hooks for layer in placed.model.layers)


def test_batches_are_reported_and_a_cancel_stops_before_the_next():
    model = tiny_llama()
    reported = []
    perplexity(model, WINDOWS, batch_size=BATCH, on_batch=lambda done, total: reported.append((done, total)))
    assert reported == [(1, 2), (2, 2)]
    cancel = threading.Event()
    with pytest.raises(PruningCancelled):
        perplexity(model, WINDOWS, batch_size=BATCH, on_batch=lambda *_: cancel.set(), cancel=cancel)
