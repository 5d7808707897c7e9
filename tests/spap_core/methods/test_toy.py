"""The teaching page's toy (spap_core.methods.toy): the objective is a real, positive error at every
extreme of the sliders, the run exposes what the page draws, the facts the page's sentences rest on
(marked counts, changes of mind, coinciding curves) agree with the path, and the slider ranges are
SPAP's declared ones.

The facts are checked against quantities recomputed here (the marked sets from the path's own
scores, the least-squares floor from a ridge-free refit), not against the helpers that compute them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from toy_cases import marked_from_scores

from spap_core.methods.toy import (
    BALANCE_RANGE,
    ITERATIONS_RANGE,
    MOMENTUM_RANGE,
    N_PRUNE_RANGE,
    RHO0_CHOICES,
    TAU_RANGE,
    TOY_SCORES,
    ToyOutcome,
    ToySettings,
    changed_mind,
    identical_curves,
    marked_counts,
    run_toy,
)
from spap_core.problem.objective import RefitSettings, refit


def least_squares_floor(outcome: ToyOutcome) -> float:
    """min over every W (all channels, free bias, no ridge) of ½‖WZ−Y‖²: no W can do better."""
    settings = RefitSettings(ridge=0.0, precision="float64")
    return float(refit(outcome.problem, torch.arange(outcome.width), settings).objective)



def test_toy_objective_is_a_positive_error_at_every_slider_extreme():
    """512 corners of the slider box (ρ⁽⁰⁾, τ, K, α, t, λ at both ends, both scores and schedules,
    correlated on and off): every objective on the page is finite and ≥ the least-squares floor,
    which is > 0 because the targets carry noise, so a rounding artefact such as a 0 or a negative
    value fails (the solver's own O(mn) objective reads 0 at K = 60 with large ρ⁽⁰⁾ and τ)."""
    corners = itertools.product((RHO0_CHOICES[0], RHO0_CHOICES[-1]), TAU_RANGE, ITERATIONS_RANGE, MOMENTUM_RANGE,
                                BALANCE_RANGE, N_PRUNE_RANGE, TOY_SCORES, ("fixed", "ramp"), (False, True))
    for rho0, tau, iterations, momentum, balance, n_prune, score, schedule, correlated in corners:
        outcome = run_toy(ToySettings(rho0=rho0, tau=tau, iterations=iterations, momentum=momentum, balance=balance,
                                      n_prune=n_prune, score=score, schedule=schedule, correlated=correlated))
        floor = least_squares_floor(outcome)
        values = np.concatenate([outcome.objectives, [outcome.spap.objective, outcome.exact.objective,
                                                      outcome.dense_objective]])
        assert floor > 1.0, outcome.settings
        assert np.all(np.isfinite(values)) and np.all(values >= floor * (1 - 1e-9)), (outcome.settings, values)
        assert np.all(np.isfinite(outcome.violations)) and np.all(outcome.violations >= 0), outcome.settings
        assert len(outcome.steps) == iterations


def test_toy_outcome_exposes_what_the_page_draws():
    outcome = run_toy(ToySettings())
    width = outcome.width
    assert outcome.soft_masks.shape == outcome.column_norms.shape == (ToySettings().iterations, width)
    np.testing.assert_allclose(outcome.dense_column_norms, outcome.problem.dense_output.double().norm(dim=0).numpy())
    refitted = outcome.refit_column_norms(outcome.spap)
    assert np.all(refitted[list(outcome.spap_pruned)] == 0)
    assert np.all(np.delete(refitted, list(outcome.spap_pruned)) > 0)
    assert len(outcome.spap_pruned) == len(outcome.exact_pruned) == outcome.n_prune
    assert outcome.spap_is_optimal == (outcome.spap_pruned == outcome.exact_pruned)
    assert [set(m) for m in outcome.marked] == marked_from_scores(outcome)
    assert outcome.spap.objective >= outcome.exact.objective * (1 - 1e-12)  # the optimum is the optimum


def test_the_toy_sliders_take_their_ranges_from_spaps_declarations():
    from spap_core.pipeline.parameters import BY_KEY

    for key, declared_range in (("tau", TAU_RANGE), ("t", BALANCE_RANGE), ("alpha", MOMENTUM_RANGE),
                                ("K", ITERATIONS_RANGE)):
        assert declared_range == (BY_KEY[key].low, BY_KEY[key].high), key
    assert all(BY_KEY["rho0"].low <= rho0 <= BY_KEY["rho0"].high for rho0 in RHO0_CHOICES)




# ------------------------------------------------------------------------- facts the sentences rest on

FACT_SETTINGS = [ToySettings(), ToySettings(schedule="fixed"), ToySettings(schedule="fixed", n_prune=2),
                 ToySettings(iterations=60, tau=8.0, rho0=10.0),
                 ToySettings(correlated=True, score="partial", balance=2.0, seed=52),
                 ToySettings(correlated=True, seed=8)]


@pytest.mark.parametrize("settings", FACT_SETTINGS)
def test_marked_counts_are_the_counts_the_path_marked(settings):
    assert marked_counts(settings) == [step.marked for step in run_toy(settings).steps]


@pytest.mark.parametrize("settings", FACT_SETTINGS)
def test_changed_mind_names_each_kept_channel_the_path_marked_then_dropped(settings):
    """channel → (first iteration it was marked, first later iteration it was not), for the kept ones."""
    outcome = run_toy(settings)
    marked = marked_from_scores(outcome)
    expected = {}
    for channel in sorted(set(outcome.spap.keep.tolist())):
        iterations = [k for k, chosen in enumerate(marked, start=1) if channel in chosen]
        if not iterations:
            continue
        later = [k for k in range(iterations[0] + 1, len(marked) + 1) if channel not in marked[k - 1]]
        if later:
            expected[channel] = (iterations[0], later[0])
    assert changed_mind(outcome) == expected
    if settings.seed == 52:
        assert expected  # the case the page's scenario shows: some kept channel was dropped


@pytest.mark.parametrize("settings", FACT_SETTINGS)
def test_identical_curves_group_the_channels_marked_at_the_same_iterations(settings):
    outcome = run_toy(settings)
    marked = marked_from_scores(outcome)
    by_pattern: dict[tuple[int, ...], list[int]] = {}
    for channel in range(outcome.width):
        pattern = tuple(k for k, chosen in enumerate(marked) if channel in chosen)
        if pattern:
            by_pattern.setdefault(pattern, []).append(channel)
    expected = {tuple(group) for group in by_pattern.values() if len(group) > 1}
    assert set(identical_curves(outcome)) == expected
    if settings.schedule == "fixed":
        assert tuple(sorted(outcome.spap_pruned)) in expected  # λ channels marked at every iteration
