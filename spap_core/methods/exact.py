"""Exact optimum of the layer-wise problem by enumerating every mask: feasible only for a handful
of channels, which is exactly what the teaching page and the solver's tests need."""

from __future__ import annotations

from itertools import combinations
from math import comb

import torch

from spap_core.errors import SpapInputError
from spap_core.problem.objective import LayerDecision, LayerProblem, RefitSettings, refit

MAX_MASKS = 20_000


def brute_force_optimum(problem: LayerProblem, settings: RefitSettings) -> LayerDecision:
    """The mask (with its refit) of lowest objective among all C(n, λ) masks."""
    count = comb(problem.width, problem.n_prune)
    if count > MAX_MASKS:
        raise SpapInputError(f"Brute force over C({problem.width}, {problem.n_prune}) = {count} masks is too large "
                             f"(limit {MAX_MASKS}); use fewer channels.")
    best: LayerDecision | None = None
    for pruned in combinations(range(problem.width), problem.n_prune):
        keep = torch.tensor([i for i in range(problem.width) if i not in pruned])
        decision = refit(problem, keep, settings)
        if best is None or decision.known_objective < best.known_objective:
            best = decision
    assert best is not None
    return best
