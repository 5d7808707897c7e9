"""LLM-Pruner's selection (Ma et al. 2023; Torch-Pruning's TaylorImportance): a unit's importance
is the first-order Taylor estimate of the calibration loss's change when its coupled weights are
zeroed, taken element-wise and summed over the group,

    I(unit) = Σ_{W ∈ group} Σ_k |W_k · ∂L/∂W_k|,

with L the dense model's next-token cross-entropy on the calibration windows (its mean over
`windows` windows, one backward pass each). The group of an MLP channel is row i of every input
projection (gate and up in a GLU) and column i of the output projection; the group of a head is its
query rows, its block of output-projection columns and an equal share of its KV group's key and
value rows (spap_core.models.adapters.parts: `MlpWeights.unit_totals`, `AttentionWeights.unit_totals`).
Biases are left out, as TaylorImportance leaves them out by default.

The gradients are measured once on the dense model before the sequential walk
(`PruningMethod.unit_importances`), so the selection never sees the earlier layers' pruning, as in
LLM-Pruner. They are read in the parts' unit-aligned layout whatever the family stores (GPT-2's
transposed Conv1D, Phi-3's fused projections): each decoder-layer parameter briefly holds its
per-entry Taylor terms in place of its weights while the parts read their `weights(layer)`.
The method's own weight update is none: LLM-Pruner recovers with LoRA afterwards; `--reconstruction`
applies to it as to every method. It backpropagates through the whole model, so an offloaded model
is refused before any work (spap_core.pipeline.walk.check_prunable).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods.base import PruningMethod
from spap_core.methods.baselines import BASELINE_FACTORISATIONS, keep_dense_columns
from spap_core.methods.sensitivity import FISHER_WINDOWS
from spap_core.models.adapters import PrunablePart
from spap_core.models.offload import execution_device
from spap_core.problem.objective import LayerDecision, LayerProblem
from spap_core.schema import Parameter


@dataclass(frozen=True)
class TaylorSettings:
    # Calibration windows whose loss gradients are summed (the first ones; all there are when the
    # calibration holds fewer), one backward pass each: as many as the Fisher allocation takes.
    windows: int = FISHER_WINDOWS

    def __post_init__(self) -> None:
        if not isinstance(self.windows, int) or isinstance(self.windows, bool) or self.windows < 1:
            raise SpapInputError(f"Taylor's windows must be a whole number ≥ 1 (got {self.windows!r}).")


def taylor_importances(model: nn.Module, layers: nn.ModuleList, parts: Sequence[PrunablePart],
                       windows: torch.Tensor, cancel: threading.Event | None = None) -> list[list[torch.Tensor]]:
    """Per part, per layer, Σ|W·∂L/∂W| over every unit's group (float64, CPU), with ∂L/∂W the
    gradient of the mean loss over `windows` [N, L] (one backward pass per window, so only one
    window's activations live at a time), accumulated in float32 whatever the model's dtype."""
    parameters = list({id(p): p for layer in layers for p in layer.parameters()}.values())
    gradients = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in parameters]
    device = execution_device(model)
    with _requiring_grad(parameters), torch.enable_grad():
        for window in windows:
            if cancel is not None and cancel.is_set():
                raise PruningCancelled("cancelled while measuring the Taylor importances")
            window = window[None].to(device)
            loss = model(input_ids=window, labels=window, use_cache=False).loss / len(windows)
            for total, gradient in zip(gradients, torch.autograd.grad(loss, parameters, allow_unused=True)):
                if gradient is not None:
                    total += gradient
    importances: list[list[torch.Tensor]] = [[] for _ in parts]
    with torch.no_grad():
        for total, parameter in zip(gradients, parameters):
            total.mul_(parameter.detach()).abs_()  # the per-entry Taylor term, in the gradient's place
        terms = dict(zip(map(id, parameters), gradients))
        for layer in layers:
            own = list(layer.parameters())
            with _holding(own, [terms[id(p)] for p in own]):
                for part, per_layer in zip(parts, importances):
                    per_layer.append(part.weights(layer).unit_totals().cpu())
    return importances


@contextlib.contextmanager
def _requiring_grad(parameters: list[nn.Parameter]) -> Iterator[None]:
    """Every one of `parameters` requires a gradient for a while, whatever it required before."""
    before = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, required in zip(parameters, before):
            p.requires_grad_(required)


@contextlib.contextmanager
def _holding(parameters: list[nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    """Each parameter holds the matching value (same shape, any dtype) in place of its data for a
    while, so whatever reads the modules (a part's `weights`) reads the values in its own layout."""
    originals = [p.data for p in parameters]
    try:
        for p, value in zip(parameters, values):
            p.data = value
        yield
    finally:
        for p, original in zip(parameters, originals):
            p.data = original


class Taylor(PruningMethod):
    name = "taylor"
    description = ("LLM-Pruner's selection: Σ|W·∂L/∂W| over each unit's coupled weights, from the dense model's "
                   "calibration-loss gradients, no compensation")
    settings_type = TaylorSettings
    # Per layer it only selects and keeps the dense columns, as magnitude does; the backward passes
    # before the walk are not per-layer solves.
    solve_factorisations = BASELINE_FACTORISATIONS
    groups = {"taylor": "Taylor (LLM-Pruner)"}
    parameters = (
        Parameter("taylor_windows", "windows", "Gradient windows",
                  "Calibration windows whose loss gradients the importances sum, one backward pass through the "
                  "whole model each (all the calibration has, when it has fewer).",
                  int, "taylor", ("--taylor-windows",), path="windows", low=1, high=1024, step=1),
    )

    def gradient_windows(self, settings: TaylorSettings) -> int:
        return settings.windows

    def unit_importances(self, model: nn.Module, layers: nn.ModuleList, parts: Sequence[PrunablePart],
                         calibration: torch.Tensor, settings: TaylorSettings,
                         cancel: threading.Event | None = None) -> list[list[torch.Tensor]]:
        return taylor_importances(model, layers, parts, calibration[:settings.windows], cancel)

    def decide(self, problem: LayerProblem, settings: Any, layer: int, on_step: Callable | None = None,
               cancel: threading.Event | None = None) -> LayerDecision:
        if problem.dense_importance is None:
            raise RuntimeError(f"taylor decides layer {layer} from the importances measured on the dense model "
                               "before the walk (unit_importances), and this problem carries none")
        return keep_dense_columns(problem, problem.dense_importance, self.name)
