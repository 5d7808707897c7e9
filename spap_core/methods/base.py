"""What a pruning method is to the pipeline: an object with its own settings type and declared
capabilities, which decides one layer from that layer's statistics. The sequential walk asks a
method what it needs (explicit targets, an output-projection bias, a recovery step) instead of testing its
name, so a new method is one module plus one registry line."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from spap_core.methods.altmin import AltMinSettings
from spap_core.problem.objective import LayerDecision, LayerProblem, RefitSettings
from spap_core.schema import Parameter

if TYPE_CHECKING:
    from spap_core.models.adapters import PrunablePart


@dataclass
class MethodStep:
    """One step a method reports while it decides a layer (SPAP: one ρ iteration, with what it
    computed). The walk keeps them in order as the run's trace and passes each to the caller's
    progress callback; a method subclasses this with its own fields, names it as its
    `PruningMethod.step_type`, and extends the record contract below, through which a run record
    writes each step as one row of its trace table plus per-unit arrays, and reads it back."""

    layer: int
    iteration: int  # 1..trace_length

    # The trace table's columns, in order: `record_row`'s keys.
    columns: ClassVar[tuple[str, ...]] = ("layer", "iteration")
    # The names of the per-unit arrays a step carries (`unit_arrays`' keys), as the run's arrays
    # file stores them, stacked as [layer, iteration, unit]. The first is the one every step
    # carries in full: its length is the step's width.
    array_names: ClassVar[tuple[str, ...]] = ()

    def record_row(self) -> dict[str, Any]:
        """The step's row of the trace table: its fields, plus whatever a reader of the table
        wants computed from its arrays."""
        return {"layer": self.layer, "iteration": self.iteration}

    def unit_arrays(self) -> dict[str, np.ndarray]:
        """The step's per-unit arrays by their stored names (`array_names`)."""
        return {}

    @classmethod
    def from_record(cls, row: dict[str, str], arrays: dict[str, np.ndarray], pruned: int) -> MethodStep:
        """The step again, from its trace-table row as text, its arrays cut to its layer's width (an
        empty array for one the record does not hold) and how many units its layer's record says
        were pruned."""
        return cls(layer=int(row["layer"]), iteration=int(row["iteration"]))


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method that has no hyperparameters."""


@dataclass(frozen=True)
class Recovery:
    """A weight update after the channels are chosen: alternating minimization of gate/up with an
    exact down_proj refit (needs the layer's inputs and targets kept during the capture)."""

    altmin: AltMinSettings
    refit: RefitSettings


class PruningMethod(ABC):
    """One pruning method. Subclasses set `name`, `description`, and (with hyperparameters)
    `settings_type` and `parameters`, override the capabilities that differ from the defaults
    below, and implement `decide`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line for help texts
    settings_type: ClassVar[type] = NoSettings
    # Its hyperparameters, each with a path into `settings_type`: the CLI's flags, the app's
    # widgets and the share-link keys are generated from them (spap_core.pipeline.parameters collects them).
    parameters: ClassVar[tuple[Parameter, ...]] = ()
    # The title of each group its parameters are placed in, by the group key they name: the CLI's
    # help and the Run form show them after the run's own group.
    groups: ClassVar[dict[str, str]] = {}
    # The steps it reports (trace_length per layer), which is also how a run record writes and
    # reads its trace; a method without steps keeps the bare MethodStep.
    step_type: ClassVar[type[MethodStep]] = MethodStep
    # What its per-layer solves cost, in factorisations (Cholesky and inverse) of the layer's
    # width: the time estimates before a run count its solves in these (spap_service.estimates).
    solve_factorisations: ClassVar[float]

    def default_settings(self) -> Any:
        return self.settings_type()

    def trace_length(self, settings: Any) -> int:
        """How many MethodSteps per layer it reports through on_step (SPAP: its ρ iterations); 0 = none."""
        return 0

    def adds_output_bias(self, settings: Any) -> bool:
        """Whether its decisions carry an output-projection bias (the family must be able to store one)."""
        return False

    def without_output_bias(self, settings: Any) -> Any:
        """The settings of its documented variant without an output-projection bias, for families that cannot
        store one (only called when `adds_output_bias` is true)."""
        raise NotImplementedError(f"{self.name} has no variant without a down_proj bias")

    def target_correction(self, settings: Any) -> float:
        """β of Y* = Y + β·(dense-stream output − pruned-stream output); 0 = local targets only."""
        return 0.0

    def head_refusal(self, settings: Any) -> str | None:
        """Why these settings cannot prune attention heads (None: they can)."""
        return None

    def recovery(self, settings: Any) -> Recovery | None:
        """The weight update after the decision, if any."""
        return None

    def gradient_windows(self, settings: Any) -> int:
        """The calibration windows it backpropagates through the whole dense model before the walk, to
        measure every unit there (`unit_importances`; 0: it measures nothing so, the default). A method
        that does is refused on a model offloaded with a device map, which cannot hold the gradients;
        the memory check counts one window's backward pass and the decoder layers' gradients, and the
        time estimate the backward passes (at most the calibration's windows)."""
        return 0

    def unit_importances(self, model: nn.Module, layers: nn.ModuleList, parts: Sequence[PrunablePart],
                         calibration: torch.Tensor, settings: Any,
                         cancel: threading.Event | None = None) -> list[list[torch.Tensor]]:
        """Per part, per layer, every unit's importance on the dense `model` (before any layer is
        pruned), from the calibration windows [N, L]; only called when `gradient_windows` is not 0. The walk
        hands each layer's to `decide` as `LayerProblem.dense_importance`."""
        raise NotImplementedError(f"{self.name} measures nothing on the dense model")

    @abstractmethod
    def decide(self, problem: LayerProblem, settings: Any, layer: int,
               on_step: Callable[[Any], None] | None = None,
               cancel: threading.Event | None = None) -> LayerDecision:
        """Which units of this layer to keep, and the new output projection (and bias)."""
