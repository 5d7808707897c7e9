"""Latency and memory of a model on the current device: prefill time for one window, decode
throughput with a KV cache, parameter count, weight memory and the memory one prefill takes, each timed after
warm-up and reported as median with spread (min/max). Models that are compared are timed in
alternation, so dense and pruned see the same machine and compare honestly."""

from __future__ import annotations

import inspect
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from spap_core.errors import PruningCancelled
from spap_core.models.adapters import model_adapter, text_config
from spap_core.models.adapters.projections import is_projection, projection_shape

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float
    repeats: int


@dataclass(frozen=True)
class PrefillMemory:
    """What the memory measured around one prefill is on a device, in words: a row label and its meaning."""

    label: str
    meaning: str


PREFILL_MEMORY = {  # by how it is measured: an allocator's peak on CUDA, resident memory sampled on a CPU
    "cuda": PrefillMemory("GPU peak during one prefill",
                          "the most GPU memory allocated while one prefill ran: the weights plus that forward "
                          "pass's activations"),
    "cpu": PrefillMemory("RAM growth during one prefill",
                         "how much the process's resident memory grew while one prefill ran: that forward pass's "
                         "activations and buffers, not the model's own memory (its weights were resident before), "
                         "so it is small and noisy"),
    "unavailable": PrefillMemory("RAM growth during one prefill (not measured)",
                                 "not measured: this system does not report a process's resident memory"),
}


@dataclass(frozen=True)
class LatencyReport:
    device: str
    threads: int
    seqlen: int
    prefill_ms: Timing
    decode_tokens_per_s: Timing
    parameters: int
    weight_mb: float  # the parameters' bytes: the model's own memory
    prefill_memory_mb: float
    prefill_memory_kind: str  # a key of PREFILL_MEMORY
    linear_gflops_per_token: float
    attention_gflops_per_token: float  # at `seqlen` tokens of context

    @property
    def prefill_memory(self) -> PrefillMemory:
        return PREFILL_MEMORY[self.prefill_memory_kind]

    @property
    def prefill_gflops_per_token(self) -> float:
        return self.linear_gflops_per_token + self.attention_gflops_per_token

    def to_dict(self) -> dict:
        return asdict(self)


def linear_flops_per_token(model: nn.Module) -> float:
    """2·in·out summed over every projection (Linear, and GPT-2's Conv1D): the part of the work that
    pruning shrinks."""
    return float(sum(2 * out * inp for out, inp in (projection_shape(m) for m in model.modules() if is_projection(m))))


def attention_flops_per_token(model: nn.Module, seqlen: int) -> float:
    """The context term of Kaplan et al. (2020), 2·n_layer·n_ctx·d_attn: the QKᵀ and attention-value
    products of a token against a `seqlen`-token context. Pruning the MLPs leaves it unchanged, but
    it is work the forward pass does, so a FLOPs ratio without it would promise more than pruning
    can deliver."""
    config = text_config(model)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2.0 * config.num_hidden_layers * seqlen * heads * head_dim


FLOP_PARTS = ("MLP projections", "attention projections", "attention context (QKᵀ, AV)", "embeddings and head")


def prefill_flops_by_part(model: nn.Module, seqlen: int) -> dict[str, float]:
    """GFLOPs per token of a `seqlen`-token prefill, by where they are spent (FLOP_PARTS): the MLPs'
    projections and the attention's, which pruning channels and heads shrink, the attention's
    context products, which grow with the context and shrink only with heads, and the rest."""
    family = model_adapter(model)
    layers = family.decoder_layers(model)

    def flops(modules) -> float:
        return sum(2.0 * out * inp for out, inp in (projection_shape(m) for m in modules if is_projection(m)))

    mlp = sum(flops(family.mlp_channels.modules(layer)) for layer in layers)
    attention = sum(flops(family.attention(layer).modules()) for layer in layers)
    values = (mlp, attention, attention_flops_per_token(model, seqlen), linear_flops_per_token(model) - mlp - attention)
    return {part: value / 1e9 for part, value in zip(FLOP_PARTS, values)}


def context_where_attention_matches_mlp(model: nn.Module) -> int:
    """The context length at which a token's attention context products cost as much as the MLPs'
    projections: beyond it, the heads are the larger share of a prefill."""
    per_token_of_context = attention_flops_per_token(model, 1)
    return round(prefill_flops_by_part(model, 1)[FLOP_PARTS[0]] * 1e9 / per_token_of_context)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters (model.parameters() yields tied embeddings once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _summary(samples: list[float]) -> Timing:
    return Timing(median=statistics.median(samples), low=min(samples), high=max(samples), repeats=len(samples))


def cache_keyword(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` in the forward signature (5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _RssPeak:
    """Samples the process's resident memory in a thread: CPU has no allocator peak counter."""

    def __init__(self) -> None:
        self.peak = self.baseline = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _prefill_memory_mb(model: nn.Module, ids: torch.Tensor, device: torch.device) -> tuple[float, str]:
    """The memory measured around one prefill, in MB, and how it was measured (a key of PREFILL_MEMORY)."""
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            model(input_ids=ids, use_cache=False)
            _sync(device)
            return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
        if not os.path.exists("/proc/self/statm"):
            return float("nan"), "unavailable"
        with _RssPeak() as sampler:
            model(input_ids=ids, use_cache=False)
        return (sampler.peak - sampler.baseline) / 2**20, "cpu"


def _timed_rounds(models: Sequence[nn.Module], timed: Callable[[nn.Module], float], repeats: int, warmup: int,
                  cancel: threading.Event | None) -> list[list[float]]:
    """Run `timed` on every model once per round, rotating which goes first, so that a drift in the
    machine's speed (other tenants, clock boost, thermal state) hits every model alike instead of
    whichever happened to be measured during the slow minute."""
    samples: list[list[float]] = [[] for _ in models]
    for attempt in range(warmup + repeats):
        if cancel is not None and cancel.is_set():
            raise PruningCancelled("latency measurement cancelled")
        for offset in range(len(models)):
            index = (attempt + offset) % len(models)
            value = timed(models[index])
            if attempt >= warmup:
                samples[index].append(value)
    return samples


def measure_latencies(models: Sequence[PreTrainedModel], seqlen: int = 512, decode_tokens: int = 32, repeats: int = 5,
                      warmup: int = 2, vocab_size: int | None = None, seed: int = 0,
                      cancel: threading.Event | None = None) -> list[LatencyReport]:
    """Time prefill of one `seqlen`-token window and greedy decoding of `decode_tokens` tokens for each
    model, alternating between the models round by round (see `_timed_rounds`); all models must share
    the vocabulary and live on one device. Setting `cancel` stops between two timings."""
    device = next(models[0].parameters()).device
    vocab = vocab_size or models[0].config.vocab_size
    ids = torch.randint(0, vocab, (1, seqlen), generator=torch.Generator().manual_seed(seed)).to(device)
    prompt = ids[:, : min(32, seqlen)]

    def prefill_ms(model: nn.Module) -> float:
        _sync(device)
        started = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        _sync(device)
        return (time.perf_counter() - started) * 1e3

    def decode_tokens_per_s(model: nn.Module) -> float:
        keyword = cache_keyword(model)
        out = model(input_ids=prompt, use_cache=True)
        cache, token = getattr(out, keyword), out.logits[:, -1:].argmax(-1)
        _sync(device)
        started = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=token, use_cache=True, **{keyword: cache})
            cache, token = getattr(out, keyword), out.logits[:, -1:].argmax(-1)
        _sync(device)
        return decode_tokens / (time.perf_counter() - started)

    with torch.no_grad():
        prefill = _timed_rounds(models, prefill_ms, repeats, warmup, cancel)
        decode = _timed_rounds(models, decode_tokens_per_s, repeats, warmup, cancel)
    reports = []
    for model, prefill_samples, decode_samples in zip(models, prefill, decode):
        memory, memory_kind = _prefill_memory_mb(model, ids, device)
        reports.append(LatencyReport(
            device=str(device), threads=torch.get_num_threads(), seqlen=seqlen,
            prefill_ms=_summary(prefill_samples), decode_tokens_per_s=_summary(decode_samples),
            parameters=sum(p.numel() for p in model.parameters()), weight_mb=weight_bytes(model) / 2**20,
            prefill_memory_mb=memory, prefill_memory_kind=memory_kind,
            linear_gflops_per_token=linear_flops_per_token(model) / 1e9,
            attention_gflops_per_token=attention_flops_per_token(model, seqlen) / 1e9,
        ))
    return reports


def latency_ratios(dense: LatencyReport, pruned: LatencyReport) -> dict[str, float]:
    """Dense ÷ pruned, measured next to theoretical (> 1 means the pruned model is better). The
    theoretical FLOPs ratio is that of the whole prefill (Linear layers and attention context);
    the Linear-only ratio, the upper bound if attention cost nothing, is given beside it."""
    return {
        "prefill_speedup": dense.prefill_ms.median / pruned.prefill_ms.median,
        "decode_speedup": pruned.decode_tokens_per_s.median / dense.decode_tokens_per_s.median,
        "theoretical_flops_ratio": dense.prefill_gflops_per_token / pruned.prefill_gflops_per_token,
        "linear_flops_ratio": dense.linear_gflops_per_token / pruned.linear_gflops_per_token,
        "weight_memory_ratio": dense.weight_mb / pruned.weight_mb,
        "theoretical_params_ratio": dense.parameters / pruned.parameters,
    }
