"""Perplexity under the literature's protocol: non-overlapping windows of the text tokenized once,
exp(total NLL / predicted tokens). The token budget is always reported with the number, and each
window's mean loss is kept for the 95% interval (spap_core.evaluation.intervals).

The loss is computed from the final hidden states a chunk of tokens at a time, so evaluation never
holds a batch's [windows × tokens × vocabulary] logits: at 2048-token windows and a 128k vocabulary
those are 1 GiB per window in float32, and the cross-entropy's log-softmax doubles them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.evaluation.intervals import perplexity_interval, perplexity_of
from spap_core.models.adapters import ModelAdapter, model_adapter
from spap_core.models.offload import execution_device, is_dispatched
from spap_core.system.memory import release_freed_memory

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Logits per chunk: 2**24 float32 values are 64 MiB, and the cross-entropy's log-softmax as much
# again, so evaluation adds about 128 MiB whatever the batch, window and vocabulary. Each chunk
# multiplies its tokens by the whole output embedding (which a GPU reads from memory again for every
# chunk), so a chunk should hold enough tokens to make that product efficient: this budget still
# gives 64 tokens at Gemma's 256k vocabulary, 128 at Llama 3's 128k and 341 at SmolLM2's 49k.
LOGITS_PER_CHUNK = 2**24
HEAD_CHECK_TOKENS = 8  # of the first window, on which a model taken by its layers' shape is checked


def chunk_tokens_for(vocabulary: int) -> int:
    """Tokens per chunk of logits under LOGITS_PER_CHUNK (at least one)."""
    return max(1, LOGITS_PER_CHUNK // vocabulary)


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # total negative log-likelihood (nats)
    tokens: int  # predicted tokens
    windows: int
    seqlen: int
    # each window's mean NLL (nats per predicted token, seqlen − 1 of them in every window), in window
    # order; empty for a perplexity read back from a record saved without them
    window_nll: tuple[float, ...]

    @property
    def ci95(self) -> tuple[float, float] | None:
        """The 95% interval on the perplexity over its windows; None with fewer than 2 windows kept."""
        return perplexity_interval(self.window_nll)


def perplexity(model: PreTrainedModel, windows: torch.Tensor, batch_size: int = 4,
               on_batch: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None, chunk_tokens: int | None = None) -> PerplexityResult:
    """Perplexity over token windows [W, L]; each window predicts its last L−1 tokens. Each batch of
    windows runs through the backbone (the decoder stack and its final norm) once; the family's head
    (`ModelAdapter.logits`) then turns `chunk_tokens` of its hidden states at a time into logits
    (default: chunk_tokens_for the vocabulary), whose cross-entropy is summed per window
    (_window_sums): the windows' mean losses are kept, and their sum is the NLL. A model whose type
    the adapter does not declare is first checked against its own forward (_check_head)."""
    device = execution_device(model)
    family = model_adapter(model)
    head = model.get_output_embeddings()
    step = chunk_tokens or chunk_tokens_for(head.weight.shape[0])
    total_nll, total_tokens = 0.0, 0
    predicted = windows.shape[1] - 1  # tokens each window predicts
    window_nll: list[float] = []
    batches = windows.split(batch_size)
    if family.model_type not in family.model_types:
        _check_head(model, family, windows[:1, :HEAD_CHECK_TOKENS].to(device))
    with torch.no_grad(), _memory_returned_after_each_layer(model, family.decoder_layers(model)):
        for index, batch in enumerate(batches):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled("evaluation cancelled")
            batch = batch.to(device)
            hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
            hidden = hidden.reshape(-1, hidden.shape[-1])
            targets = batch[:, 1:].reshape(-1)
            sums = torch.zeros(len(batch), dtype=torch.float64)
            with _weights_held(head):
                for start in range(0, len(targets), step):
                    logits = family.logits(model, hidden[start:start + step]).float()
                    chunk_targets = targets[start:start + step].to(logits.device)
                    losses = F.cross_entropy(logits, chunk_targets, reduction="none")
                    sums += _window_sums(losses, start, predicted, len(batch))
            total_nll += float(sums.sum())
            window_nll.extend((sums / predicted).tolist())
            total_tokens += targets.numel()
            if on_batch is not None:
                on_batch(index + 1, len(batches))
    release_freed_memory()  # the hidden states and logits chunks, before the next step allocates its own
    ppl = perplexity_of(total_nll / total_tokens)
    return PerplexityResult(perplexity=ppl, nll=total_nll, tokens=total_tokens,
                            windows=windows.shape[0], seqlen=windows.shape[1], window_nll=tuple(window_nll))


def _window_sums(losses: torch.Tensor, first_token: int, predicted: int, windows: int) -> torch.Tensor:
    """The per-token `losses` of one chunk, the batch's predicted tokens `first_token` onwards,
    summed per window of the batch (each window predicts `predicted` of them): float32 on the
    losses' device (float64 is not on every accelerator), returned as float64 on the CPU, where the
    chunks accumulate."""
    owners = torch.arange(first_token, first_token + len(losses), device=losses.device) // predicted
    sums = torch.zeros(windows, dtype=losses.dtype, device=losses.device).index_add_(0, owners, losses)
    return sums.cpu().double()


def _check_head(model: PreTrainedModel, family: ModelAdapter, ids: torch.Tensor) -> None:
    """The adapter knows the head of the model types it declares; a model it took by the shape of its
    layers may transform its logits after the output embedding (Cohere scales them, Granite divides
    them), which the chunks would leave out. So the model's own forward on a few tokens must give
    the adapter's logits, or the perplexity is refused rather than wrong."""
    with torch.no_grad():
        own = model(input_ids=ids, use_cache=False).logits.float()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        adapted = family.logits(model, hidden).float().to(own.device)
    if not torch.allclose(own, adapted, rtol=1e-4, atol=1e-4):
        raise SpapInputError(
            f"Model type '{family.model_type}' is taken by the {type(family).__name__} for the shape of its layers, "
            "but its forward computes the logits otherwise than from its output embedding (a logit scale?), so "
            "its perplexity cannot be measured here.")


@contextlib.contextmanager
def _weights_held(module: nn.Module) -> Iterator[None]:
    """An output embedding that accelerate offloads (to CPU memory or disk) loads its weights onto
    its execution device at every call, and a batch calls it once per chunk: within the block its
    weights are loaded once, and offloaded again after (so the device never holds them while the
    decoder layers run)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None or not getattr(hook, "offload", False):
        yield
        return
    hook.pre_forward(module)  # loads the weights onto the execution device
    hook.offload = False  # so calls in the block only move their inputs there
    try:
        yield
    finally:
        hook.offload = True
        hook.post_forward(module, None)  # offloads the weights again


@contextlib.contextmanager
def _memory_returned_after_each_layer(model: nn.Module, layers: nn.ModuleList) -> Iterator[None]:
    """A model placed by accelerate loads each offloaded layer's weights for its forward call and
    frees them after. glibc keeps those freed blocks in its heap and, interleaved with the
    activations, rarely reuses them: on SmolLM2 with every layer on disk (8 windows of 512, batches
    of 4) the heap grew by about 1 GiB of free blocks while 175 MiB were in use. So within the
    block, each layer's forward call ends by returning freed memory to the system."""
    if not is_dispatched(model):
        yield
        return
    handles = [layer.register_forward_hook(lambda *_: release_freed_memory()) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
