"""Property-based checks of the SPAP solver over its numeric inputs: whatever the hyperparameters
and however ill-conditioned the statistics (fewer tokens than channels, dead or duplicated
channels, no ridge), the result is finite and prunes exactly λ channels."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spap_core.methods.problem import RefitSettings
from spap_core.methods.spap import SCHEDULES, SCORES, STARTS, PenaltySettings, spap_layer
from spap_core.stats import GramAccumulator
from spap_core.toy import toy_problem


@st.composite
def problems(draw):
    width = draw(st.integers(3, 16))
    n_prune = draw(st.integers(1, width - 1))
    problem = toy_problem(width=width, outputs=draw(st.integers(1, 6)), tokens=draw(st.integers(2, 40)),
                          n_prune=n_prune, seed=draw(st.integers(0, 10_000)),
                          dead_channels=draw(st.integers(0, width - 1)))
    degeneracy = draw(st.sampled_from(["none", "silent channel", "duplicate channel"]))
    if degeneracy != "none":
        stats = GramAccumulator()
        generator = torch.Generator().manual_seed(draw(st.integers(0, 100)))
        activations = torch.randn(30, width, generator=generator, dtype=torch.float64)
        if degeneracy == "silent channel":
            activations[:, 0] = 0
        else:
            activations[:, 1] = activations[:, 0]
        stats.add(activations, activations @ problem.dense_down.double().T)
        problem = stats.problem(problem.dense_down, n_prune)
    return problem


penalties = st.builds(
    PenaltySettings,
    iterations=st.integers(1, 12),
    rho0=st.floats(1e-6, 1e3),
    tau=st.floats(1.01, 10),
    balance=st.floats(0, 4),
    momentum=st.floats(0.01, 1),
    score=st.sampled_from(SCORES),
    start=st.sampled_from(STARTS),
    schedule=st.sampled_from(SCHEDULES),
)
refits = st.builds(RefitSettings, ridge=st.sampled_from([0.0, 1e-8, 1e-3, 0.01, 1.0, 100.0]),
                   prior=st.sampled_from(["dense", "zero"]), bias=st.booleans(),
                   precision=st.sampled_from(["float32", "float64"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(), penalty=penalties, refit=refits)
def test_solver_output_is_finite_and_prunes_exactly_lambda(problem, penalty, refit):
    steps = []
    decision = spap_layer(problem, penalty, refit, on_step=steps.append)
    assert len(decision.keep) == problem.width - problem.n_prune
    assert len(set(decision.keep.tolist())) == len(decision.keep)
    assert torch.isfinite(decision.down_weight).all()
    assert decision.down_bias is None or torch.isfinite(decision.down_bias).all()
    assert np.isfinite(decision.objective)
    assert len(steps) == penalty.iterations
    for step in steps:
        assert np.isfinite(step.soft_mask).all() and np.isfinite(step.scores).all()
        assert np.isfinite(step.objective) and np.isfinite(step.violation)


def test_a_score_beyond_float32_is_recorded_at_its_largest_value_not_as_inf():
    """What hypothesis found: two identical channels, no ridge, the 'partial' magnitude with t = 4
    give a float64 score near 1e60, which the trace's float32 cannot hold; it is kept at float32's
    largest value, in the same order as the other scores."""
    import numpy as np

    from spap_core.methods.spap import _recorded

    recorded = _recorded(torch.tensor([1e60, 0.0, 465.5], dtype=torch.float64))
    assert np.isfinite(recorded).all() and recorded.dtype == np.float32
    assert list(np.argsort(recorded)) == [1, 2, 0]
