"""Registry of pruning methods. Every method maps one layer's statistics to a LayerDecision, so
the pipeline, the CLI and the app treat SPAP and the baselines alike."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from spap_core.errors import SpapInputError
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.baselines import fasp, flap, magnitude, wanda_sp
from spap_core.methods.problem import LayerDecision, LayerProblem, RefitSettings
from spap_core.methods.spap import PenaltySettings, StepCallback, spap_layer

BASELINES = {"magnitude": magnitude, "wanda-sp": wanda_sp, "flap": flap, "fasp": fasp}
METHODS = ("spap", *BASELINES)


@dataclass(frozen=True)
class PruneSettings:
    """Everything that decides a pruning result (recorded with every run for reproducibility)."""

    method: str = "spap"
    sparsity: float = 0.3
    penalty: PenaltySettings = field(default_factory=PenaltySettings)
    refit: RefitSettings = field(default_factory=RefitSettings)
    altmin: AltMinSettings = field(default_factory=AltMinSettings)
    # SPAP only: β in Y* = Y + β·(dense-model layer output − pruned-stream layer output), so each
    # layer also repairs the error that earlier pruned layers left in the residual stream.
    target_correction: float = 0.0

    @staticmethod
    def from_dict(values: dict) -> PruneSettings:
        """The inverse of dataclasses.asdict, as stored in every run record (validated again)."""
        return PruneSettings(
            method=values["method"], sparsity=values["sparsity"], target_correction=values["target_correction"],
            penalty=PenaltySettings(**values["penalty"]), refit=RefitSettings(**values["refit"]),
            altmin=AltMinSettings(**values["altmin"]),
        )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SpapInputError(f"Unknown method '{self.method}': choose one of {', '.join(METHODS)}.")
        if not isinstance(self.sparsity, (int, float)) or not 0.0 < self.sparsity < 1.0:  # NaN fails too
            raise SpapInputError(f"Sparsity must be a number strictly between 0 and 1 (got {self.sparsity!r}).")
        if not isinstance(self.target_correction, (int, float)) or not 0.0 <= self.target_correction <= 1.0:
            raise SpapInputError(f"The target correction β must be in [0, 1] (got {self.target_correction!r}).")


def decide_layer(problem: LayerProblem, settings: PruneSettings, layer: int,
                 on_step: StepCallback | None = None, cancel: threading.Event | None = None) -> LayerDecision:
    if settings.method == "spap":
        return spap_layer(problem, settings.penalty, settings.refit, layer=layer, on_step=on_step, cancel=cancel)
    return BASELINES[settings.method](problem)
