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
another pruned model, whose perplexity can move by more than this interval's width.

Two perplexities measured on the same windows are compared pairwise (paired_comparison): the same
t-interval on the windows' differences of mean losses gives the ratio of the perplexities with its
interval, far narrower than the two perplexities' own intervals, since a window that is hard for one
model is hard for the other and the difference cancels that shared difficulty."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    return perplexity_of(mean - half_width), perplexity_of(mean + half_width)


@dataclass(frozen=True)
class PairedComparison:
    """Perplexity A against perplexity B on the same evaluation windows."""

    ratio: float | None  # ppl_a / ppl_b; None when a side keeps no window losses
    ci95: tuple[float, float] | None  # the ratio's 95% interval; None when no pairwise interval can be measured
    verdict: str  # "A is lower", "B is lower", "not distinguishable on these N tokens", or why there is none
    tokens: int  # predicted tokens the pairs cover (windows × tokens per window); 0 when not paired


def paired_comparison(window_nll_a: Sequence[float], window_nll_b: Sequence[float],
                      tokens_per_window: int) -> PairedComparison:
    """Perplexities A and B compared window by window: with d the windows' differences of mean losses
    (A − B), the ratio ppl_a/ppl_b is exp(mean d) and its 95% interval exp(mean d ± t·sd(d)/√W). A is
    lower (or B) only when the interval excludes 1; else the two are not distinguishable on the
    W × `tokens_per_window` tokens. With different window counts, or fewer than 2 windows, there is
    no interval, and the verdict says why. Identical losses give a ratio of exactly 1 and the
    interval (1, 1): a zero spread is a zero half-width, never a division."""
    count_a, count_b = len(window_nll_a), len(window_nll_b)
    if not count_a or not count_b:
        missing = " and ".join(side for side, count in (("A", count_a), ("B", count_b)) if not count)
        return PairedComparison(None, None, f"no verdict: {missing} kept no window losses", 0)
    if count_a != count_b:
        why = f"not comparable pairwise: A was evaluated on {_windows(count_a)}, B on {_windows(count_b)}"
        return PairedComparison(_perplexity_ratio(window_nll_a, window_nll_b), None, why, 0)
    tokens = count_a * tokens_per_window
    differences = [loss_a - loss_b for loss_a, loss_b in zip(window_nll_a, window_nll_b, strict=True)]
    mean = _mean(differences)
    ratio = perplexity_of(mean)  # exactly 1.0 for identical losses: every difference is 0.0
    if count_a < 2:
        return PairedComparison(ratio, None, f"no verdict: {_windows(count_a)} ({tokens:,} tokens), too few to "
                                             "measure the spread (2 needed)", tokens)
    deviation = math.sqrt(math.fsum((difference - mean) ** 2 for difference in differences) / (count_a - 1))
    half_width = t_quantile_975(count_a - 1) * deviation / math.sqrt(count_a)
    low, high = perplexity_of(mean - half_width), perplexity_of(mean + half_width)
    if high < 1:
        verdict = "A is lower"
    elif low > 1:
        verdict = "B is lower"
    else:
        verdict = f"not distinguishable on these {tokens:,} tokens"
    return PairedComparison(ratio, (low, high), verdict, tokens)


# What decides a run's evaluation windows, as its record holds it: the first eval_windows windows of
# eval_len tokens of the evaluation text (spap_core.data.texts.evaluation_windows), cut by the model's
# tokenizer. The seed is not among them: it draws the calibration only, so runs of two calibration
# seeds are compared on the same windows.
EVALUATION_IDENTITY = {"model": "model", "eval_source": "evaluation text", "eval_windows": "window count",
                       "eval_len": "window length"}
# The dense model's loss on each window, where both records keep it, is the check that the windows
# held the same tokens (a file of the same name can change): equal to this tolerance (nats), which
# covers another device's rounding and nothing a different text could give.
DENSE_LOSS_TOLERANCE = 1e-4


def compare_runs(record_a: Mapping[str, Any], record_b: Mapping[str, Any]) -> PairedComparison:
    """Run A's pruned perplexity against run B's, from their records (storage.runs.read_record):
    paired when both were evaluated on the same windows (EVALUATION_IDENTITY, and the dense model's
    loss on each window where both keep it), else the verdict names what differs and there is no
    interval."""
    differing = [what + (" not recorded" if record_a.get(key) is None or record_b.get(key) is None else "")
                 for key, what in EVALUATION_IDENTITY.items()
                 if record_a.get(key) is None or record_a.get(key) != record_b.get(key)]
    dense_a, dense_b = _losses(record_a, "window_nll_dense"), _losses(record_b, "window_nll_dense")
    if not differing and dense_a and dense_b and (len(dense_a) != len(dense_b) or any(
            abs(a - b) > DENSE_LOSS_TOLERANCE for a, b in zip(dense_a, dense_b))):
        differing.append("their tokens: the dense model's loss differs window by window")
    window_nll_a, window_nll_b = _losses(record_a), _losses(record_b)
    if differing:
        ratio = _perplexity_ratio(window_nll_a, window_nll_b) if window_nll_a and window_nll_b else None
        return PairedComparison(ratio, None, "not comparable pairwise: different evaluation windows "
                                             f"({', '.join(differing)})", 0)
    return paired_comparison(window_nll_a, window_nll_b, record_a["eval_len"] - 1)  # each window predicts L − 1 tokens


def _losses(record: Mapping[str, Any], key: str = "window_nll") -> list[float]:
    window_nll = record.get(key)
    return list(window_nll) if isinstance(window_nll, list) else []


def _perplexity_ratio(window_nll_a: Sequence[float], window_nll_b: Sequence[float]) -> float:
    """exp(mean loss of A − mean loss of B): ppl_a / ppl_b, whether or not the windows pair up."""
    return perplexity_of(_mean(window_nll_a) - _mean(window_nll_b))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _windows(count: int) -> str:
    return f"{count} window" + ("" if count == 1 else "s")


def perplexity_of(mean_nll: float) -> float:
    """exp of a mean loss in nats: a perplexity, inf beyond a float's range."""
    return math.exp(mean_nll) if mean_nll < 700 else math.inf


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
