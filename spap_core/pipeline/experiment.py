"""One pruning experiment: prune, then measure dense and pruned perplexity on the same windows; with a
recovery, the pruned perplexity is measured before it (`before_recovery`) and after it (`pruned`).
A cancel during the recovery keeps the pruned model as it was before it, measured once (`pruned`),
and says so (`recovery_cancelled`); a cancel anywhere else discards the experiment (PruningCancelled).

The run API (spap_core.runner.execute), which the CLI, the app's run and sweep jobs and the benchmarks
all call, goes through here, so a number shown in the browser and one printed by
`python -m spap_core prune` come from the same code path and carry the same record fields.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from spap_core.errors import SpapInputError
from spap_core.evaluation.perplexity import PerplexityResult, perplexity
from spap_core.methods.base import MethodStep
from spap_core.methods.reconstruction import reconstruction_name
from spap_core.methods.registry import PruneSettings, settings_for_family
from spap_core.models.loading import LoadedModel, context_length
from spap_core.pipeline.budget import check_fits, check_recovery_fits
from spap_core.pipeline.walk import LayerCallback, PruneResult, check_prunable, head_layout, prune_model
from spap_core.recovery.distill import DenseLogits, dense_logits
from spap_core.recovery.loop import (
    HELDOUT_WINDOWS,
    RecoveryCancelled,
    RecoveryResult,
    RecoveryStep,
    check_recoverable,
    recover,
)
from spap_core.recovery.settings import RecoverySettings

BatchCallback = Callable[[int, int], None]


@dataclass
class Experiment:
    result: PruneResult
    dense: PerplexityResult
    pruned: PerplexityResult
    prune_seconds: float
    eval_seconds: float
    dense_seconds: float  # 0 when the dense perplexity was passed in (cached)
    adjustments: list[str] = field(default_factory=list)  # what plan_run changed, in words
    # the pruned model's perplexity before its recovery (`pruned` is after it) and the recovery; None without one
    before_recovery: PerplexityResult | None = None
    recovery: RecoveryResult | None = None
    # a recovery stopped by the cancel: `pruned` is then the model as it was before it, and there is no `recovery`
    recovery_cancelled: RecoveryCancelled | None = None

    def record(self, loaded: LoadedModel, **context: object) -> dict:
        """The JSON-able summary written with every run; `context` adds where the data came from.
        `ppl` is the final model's; with a recovery, `ppl_before_recovery` (its interval and window
        losses beside it, as `ppl` has them) is the pruned model's before it, and `recovery` what it did.
        A cancelled recovery leaves both None (the model was not recovered) and `recovery_cancelled`
        says how far it went (RecoveryCancelled.record)."""
        result = self.result
        before = self.before_recovery
        return {
            "method": result.settings.method, "sparsity": result.settings.sparsity,
            "reconstruction": reconstruction_name(result.settings.reconstruction),
            "allocation": result.settings.allocation,
            "layer_widths": [len(layer.keep) for layer in result.layers],
            "ppl": self.pruned.perplexity, "ppl_dense": self.dense.perplexity,
            "ppl_ci95": self.pruned.ci95, "ppl_dense_ci95": self.dense.ci95,
            "window_nll": list(self.pruned.window_nll), "window_nll_dense": list(self.dense.window_nll),
            "relative_error": result.relative_error,
            "mean_layer_error": result.mean_layer_error,
            "prune_seconds": self.prune_seconds, "eval_seconds": self.eval_seconds,
            "dense_eval_seconds": self.dense_seconds, "timings": result.timings,
            "params_before": result.params_before, "params_after": result.params_after,
            "eval_tokens": self.pruned.tokens, "eval_windows": self.pruned.windows, "eval_len": self.pruned.seqlen,
            "calibration_tokens": result.calibration_tokens,
            "model": loaded.description, "device": str(loaded.device), "threads": torch.get_num_threads(),
            "settings": asdict(result.settings),
            "layer_objectives": [layer.objective for layer in result.layers],
            "heads": None if result.heads is None else {
                "layout": asdict(result.heads.layout), "head_dim": result.heads.head_dim,
                "layer_objectives": [layer.objective for layer in result.heads.layers]},
            "adjustments": self.adjustments,
            "ppl_before_recovery": None if before is None else before.perplexity,
            "ppl_before_recovery_ci95": None if before is None else before.ci95,
            "window_nll_before_recovery": [] if before is None else list(before.window_nll),
            "recovery": None if self.recovery is None else self.recovery.record(),
            "recovery_cancelled": None if self.recovery_cancelled is None else self.recovery_cancelled.record(),
            **context,
        }


def plan_run(loaded: LoadedModel, settings: PruneSettings, window_lengths: Iterable[int],
             calibration_tokens: int | None = None, batch_size: int = 4,
             copies_model: bool = True, recovery: RecoverySettings | None = None) -> tuple[PruneSettings, list[str]]:
    """Every refusal that depends only on the arguments, the model's config and the method, and
    the settings the run will use (with a note for each change), before any forward pass: the run
    API (spap_core.runner.execute) calls it before it cuts any window, the app before it queues a job,
    run_experiment first.
    With `calibration_tokens`, a run that cannot fit in the device's free memory is refused too, its
    `recovery` after pruning included (the calibration's first window length is the recovery's)."""
    window_lengths = tuple(window_lengths)
    positions = context_length(loaded.model)
    for length in window_lengths:
        if positions is not None and length > positions:
            raise SpapInputError(f"Windows of {length} tokens are longer than the model's {positions} positions; "
                                 f"use at most {positions} tokens per window.")
    settings, adjustments = settings_for_family(settings, loaded.family)
    check_prunable(loaded, settings)
    layout = head_layout(loaded, settings)
    if layout is not None and abs(layout.removed - settings.head_sparsity * layout.heads) > 1e-9:
        adjustments.append(f"Head sparsity {settings.head_sparsity:.0%} removes "
                           f"{layout.removed} of {layout.heads} heads "
                           f"({layout.removed / layout.heads:.0%}) from every layer, the nearest layout the model's "
                           f"attention can hold ({layout.describe()}).")
    if calibration_tokens is not None:
        explicit = settings.recovery is not None or settings.implementation.target_correction(settings.options) > 0
        longest = max(window_lengths, default=0)
        measures = settings.implementation.gradient_windows(settings.options) > 0
        allocates = settings.allocation_strategy.gradient_windows(settings.allocation_options) > 0
        backward_window = longest if allocates or measures else 0
        check_fits(loaded, calibration_tokens, batch_size, longest, explicit, copies_model, backward_window,
                   weight_gradients=measures)
        if recovery is not None and recovery.enabled and window_lengths:
            seqlen = window_lengths[0]
            check_recovery_fits(loaded, recovery, max(1, calibration_tokens // seqlen), seqlen, copies_model)
    return settings, adjustments


def run_experiment(
    loaded: LoadedModel,
    calibration: torch.Tensor,
    evaluation: torch.Tensor,
    settings: PruneSettings,
    *,
    seed: int = 0,
    batch_size: int = 4,
    dense: PerplexityResult | None = None,
    inplace: bool = False,
    on_layer: LayerCallback | None = None,
    on_step: Callable[[MethodStep], None] | None = None,
    on_dense_batch: BatchCallback | None = None,
    on_pruned_batch: BatchCallback | None = None,
    cancel: threading.Event | None = None,
    recovery: RecoverySettings | None = None,
    on_recovery_step: Callable[[RecoveryStep], None] | None = None,
) -> Experiment:
    """Dense perplexity (unless given), pruning, pruned perplexity, each timed on its own; every
    forward pass (calibration and evaluation) takes `batch_size` windows at a time. The settings
    first go through plan_run, so a refusal comes before any forward pass. With an enabled
    `recovery`, the pruned model is then recovered on the calibration windows (the dense model's
    logits taken before the pruning when it distils; a held-out perplexity on the first
    HELDOUT_WINDOWS evaluation windows) and measured again.

    `cancel` discards the run (PruningCancelled) before and during the dense logits, the pruning and
    the pruned perplexity. During the recovery it stops the recovery only: the experiment returns
    the pruned model as it was before it, with the perplexity already measured, and
    `recovery_cancelled`; the perplexity after a recovery is not measured (the cancel stays set)."""
    settings, adjustments = plan_run(loaded, settings, (calibration.shape[-1], evaluation.shape[-1]),
                                     calibration_tokens=calibration.numel(), batch_size=batch_size,
                                     copies_model=not inplace, recovery=recovery)
    recovery = recovery if recovery is not None and recovery.enabled else None
    if recovery is not None:
        check_recoverable(loaded.model, recovery, calibration_synthetic=False)
    with _teacher(loaded, calibration, recovery, batch_size, cancel) as teacher:
        experiment = _prune_and_measure(loaded, calibration, evaluation, settings, adjustments, seed=seed,
                                        batch_size=batch_size, dense=dense, inplace=inplace, on_layer=on_layer,
                                        on_step=on_step, on_dense_batch=on_dense_batch,
                                        on_pruned_batch=on_pruned_batch, cancel=cancel)
        if recovery is None:
            return experiment
        model = experiment.result.model
        assert model is not None  # prune_model returns its model
        try:
            experiment.recovery = recover(model, loaded.family, calibration, recovery, seed=seed, teacher=teacher,
                                          heldout=evaluation[:HELDOUT_WINDOWS], on_step=on_recovery_step,
                                          cancel=cancel)
        except RecoveryCancelled as stopped:
            # without its traceback, whose frames would keep the recovery's optimizer and adapters alive
            experiment.recovery_cancelled = stopped.with_traceback(None)
            return experiment
    started = time.perf_counter()
    experiment.before_recovery = experiment.pruned
    experiment.pruned = perplexity(model, evaluation, batch_size=batch_size, on_batch=on_pruned_batch,
                                   cancel=cancel)
    experiment.eval_seconds += time.perf_counter() - started
    return experiment


@contextlib.contextmanager
def _teacher(loaded: LoadedModel, calibration: torch.Tensor, recovery: RecoverySettings | None, batch_size: int,
             cancel: threading.Event | None) -> Iterator[DenseLogits | None]:
    """The dense model's logits on the calibration windows, taken before any layer is pruned, for a
    recovery that distils (None for any other run), kept until the block ends."""
    if recovery is None or not recovery.distills:
        yield None
        return
    with dense_logits(loaded.model, calibration, batch_size, cancel) as logits:
        yield logits


def _prune_and_measure(loaded: LoadedModel, calibration: torch.Tensor, evaluation: torch.Tensor,
                       settings: PruneSettings, adjustments: list[str], *, seed: int, batch_size: int,
                       dense: PerplexityResult | None, inplace: bool, on_layer: LayerCallback | None,
                       on_step: Callable[[MethodStep], None] | None, on_dense_batch: BatchCallback | None,
                       on_pruned_batch: BatchCallback | None, cancel: threading.Event | None) -> Experiment:
    """Dense perplexity (unless given), pruning and pruned perplexity of planned `settings`."""
    dense_seconds = 0.0
    if dense is None:
        started = time.perf_counter()
        dense = perplexity(loaded.model, evaluation, batch_size=batch_size, on_batch=on_dense_batch, cancel=cancel)
        dense_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = prune_model(loaded, calibration, settings, seed=seed, batch_size=batch_size, inplace=inplace,
                         on_layer=on_layer, on_step=on_step, cancel=cancel)
    prune_seconds = time.perf_counter() - started
    assert result.model is not None  # prune_model returns its model (only a run read back from disk has none)
    started = time.perf_counter()
    pruned = perplexity(result.model, evaluation, batch_size=batch_size, on_batch=on_pruned_batch, cancel=cancel)
    return Experiment(result=result, dense=dense, pruned=pruned, prune_seconds=prune_seconds,
                      eval_seconds=time.perf_counter() - started, dense_seconds=dense_seconds, adjustments=adjustments)
