"""The 95% interval on a perplexity: its t quantiles are the tabulated ones, and on window losses
drawn from a known distribution it holds the true perplexity about 95% of the time."""

import math

import numpy as np
import pytest

from spap_core.evaluation.intervals import perplexity_interval, t_quantile_975

# t_{0.975, ν} as statistical tables print it (3 decimals)
TABULATED = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 7: 2.365, 10: 2.228, 30: 2.042, 31: 2.040, 120: 1.980}


@pytest.mark.parametrize("degrees_of_freedom", list(TABULATED))
def test_the_t_quantile_is_the_tabulated_one(degrees_of_freedom):
    assert round(t_quantile_975(degrees_of_freedom), 3) == TABULATED[degrees_of_freedom]


def test_the_t_quantile_tends_to_the_normal_one():
    assert t_quantile_975(100_000) == pytest.approx(1.959964, abs=1e-4)


DRAWS = 2000
TRUE_LOSS, LOSS_SPREAD = 3.2, 0.25  # nats per token; the true perplexity is exp(TRUE_LOSS)


@pytest.mark.parametrize("windows", [8, 32])
def test_the_interval_holds_the_true_perplexity_about_95_percent_of_the_time(windows):
    """Normal window losses, 2,000 seeded draws: the share of intervals holding exp(TRUE_LOSS) has a
    binomial standard deviation of 0.5 points, so 93–97% is four of them either side. At 8 windows
    the normal quantile (1.96 for t's 2.365) would hold it only about 91% of the time: the test tells."""
    rng = np.random.default_rng(windows)
    held = 0
    for _ in range(DRAWS):
        interval = perplexity_interval(rng.normal(TRUE_LOSS, LOSS_SPREAD, windows).tolist())
        assert interval is not None
        held += interval[0] <= math.exp(TRUE_LOSS) <= interval[1]
    assert 0.93 <= held / DRAWS <= 0.97


def test_the_interval_surrounds_the_perplexity_of_the_mean_loss():
    window_nll = [2.0, 2.5, 3.0, 2.2]
    low, high = perplexity_interval(window_nll)
    mean = sum(window_nll) / 4
    deviation = math.sqrt(sum((loss - mean) ** 2 for loss in window_nll) / 3)
    assert low == pytest.approx(math.exp(mean - 3.182446 * deviation / 2))
    assert high == pytest.approx(math.exp(mean + 3.182446 * deviation / 2))
    assert perplexity_interval([2.5, 2.5, 2.5]) == pytest.approx((math.exp(2.5), math.exp(2.5)))


def test_fewer_than_two_windows_give_no_interval():
    assert perplexity_interval([2.5]) is None
    assert perplexity_interval([]) is None


def test_a_bound_beyond_a_floats_range_is_infinite():
    low, high = perplexity_interval([690.0, 720.0])
    assert high == math.inf and 1 <= low < math.inf
