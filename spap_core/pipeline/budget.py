"""Whether a run fits the machine, estimated from the model's shapes before any work: the largest
buffers of the sequential walk and of the evaluation, against the memory free on the model's
device. A run that cannot fit is refused in one line instead of swapping for an hour."""

from __future__ import annotations

import os

import torch

from spap_core.errors import SpapInputError
from spap_core.evaluation.perplexity import chunk_tokens_for
from spap_core.models.adapters import text_config
from spap_core.models.loading import LoadedModel
from spap_core.recovery.distill import DENSE_LOGITS_IN_MEMORY_BYTES
from spap_core.recovery.settings import RecoverySettings

FLOAT_BYTES = 4
FREE_SHARE = 0.8  # leave room for the allocator, the interpreter and the rest of the machine


def run_bytes(loaded: LoadedModel, calibration_tokens: int, batch_size: int, eval_len: int, explicit_targets: bool,
              copies_model: bool, backward_window: int = 0, weight_gradients: bool = False) -> int:
    """The walk keeps, for every calibration token, the layer's input, the residual base and the MLP
    intermediate (and the MLP input and target when a recovery step or corrected targets need them),
    plus one layer's Gram matrix in float64 and float32; the evaluation holds one chunk of logits
    and its log-softmax (spap_core.evaluation.perplexity computes the loss a chunk of tokens at a time).
    A Fisher allocation or a method that measures on the dense model (Taylor) first backpropagates
    one window of `backward_window` tokens through the whole model while the calibration inputs are
    held (_backward_bytes); with `weight_gradients`, it also keeps the decoder layers' summed
    gradients in float32 beside one window's own."""
    config = text_config(loaded.model)
    family = loaded.family
    width = _widest_mlp(loaded)
    hidden, vocab = config.hidden_size, config.vocab_size
    per_token = (2 * hidden + width + (2 * hidden if explicit_targets else 0)) * FLOAT_BYTES
    gram = (width + 1) ** 2 * (8 + 4)
    logits = 2 * min(batch_size * eval_len, chunk_tokens_for(vocab)) * vocab * FLOAT_BYTES
    model = _model_bytes(loaded) if copies_model else 0
    gradients = (2 * FLOAT_BYTES * sum(p.numel() for layer in family.decoder_layers(loaded.model)
                                       for p in layer.parameters()) if weight_gradients else 0)
    return (calibration_tokens * per_token + gram + logits + model + gradients
            + _backward_bytes(loaded, width, backward_window))


def _widest_mlp(loaded: LoadedModel) -> int:
    """The widest MLP of the decoder layers, in channels."""
    family = loaded.family
    return max(family.mlp_channels.width(layer) for layer in family.decoder_layers(loaded.model))


def _model_bytes(loaded: LoadedModel) -> int:
    """The model's weights in their own dtypes: what a copy of it holds."""
    return sum(p.numel() * p.element_size() for p in loaded.model.parameters())


def _backward_bytes(loaded: LoadedModel, width: int, window: int) -> int:
    """What autograd keeps for one window's backward pass: per token and layer about 16 hidden-size
    vectors, 4 of the MLP width and one attention row per head, plus five copies of the logits.
    On SmolLM2 at 512 tokens this gives 1650 MiB; the measured peak was 1615 MiB."""
    config = text_config(loaded.model)
    per_token_and_layer = 16 * config.hidden_size + 4 * width + config.num_attention_heads * window
    layers = len(loaded.family.decoder_layers(loaded.model))
    return window * (layers * per_token_and_layer + 5 * config.vocab_size) * FLOAT_BYTES


def recovery_bytes(loaded: LoadedModel, recovery: RecoverySettings, windows: int, seqlen: int,
                   copies_model: bool) -> int:
    """A recovery's peak, after the walk has let its buffers go: the pruned copy (counted at the dense
    size), one step's backward pass over its `min(batch, windows)` windows of `seqlen` tokens
    (_backward_bytes for each), the adapters' weights, gradients and AdamW's two moments (rank × (rows +
    columns) of every decoder-layer matrix, in float32: an upper bound, whichever projections they
    wrap), and when it distils the step's teacher logits and their softened copies (three more
    float32 logits per token) and the dense logits when they stay in memory (DenseLogits)."""
    config = text_config(loaded.model)
    family = loaded.family
    width = _widest_mlp(loaded)
    batch = min(recovery.batch, windows)
    model = _model_bytes(loaded) if copies_model else 0
    adapters = 4 * FLOAT_BYTES * recovery.rank * sum(
        sum(p.shape) for layer in family.decoder_layers(loaded.model) for p in layer.parameters() if p.dim() == 2)
    teacher = 0
    if recovery.distills:
        logits_bytes = windows * seqlen * config.vocab_size * FLOAT_BYTES
        teacher = (3 * batch * seqlen * config.vocab_size * FLOAT_BYTES
                   + (logits_bytes if logits_bytes <= DENSE_LOGITS_IN_MEMORY_BYTES else 0))
    return model + batch * _backward_bytes(loaded, width, seqlen) + adapters + teacher


def check_recovery_fits(loaded: LoadedModel, recovery: RecoverySettings, windows: int, seqlen: int,
                        copies_model: bool) -> None:
    """Refuse a recovery whose peak (recovery_bytes) the device's free memory cannot hold."""
    needed = recovery_bytes(loaded, recovery, windows, seqlen, copies_model)
    free = free_bytes(loaded.device)
    if free is not None and needed > FREE_SHARE * free:
        raise SpapInputError(
            f"The recovery after pruning needs about {needed / 2**30:.1f} GiB on {loaded.device} for a step of "
            f"{min(recovery.batch, windows)} windows of {seqlen} tokens, and {free / 2**30:.1f} GiB is free: use "
            "fewer windows per step (--recover-batch), shorter windows or a lower rank.")


def free_bytes(device: torch.device) -> int | None:
    """Memory free on the device now (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(loaded: LoadedModel, calibration_tokens: int, batch_size: int, eval_len: int, explicit_targets: bool,
               copies_model: bool, backward_window: int = 0, weight_gradients: bool = False) -> None:
    needed = run_bytes(loaded, calibration_tokens, batch_size, eval_len, explicit_targets, copies_model,
                       backward_window, weight_gradients)
    free = free_bytes(loaded.device)
    if free is not None and needed > FREE_SHARE * free:
        raise SpapInputError(
            f"This run needs about {needed / 2**30:.1f} GiB on {loaded.device} for {calibration_tokens:,} calibration "
            f"tokens, and {free / 2**30:.1f} GiB is free: use fewer samples or shorter windows.")
