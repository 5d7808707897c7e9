"""Perplexity under the literature's protocol: non-overlapping windows of the text tokenized once,
exp(total NLL / predicted tokens). The token budget is always reported with the number."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spap_core.errors import PruningCancelled
from spap_core.memory import release_freed_memory
from spap_core.offload import execution_device


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # total negative log-likelihood (nats)
    tokens: int  # predicted tokens
    windows: int
    seqlen: int


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
               on_batch: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None) -> PerplexityResult:
    """Perplexity over token windows [W, L]; each window predicts its last L−1 tokens."""
    device = execution_device(model)
    total_nll, total_tokens = 0.0, 0
    batches = windows.split(batch_size)
    with torch.no_grad():
        for index, batch in enumerate(batches):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled("evaluation cancelled")
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            total_nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            total_tokens += targets.numel()
            if on_batch is not None:
                on_batch(index + 1, len(batches))
    release_freed_memory()  # the batches' logits, before the next step allocates its own buffers
    ppl = math.exp(total_nll / total_tokens) if total_nll / total_tokens < 700 else math.inf
    return PerplexityResult(perplexity=ppl, nll=total_nll, tokens=total_tokens,
                            windows=windows.shape[0], seqlen=windows.shape[1])
