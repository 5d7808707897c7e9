"""SPAP's reconstruction, applicable after any method's selection, so that selections can be
compared with the same weight update: a method keeps its channels, and then its down_proj is refitted
the way SPAP refits it (ridge towards the dense weights, with a free bias), optionally followed by
SPAP's alternating minimization of gate/up. Without it, a comparison of SPAP with a baseline mixes
what the penalty path selects with what the refit and the Adam steps recover."""

from __future__ import annotations

from dataclasses import dataclass, replace

from spap_core.errors import SpapInputError
from spap_core.methods.base import Recovery
from spap_core.methods.spap import SpapSettings
from spap_core.problem.objective import LayerDecision, LayerProblem, RefitSettings, refit

OWN = "own"
REFIT = "refit"
REFIT_ALTMIN = "refit+altmin"
RECONSTRUCTIONS = (OWN, REFIT, REFIT_ALTMIN)


@dataclass(frozen=True)
class Reconstruction:
    """SPAP's default refit (and, with `altmin`, its default alternating minimization), replacing
    a method's own weight update. `bias` is off only where the family cannot store one."""

    altmin: bool = False
    bias: bool = True

    @staticmethod
    def named(name: str) -> Reconstruction | None:
        """'own' (None: the method's own update), 'refit' or 'refit+altmin'."""
        if name not in RECONSTRUCTIONS:
            raise SpapInputError(f"Unknown reconstruction '{name}': choose one of {', '.join(RECONSTRUCTIONS)}.")
        return None if name == OWN else Reconstruction(altmin=name == REFIT_ALTMIN)

    @property
    def name(self) -> str:
        return REFIT_ALTMIN if self.altmin else REFIT

    @property
    def refit_settings(self) -> RefitSettings:
        return replace(SpapSettings().refit, bias=self.bias)

    @property
    def recovery(self) -> Recovery | None:
        return Recovery(SpapSettings().altmin, self.refit_settings) if self.altmin else None

    def apply(self, problem: LayerProblem, decision: LayerDecision) -> LayerDecision:
        """The method's kept channels, refitted; its channel scores stay with the decision."""
        refitted = refit(problem, decision.keep, self.refit_settings)
        refitted.scores = decision.scores
        return refitted


def reconstruction_name(reconstruction: Reconstruction | None) -> str:
    return OWN if reconstruction is None else reconstruction.name
