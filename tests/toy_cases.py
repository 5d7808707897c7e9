"""What the toy, lesson and page tests share: toy settings found by running the toy over seeds, and
each iteration's marked set recomputed from the path's own scores (not from the helpers under test)."""

from __future__ import annotations

import numpy as np

from spap_core.methods.toy import ToyOutcome, ToySettings

# Found by running the toy over seeds: SPAP misses the optimum on these correlated layers.
MISS_WITH_PARTIAL_AND_RAMP = ToySettings(correlated=True, seed=2, score="partial", schedule="ramp")
MISS_WITH_MARGINAL_AND_FIXED = ToySettings(correlated=True, seed=3, score="marginal", schedule="fixed")


def marked_from_scores(outcome: ToyOutcome) -> list[set[int]]:
    """Each iteration's marked set as the path chose it: the step's `marked` lowest scores of the
    previous W (the unpenalised one for the first step)."""
    previous = outcome.spap.scores["spap_first"]
    sets = []
    for step in outcome.steps:
        sets.append(set(np.argsort(previous, kind="stable")[:step.marked].tolist()))
        previous = step.scores
    return sets

