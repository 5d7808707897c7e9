"""The 95% interval on a perplexity: its t quantiles are the tabulated ones, and on window losses
drawn from a known distribution it holds the true perplexity about 95% of the time. The paired
comparison of two perplexities on the same windows: its ratio interval covers the true ratio about
95% of the time, its verdict follows the data, and runs on other windows are not compared pairwise."""

import math

import numpy as np
import pytest

from spap_core.evaluation.intervals import compare_runs, paired_comparison, perplexity_interval, t_quantile_975

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


def test_a_run_against_itself_is_not_distinguishable_with_a_ratio_of_exactly_one():
    window_nll = [3.1, 2.9, 3.4, 3.0, 3.3, 2.8, 3.2, 3.05]
    comparison = paired_comparison(window_nll, list(window_nll), 511)
    assert comparison.ratio == 1.0
    assert comparison.ci95 == (1.0, 1.0)
    assert comparison.tokens == 8 * 511
    assert comparison.verdict == "not distinguishable on these 4,088 tokens"


def noisy_losses(rng, windows):
    """Window losses of a text whose windows differ in difficulty (spread 0.3 nats)."""
    return rng.normal(3.2, 0.3, windows)


def test_a_clearly_worse_model_is_named():
    rng = np.random.default_rng(0)
    better = noisy_losses(rng, 8)
    worse = better + 0.5 + rng.normal(0, 0.05, 8)  # half a nat more on every window, with noise
    comparison = paired_comparison(worse.tolist(), better.tolist(), 31)
    assert comparison.verdict == "B is lower"
    low, high = comparison.ci95
    assert 1 < low < comparison.ratio < high
    assert comparison.ratio == pytest.approx(math.exp(float(np.mean(worse - better))))
    assert paired_comparison(better.tolist(), worse.tolist(), 31).verdict == "A is lower"


@pytest.mark.parametrize("shift, verdict", [(-0.2, "A is lower"), (0.2, "B is lower"),
                                            (0.0, "not distinguishable on these 310 tokens")])
def test_the_verdict_follows_the_data(shift, verdict):
    """The same pairs but for a shift of A's losses: the interval on the ratio (noise 0.02 nats per
    window, 10 windows: a half-width near 0.015) excludes 1 exactly when the shift is 0.2 nats."""
    rng = np.random.default_rng(1)
    b = noisy_losses(rng, 10)
    a = b + shift + rng.normal(0, 0.02, 10)
    comparison = paired_comparison(a.tolist(), b.tolist(), 31)
    assert comparison.verdict == verdict
    low, high = comparison.ci95
    assert (high < 1) == (verdict == "A is lower") and (low > 1) == (verdict == "B is lower")


def test_different_window_counts_are_not_comparable_pairwise():
    comparison = paired_comparison([3.0, 3.1, 3.2], [3.0, 3.1], 31)
    assert comparison.ci95 is None and comparison.tokens == 0
    assert comparison.verdict == "not comparable pairwise: A was evaluated on 3 windows, B on 2 windows"
    assert comparison.ratio == pytest.approx(math.exp(3.1 - 3.05))


def test_one_window_or_none_gives_no_interval_and_says_why():
    one = paired_comparison([3.0], [2.5], 31)
    assert one.ci95 is None and one.ratio == pytest.approx(math.exp(0.5))
    assert one.verdict == "no verdict: 1 window (31 tokens), too few to measure the spread (2 needed)"
    empty = paired_comparison([], [2.5, 2.6], 31)
    assert empty.ratio is None and empty.ci95 is None
    assert empty.verdict == "no verdict: A kept no window losses"


def test_the_ratio_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    """Paired window losses: a shared difficulty per window (spread 0.3) plus each model's own noise
    (0.05), A worse by 0.03 nats, so the true ratio is exp(0.03). Over 2,000 seeded draws of 8
    windows, the share of intervals holding it has a binomial standard deviation of 0.5 points:
    93–97% is four of them either side."""
    rng = np.random.default_rng(35)
    true_shift = 0.03
    held = 0
    for _ in range(DRAWS):
        difficulty = noisy_losses(rng, 8)
        a = difficulty + true_shift + rng.normal(0, 0.05, 8)
        b = difficulty + rng.normal(0, 0.05, 8)
        low, high = paired_comparison(a.tolist(), b.tolist(), 511).ci95
        held += low <= math.exp(true_shift) <= high
    assert 0.93 <= held / DRAWS <= 0.97


def record(**changes):
    """A run record's evaluation fields, as storage.runs.read_record gives them."""
    return {"model": "local model /m", "eval_source": "file /t/eval.txt", "eval_windows": 3, "eval_len": 32,
            "seed": 0, "window_nll": [3.0, 3.2, 3.1], **changes}


def test_runs_on_the_same_windows_are_compared_pairwise_whatever_their_seed():
    comparison = compare_runs(record(window_nll=[3.5, 3.7, 3.65]), record(seed=1))
    assert comparison.verdict == "B is lower" and comparison.tokens == 3 * 31


@pytest.mark.parametrize("changes, what", [({"eval_source": "file /t/other.txt"}, "evaluation text"),
                                           ({"eval_len": 64}, "window length"),
                                           ({"eval_windows": 4, "window_nll": [3.0, 3.2, 3.1, 3.0]}, "window count"),
                                           ({"model": "hub model gpt2"}, "model")])
def test_runs_on_other_windows_are_not_comparable_pairwise(changes, what):
    comparison = compare_runs(record(), record(**changes))
    assert comparison.ci95 is None
    assert comparison.verdict == f"not comparable pairwise: different evaluation windows ({what})"


def test_a_record_without_its_evaluation_text_is_not_comparable():
    old = record()
    del old["eval_source"]
    assert compare_runs(old, record()).verdict == ("not comparable pairwise: different evaluation windows "
                                                   "(evaluation text not recorded)")


def test_a_file_of_the_same_name_with_other_tokens_is_caught_by_the_dense_losses():
    dense = [2.9, 3.1, 3.0]
    same = compare_runs(record(window_nll=[3.5, 3.7, 3.65], window_nll_dense=dense),
                        record(window_nll_dense=[loss + 1e-6 for loss in dense]))  # another device's rounding
    assert same.verdict == "B is lower"
    changed = compare_runs(record(window_nll_dense=dense), record(window_nll_dense=[2.9, 3.4, 3.0]))
    assert changed.ci95 is None and changed.verdict == (
        "not comparable pairwise: different evaluation windows (their tokens: the dense model's loss differs "
        "window by window)")
