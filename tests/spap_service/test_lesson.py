"""The lesson of the "How SPAP works" page (spap_service.lesson): each scenario does what its name
says, and every sentence the page states agrees with the numbers of the toy run it describes.

The claims are checked against quantities recomputed here (the marked sets from the path's own
scores, the values of s), not against the helpers that word them.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from toy_cases import MISS_WITH_MARGINAL_AND_FIXED, MISS_WITH_PARTIAL_AND_RAMP, marked_from_scores

from spap_core.methods.toy import (
    BALANCE_RANGE,
    ITERATIONS_RANGE,
    MOMENTUM_RANGE,
    N_PRUNE_RANGE,
    RHO0_CHOICES,
    SEED_RANGE,
    TAU_RANGE,
    TOY_SCORES,
    ToySettings,
    run_toy,
)
from spap_service.lesson import (
    SCENARIOS,
    advice,
    algorithm_text,
    mask_caption,
    norm_caption,
    objective_caption,
    path_picture,
    readout_caption,
)
from spap_service.series import peaks

SCENARIO = {scenario.name: scenario for scenario in SCENARIOS}


# ------------------------------------------------------------------------------------ scenarios


def on_grid(value: float, low: float, high: float, step: float) -> bool:
    return low <= value <= high and round((value - low) / step, 9).is_integer()


def test_scenarios_are_reachable_with_the_page_widgets():
    for scenario in SCENARIOS:  # the steps are the page's slider steps
        settings = scenario.settings
        assert settings.rho0 in RHO0_CHOICES
        assert on_grid(settings.tau, *TAU_RANGE, 0.05)
        assert on_grid(settings.balance, *BALANCE_RANGE, 0.1)
        assert on_grid(settings.momentum, *MOMENTUM_RANGE, 0.05)
        assert ITERATIONS_RANGE[0] <= settings.iterations <= ITERATIONS_RANGE[1]
        assert N_PRUNE_RANGE[0] <= settings.n_prune <= N_PRUNE_RANGE[1]
        assert SEED_RANGE[0] <= settings.seed <= SEED_RANGE[1] and settings.score in TOY_SCORES


def test_scenario_spap_finds_the_optimum():
    outcome = run_toy(SCENARIO["SPAP finds the optimum"].settings)
    assert outcome.spap_pruned == outcome.exact_pruned
    assert outcome.spap.objective == pytest.approx(outcome.exact.objective, rel=1e-9)
    assert "exact optimum" in SCENARIO["SPAP finds the optimum"].story(outcome)


def test_scenario_spap_misses_the_optimum_on_correlated_channels():
    scenario = SCENARIO["SPAP misses it (correlated channels)"]
    outcome = run_toy(scenario.settings)
    assert scenario.settings.correlated
    assert set(outcome.spap_pruned) != set(outcome.exact_pruned)
    assert outcome.spap.objective > 1.1 * outcome.exact.objective  # a visible miss, not a tie
    first, second, third = outcome.exact_pruned  # λ = 3
    story = scenario.story(outcome)
    assert f"the exact optimum {first}, {second} and {third}" in story
    assert f"{outcome.spap.objective - outcome.exact.objective:.4g} higher" in story


def test_scenario_s_changes_its_mind():
    """Some channel is among the marked (lowest-score) channels at an iteration before the last, is
    not marked at a later one, and the read-out keeps it."""
    scenario = SCENARIO["s changes its mind"]
    outcome = run_toy(scenario.settings)
    marked = marked_from_scores(outcome)
    kept = set(outcome.spap.keep.tolist())
    changed = [channel for channel in kept
               if any(channel in marked[k] and any(channel not in later for later in marked[k + 1:])
                      for k in range(len(marked) - 1))]
    assert changed, marked
    story = scenario.story(outcome)
    assert story is not None and f"Channel {changed[0]} " in story
    assert "keeps it" in story


# ------------------------------------------------------------------------------------ sentences


@pytest.mark.parametrize("settings", [
    ToySettings(), ToySettings(rho0=1e-4, tau=1.05), ToySettings(momentum=1.0), ToySettings(schedule="fixed"),
    ToySettings(momentum=1.0, schedule="fixed"), ToySettings(iterations=60, tau=8.0, rho0=10.0),
    ToySettings(iterations=1), ToySettings(correlated=True, score="partial", balance=2.0, seed=52),
])
def test_captions_agree_with_the_data(settings):
    outcome = run_toy(settings)
    final = outcome.steps[-1].soft_mask
    binary = bool(np.all((np.abs(final) < 1e-6) | (np.abs(final - 1) < 1e-6)))
    caption = mask_caption(outcome)
    assert ("ends binary" in caption) == binary and ("does not end binary" in caption) == (not binary)
    if not binary:  # says what it ends at and how the mask is read out
        assert f"{final.max():.4g}"[:4] in caption and f"λ = {outcome.n_prune} largest s" in caption
    violations = np.array([step.violation for step in outcome.steps])
    text = objective_caption(outcome)
    said = text.split("Violation")[1]
    if len(violations) == 1:
        assert "rises" not in said and "falls" not in said and "single iteration" in text
    elif peaks(violations):  # each number quoted at the iteration that reached it
        peak = int(np.argmax(violations))
        assert (f"it rises from {violations[0]:.3g} to {violations[peak]:.3g} (iteration {peak + 1}), then falls to "
                f"{violations[-1]:.3g}") in said
    elif violations[-1] > violations[0]:
        assert f"it rises from {violations[0]:.3g} to {violations[-1]:.3g}" in said and "falls" not in said
    else:
        assert f"it falls from {violations[0]:.3g} to {violations[-1]:.3g}" in said and "rises" not in said
    caption = mask_caption(outcome)
    assert f"s⁽⁰⁾ = {outcome.start:.3g} for every channel (not drawn" in caption
    assert "h̄ (h̄ = mean of diag H" in norm_caption(outcome)
    relative = outcome.column_norms[-1] / outcome.dense_column_norms
    shrunk = relative[list(outcome.spap_pruned)]
    assert ("most of the way to 0" in norm_caption(outcome)) == bool(shrunk.max() < 0.5)
    assert f"{shrunk.min():.0%}" in norm_caption(outcome)
    readout = readout_caption(outcome)
    order = np.lexsort((outcome.spap.scores["spap_last"], -final))[:outcome.n_prune]
    assert set(order.tolist()) == set(outcome.spap_pruned)
    assert all(str(c) in readout for c in outcome.spap_pruned)


def test_violation_rises_with_a_small_penalty_and_the_caption_says_so():
    """The case the old page got wrong: with ρ⁽⁰⁾ = 10⁻⁴ and τ = 1.05 the violation rises."""
    outcome = run_toy(ToySettings(rho0=1e-4, tau=1.05))
    assert outcome.steps[-1].violation > outcome.steps[0].violation
    assert "it rises from " in objective_caption(outcome)
    assert "ρ stayed too small" in norm_caption(outcome)


def test_fixed_schedule_caption_names_the_curves_that_coincide():
    outcome = run_toy(ToySettings(schedule="fixed"))
    masks = outcome.soft_masks
    pruned = list(outcome.spap_pruned)
    assert all(np.array_equal(masks[:, pruned[0]], masks[:, c]) for c in pruned)
    assert "lie on top of each other" in mask_caption(outcome)
    assert "lie on top of each other" not in mask_caption(run_toy(ToySettings()))  # the ramp keeps them apart


def test_algorithm_text_describes_the_schedule_and_start_in_use():
    ramp = algorithm_text(ToySettings())
    assert ("**ramp**" in ramp and "1 at k = 1, 2 at k = 2–3, 3 at k = 4–5" in ramp and "s^{(0)}=0" in ramp
            and "fixed" not in ramp)
    assert "0.5, 0.75, 0.875, 0.9375" in ramp
    fixed = algorithm_text(ToySettings(schedule="fixed", n_prune=4, momentum=1.0))
    assert "**fixed**" in fixed and "\\lambda=4" in fixed and "ramp" not in fixed
    assert "exactly the indicator" in fixed


def test_advice_never_suggests_what_is_already_selected():
    both_on = run_toy(MISS_WITH_PARTIAL_AND_RAMP)
    assert not both_on.spap_is_optimal
    assert "partial" not in advice(both_on) and "ramp" not in advice(both_on)
    both_off = run_toy(MISS_WITH_MARGINAL_AND_FIXED)
    assert not both_off.spap_is_optimal
    assert "partial score" in advice(both_off) and "ramp schedule" in advice(both_off)
    assert advice(run_toy(ToySettings())) is None


def test_the_algorithm_text_defines_h_bar_where_the_page_uses_it():
    text = algorithm_text(ToySettings())
    assert r"\bar h" in text and r"mean of $\mathrm{diag}\,H$" in text


@pytest.mark.parametrize("settings", [ToySettings(), ToySettings(n_prune=1),
                                      ToySettings(rho0=RHO0_CHOICES[0], tau=TAU_RANGE[0],
                                                  iterations=ITERATIONS_RANGE[0])])
def test_the_path_picture_names_the_channels_and_the_shrinking_the_chart_draws(settings):
    outcome = run_toy(settings)
    sentence = path_picture(outcome)
    pruned = sorted(outcome.spap_pruned)
    named = sentence.split(" pushes ", 1)[1].split(" out ", 1)[0]
    assert sorted(int(c) for c in named.replace("channels ", "").replace("channel ", "").replace(" and ", ", ")
                  .split(", ")) == pruned
    relative = outcome.relative_norms[-1][pruned]
    shrunk = float(relative.max()) < 0.5
    assert ("shrink to" in sentence) == shrunk and ("still keep" in sentence) == (not shrunk)
    assert f"{float(relative.min()):.0%}" in sentence and f"{float(relative.max()):.0%}" in sentence
    assert f"other {outcome.width - len(pruned)} channel" in sentence
    assert f"s ends at {float(outcome.soft_masks[-1][pruned].min()):.2g}" in sentence


ISSUE_TERMS = {"s", "ρ", "λ", "α", "τ", "K", "t", "refit", "alternating minimization", "read-out"}


def test_the_glossary_explains_every_symbol_and_word_the_pages_use():
    from spap_service.lesson import GLOSSARY

    named = {term.split(" (")[0] for term in GLOSSARY}
    assert named >= ISSUE_TERMS | {"score", "channel", "head", "sparsity", "perplexity", "calibration"}
    for term, meaning in GLOSSARY.items():
        assert 1 <= len(re.findall(r"\.(?:\s|$)", meaning)) <= 2, term  # one or two sentences
