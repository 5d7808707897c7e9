"""How long a run, a sweep, a scan or a latency measurement will take, said before it starts: the
model's forward throughput and the time of one factorisation of its MLP's width are measured once
on this machine (a fraction of a second), and the work of each job is counted in dense forward
passes over its tokens plus, for the per-layer solves, in factorisations, with the ratios measured
for SmolLM2 on the development VM. The pages show the estimate before the job and the
measured time next to it afterwards, so a wrong estimate is seen, not hidden."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import torch

from spap_core.models.loading import LoadedModel
from spap_core.recovery.loop import HELDOUT_WINDOWS
from spap_core.recovery.settings import RecoverySettings
from spap_service.cache import BoundedCache
from spap_service.data import model_key
from spap_service.runs import RunRequest

# One pruning run has two parts. Its calibration forward (hooks, statistics, the propagation to the
# next layer) costs about 1.42 dense passes over its calibration tokens, for SPAP and FLAP alike
# (SmolLM2 on the 2-core VM at 8 × 256 tokens: capture + propagation 3.95 s / 4.02 s;
# docs/spap-design.md). Its per-layer solves cost the same whatever the calibration size, so they
# are counted in factorisations (Cholesky and inverse) of the MLP's width, timed on this machine,
# times the method's own count per layer (PruningMethod.solve_factorisations, measured where each
# method declares it); counted as passes, they would make the estimate grow with the calibration
# where the solves do not (23% short at 8 × 256).
CAPTURE_PASSES = 1.42
# A round of alternating minimization: its exact refit over every calibration token (0.82 passes,
# the recovery's floor in speed.md), the refit's factorisations (5.6 per layer), and its Adam steps,
# whose cost does not depend on the calibration size: each of their tokens costs about 0.6 of a
# forward token. Fitted to SmolLM2's CPU rounds at 8, 16 and 32 × 256 calibration tokens (18.1, 21.1
# and 25.1 s: 0.79 passes per calibration token; docs/spap-design.md).
REFIT_PASSES = 0.82
REFIT_FACTORISATIONS = 5.6
# The heads' step (each layer's attention run up to its output projection, then the method on the
# heads): 2.2 s of a SPAP run at a third of SmolLM2's heads, 8 × 256 calibration tokens on the 2-core
# VM, where one dense pass over those tokens takes 4.1 s.
HEAD_PASSES = 0.54
# A parameter budget's split: one dense pass over the calibration with each layer's statistics
# captured (counted as the run's own capture, CAPTURE_PASSES; not measured on its own), and then a
# run that may prune heads (counted as one that does).
FORWARD_TOKENS_PER_ADAM_TOKEN = 0.6
# A token that is backpropagated costs about 2 forward tokens: a recovery step after pruning
# (spap_core.recovery, its LoRA adapters' gradients only, the base weights frozen), the Fisher
# allocation's sensitivities and Taylor's importances before the walk (PruningMethod.gradient_windows,
# Allocation.gradient_windows). Measured for the last two on SmolLM2 (2 windows of 512 tokens on the
# 2-core VM, which a benchmark shared): Fisher 2.2 and Taylor 1.9 dense forward passes
# (docs/spap-design.md). The pages show the measured time beside the estimate, so a wrong constant is seen.
FORWARD_TOKENS_PER_BACKWARD_TOKEN = 2.0
OVERHEAD_S = 1.0  # tokenizing the texts and cutting the windows
PROBE_TOKENS = 128
FACTORISATION_PROBE_WIDTH = 4096


@dataclass(frozen=True)
class ModelSpeed:
    """What one forward pass costs this model on this machine now."""

    tokens_per_s: float  # full forward (logits included) on windows of PROBE_TOKENS tokens
    step_s: float  # one forward of a single token: about one decoding step
    factorisation_s: float = 0.0  # a Cholesky factorisation and inverse of the MLP's width, float32
    layers: int = 0  # decoder layers, each with its own solves


_speeds = BoundedCache(max_entries=8)


def model_speed(loaded: LoadedModel) -> ModelSpeed:
    """Measured on first use per model (a warm-up and one timed pass of 2 × 128 tokens, then a few
    single-token passes), then kept."""
    key = model_key(loaded)
    if (known := _speeds.get(key)) is not None:
        return known
    # transformers types the input embeddings as any module; a causal LM's are a token nn.Embedding
    vocab = cast(torch.nn.Embedding, loaded.model.get_input_embeddings()).num_embeddings
    ids = torch.randint(0, vocab, (2, PROBE_TOKENS), generator=torch.Generator().manual_seed(0)).to(loaded.device)
    with torch.no_grad():
        loaded.model(input_ids=ids[:1, :16])
        started = time.perf_counter()
        loaded.model(input_ids=ids)
        tokens_per_s = ids.numel() / (time.perf_counter() - started)
        started = time.perf_counter()
        for index in range(4):
            loaded.model(input_ids=ids[:1, index : index + 1])
        step_s = (time.perf_counter() - started) / 4
    layers = loaded.family.decoder_layers(loaded.model)
    width = loaded.family.mlp_channels.width(layers[0])
    speed = ModelSpeed(tokens_per_s, step_s, _factorisation_seconds(width, loaded.device), len(layers))
    _speeds.put(key, speed)
    return speed


def _factorisation_seconds(width: int, device: torch.device) -> float:
    """One Cholesky factorisation and inverse of a width × width matrix in float32, as the solvers
    do per layer (after a warm-up one). Beyond FACTORISATION_PROBE_WIDTH it is timed at that width
    and scaled by the cube (a 14336-wide MLP would take half a minute to time on a CPU)."""
    probe = min(width, FACTORISATION_PROBE_WIDTH)
    noise = torch.rand(probe, probe, generator=torch.Generator().manual_seed(0)).to(device)
    matrix = (noise + noise.T) / 2 + probe * torch.eye(probe, device=device)  # diagonally dominant: definite

    def factorise() -> None:
        torch.cholesky_inverse(torch.linalg.cholesky(matrix))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    factorise()
    started = time.perf_counter()
    factorise()
    return (time.perf_counter() - started) * (width / probe) ** 3


def run_seconds(speed: ModelSpeed, request: RunRequest, dense_cached: bool = False,
                eval_tokens: int | None = None) -> float:
    """One run: pruning (its calibration forward in dense passes over its calibration tokens, the
    backward passes of a method or allocation that measures the dense model first, its solves in
    factorisations per layer) plus the pruned model's perplexity and, unless cached, the
    dense model's. `eval_tokens` when the evaluation is the whole text (eval_windows 0), whose
    length the request does not say."""
    settings, data = request.settings, request.data
    calibration = data.nsamples * data.seqlen
    factorisations = settings.implementation.solve_factorisations * speed.layers
    forward_tokens = CAPTURE_PASSES * calibration
    if request.budget is not None:
        forward_tokens += CAPTURE_PASSES * calibration
    if settings.head_sparsity > 0 or request.budget is not None:
        forward_tokens += HEAD_PASSES * calibration
    gradient_windows = (settings.implementation.gradient_windows(settings.options)
                        + settings.allocation_strategy.gradient_windows(settings.allocation_options))
    forward_tokens += min(gradient_windows, data.nsamples) * data.seqlen * FORWARD_TOKENS_PER_BACKWARD_TOKEN
    if (recovery := settings.recovery) is not None:
        adam_tokens = recovery.altmin.steps * recovery.altmin.batch_tokens
        factorisations += recovery.altmin.rounds * REFIT_FACTORISATIONS * speed.layers
        forward_tokens += recovery.altmin.rounds * (REFIT_PASSES * calibration
                                                    + FORWARD_TOKENS_PER_ADAM_TOKEN * adam_tokens)
    evaluated = _evaluated_tokens(request, eval_tokens)
    forward_tokens += (1 if dense_cached else 2) * evaluated
    forward_tokens += recovery_forward_tokens(request.recovery, data.nsamples, data.seqlen, data.eval_len, evaluated)
    return OVERHEAD_S + forward_tokens / speed.tokens_per_s + factorisations * speed.factorisation_s


def _evaluated_tokens(request: RunRequest, eval_tokens: int | None) -> int:
    """The tokens one perplexity of the run reads: `eval_tokens` when the evaluation is the whole text."""
    data = request.data
    return eval_tokens if data.eval_windows == 0 and eval_tokens else data.eval_windows * data.eval_len


def recovery_seconds(speed: ModelSpeed, request: RunRequest, eval_tokens: int | None = None) -> float:
    """The part of run_seconds that the request's recovery after pruning takes (0 without one)."""
    data = request.data
    return recovery_forward_tokens(request.recovery, data.nsamples, data.seqlen, data.eval_len,
                                   _evaluated_tokens(request, eval_tokens)) / speed.tokens_per_s


def recovery_forward_tokens(recovery: RecoverySettings, windows: int, seqlen: int, eval_len: int,
                            evaluated: int) -> float:
    """A recovery's work in dense forward tokens: its steps (FORWARD_TOKENS_PER_BACKWARD_TOKEN per
    token of `batch` windows of `seqlen`, at most the calibration's `windows`), the dense logits
    once over the calibration when it distils, the held-out perplexity (HELDOUT_WINDOWS windows
    every `heldout_every` steps and after the last) and the pruned perplexity measured again
    after it; 0 without one."""
    if not recovery.enabled:
        return 0.0
    step_tokens = min(recovery.batch, windows) * seqlen
    heldout_measures = recovery.steps // recovery.heldout_every + (recovery.steps % recovery.heldout_every != 0)
    return (recovery.steps * step_tokens * FORWARD_TOKENS_PER_BACKWARD_TOKEN
            + (windows * seqlen if recovery.distills else 0)
            + heldout_measures * HELDOUT_WINDOWS * eval_len + evaluated)


def many_runs_seconds(speed: ModelSpeed, requests: list[RunRequest], dense_cached: bool = False) -> float:
    """A sweep's or a scan's runs, one after another; they share the dense perplexity where their
    evaluation data are the same."""
    seen: set[str] = set()
    total = 0.0
    for request in requests:
        total += run_seconds(speed, request, dense_cached or request.data.evaluation_key in seen)
        seen.add(request.data.evaluation_key)
    return total


def latency_seconds(speed: ModelSpeed, prefill_tokens: int, decode_tokens: int, repeats: int, warmup: int) -> float:
    """Both models, each timed `warmup + repeats` times on a prefill and a greedy decode (the
    pruned model counted as fast as the dense one: the estimate errs long)."""
    one = prefill_tokens / speed.tokens_per_s + decode_tokens * speed.step_s
    return 2 * (warmup + repeats) * one


def duration(seconds: float) -> str:
    """'about 40 s', 'about 3 min'."""
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {max(1, round(seconds)):.0f} s"
