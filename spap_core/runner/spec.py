"""What one run is asked to do: its settings and sizes (RunSpec), where its token windows come from
(RunTexts, or RunData when the caller already holds the windows), an optional parameter budget, an
optional recovery after pruning, an optional zero-shot comparison, and an optional output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from spap_core.data.texts import TextSource
from spap_core.evaluation.perplexity import PerplexityResult
from spap_core.methods.registry import PruneSettings
from spap_core.recovery.settings import RecoverySettings


@dataclass(frozen=True)
class ParameterBudget:
    """Remove `share` of the decoder layers' parameters, split between MLP channels and heads by
    spap_core.pipeline.split; `head_sparsity` fixes the heads (0: untouched), None lets the split
    choose them. The split's sparsities replace those of the run's settings."""

    share: float
    head_sparsity: float | None = None


@dataclass(frozen=True)
class ZeroShotRequest:
    """Zero-shot accuracy (lm-eval) of the dense and the pruned model on `tasks`; `limit` keeps each
    task's first examples, `task_paths` are folders of task YAML files."""

    tasks: tuple[str, ...]
    limit: int | None = None
    task_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOutput:
    """The folder that receives the pruned model and the run record, whole or not at all;
    `overwrite` lets a complete new folder replace a non-empty one."""

    folder: Path
    overwrite: bool = False


@dataclass(frozen=True)
class RunSpec:
    """One run: the settings, the calibration and evaluation sizes (`eval_windows` None: the whole
    evaluation text), the seed of the calibration windows and of the method, and the batch of
    windows each forward pass takes. `inplace` prunes the loaded model itself (the CLI, which
    needs no dense copy) instead of a copy (the app and the benchmarks, which prune one model
    many times). `recovery` trains the pruned model on the calibration windows before it is
    evaluated (none by default)."""

    settings: PruneSettings
    nsamples: int
    seqlen: int
    seed: int
    eval_len: int
    eval_windows: int | None
    batch_size: int
    budget: ParameterBudget | None = None
    zeroshot: ZeroShotRequest | None = None
    inplace: bool = False
    output: RunOutput | None = None
    recovery: RecoverySettings = RecoverySettings()


@dataclass(frozen=True)
class RunTexts:
    """The run's texts as read before the model loaded; a missing one (None) is sampled from the
    model. The run cuts the token windows from them."""

    calibration: TextSource | None
    evaluation: TextSource | None


@dataclass(frozen=True)
class RunData:
    """The texts and the token windows cut from them with the spec's sizes: calibration [N, L]
    and evaluation [W, L] token ids."""

    calibration_source: TextSource
    evaluation_source: TextSource
    calibration: torch.Tensor
    evaluation: torch.Tensor


@dataclass(frozen=True)
class MeasuredDense:
    """The dense perplexity on the run's evaluation windows, measured by the caller (the app keeps
    one per model and text): how long it took (0 when taken from a cache) and whether it was."""

    result: PerplexityResult
    seconds: float = 0.0
    cached: bool = False
