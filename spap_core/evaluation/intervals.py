"""A 95% interval on a perplexity from the mean losses of its evaluation windows.

The interval is Student's t-interval on the windows' mean negative log-likelihoods, mapped through
exp: exp(m ± t_{0.975, W−1} · s / √W), m and s the mean and sample standard deviation of the W
window means. The windows are the unit of independence: tokens within a window share their context,
so their losses are correlated and a per-token interval would be too narrow, while the windows are
disjoint stretches of text. Every window predicts the same number of tokens, so the mean of the
window means is the token mean, and exp(m) is the perplexity itself, inside its interval. A
t-interval is cheap (no resampling, a fraction of a millisecond against the evaluation's forward
passes), deterministic (no seed, so a run reads the same interval every time it is opened) and
keeps its coverage at the 8 windows of a quick run, where a percentile bootstrap's falls to about
89% (docs/spap-design.md, "Intervals on perplexity").

What it does not see: which calibration tokens the pruning drew. Another calibration seed gives
another pruned model, whose perplexity can move by more than this interval's width."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

CONFIDENCE = 0.95
BISECTION_STEPS = 200  # halves the bracket to below a float's resolution well before the last step


def perplexity_interval(window_nll: Sequence[float]) -> tuple[float, float] | None:
    """The 95% interval (low, high) on the perplexity exp(mean of `window_nll`), the windows' mean
    losses in nats per predicted token; None with fewer than 2 windows, where no spread can be
    measured. A bound beyond a float's range is inf."""
    count = len(window_nll)
    if count < 2:
        return None
    mean = math.fsum(window_nll) / count
    deviation = math.sqrt(math.fsum((loss - mean) ** 2 for loss in window_nll) / (count - 1))
    half_width = t_quantile_975(count - 1) * deviation / math.sqrt(count)
    return _exp(mean - half_width), _exp(mean + half_width)


def _exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


@functools.cache
def t_quantile_975(degrees_of_freedom: int) -> float:
    """t_{0.975, ν}: the t such that P(|T| < t) = 0.95 for Student's T with ν degrees of freedom,
    by bisection on the exact central probability (_t_central_probability), so no table and no
    scipy (which the package does not depend on)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {degrees_of_freedom}")
    low, high = 0.0, 2.0
    while _t_central_probability(high, degrees_of_freedom) < CONFIDENCE:
        low, high = high, 2 * high
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if _t_central_probability(middle, degrees_of_freedom) < CONFIDENCE:
            low = middle
        else:
            high = middle
    return high


def _t_central_probability(t: float, degrees_of_freedom: int) -> float:
    """P(|T| < t) for Student's T with an integer ν, by the finite series of Abramowitz & Stegun
    26.7.3 and 26.7.4: with θ = atan(t/√ν), for odd ν
    (2/π)(θ + sin θ (cos θ + (2/3) cos³θ + … + (2·4…(ν−3))/(1·3…(ν−2)) cos^{ν−2}θ)), and for even ν
    sin θ (1 + (1/2) cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3…(ν−3))/(2·4…(ν−2)) cos^{ν−2}θ)."""
    theta = math.atan(t / math.sqrt(degrees_of_freedom))
    cos_squared = math.cos(theta) ** 2
    if degrees_of_freedom % 2 == 0:
        term, series = 1.0, 1.0
        for power in range(2, degrees_of_freedom - 1, 2):  # term for cos^power θ
            term *= (power - 1) / power * cos_squared
            series += term
        return math.sin(theta) * series
    if degrees_of_freedom == 1:
        return 2 / math.pi * theta
    term = series = math.cos(theta)
    for power in range(3, degrees_of_freedom - 1, 2):  # term for cos^power θ
        term *= (power - 1) / power * cos_squared
        series += term
    return 2 / math.pi * (theta + math.sin(theta) * series)
