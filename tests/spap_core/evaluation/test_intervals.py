"""The 95% interval on a perplexity: its t quantiles are the tabulated ones, and on window losses
drawn from a known distribution it holds the true perplexity about 95% of the time. The paired
comparison of two perplexities on the same windows: its ratio interval covers the true ratio about
95% of the time, its verdict follows the data, and runs on other windows are not compared pairwise."""

import math

import numpy as np
import pytest

from spap_core.evaluation.intervals import (
    compare_runs,
    named_verdict,
    paired_comparison,
    perplexity_interval,
    seed_fields,
    seeded_comparison,
    seeded_perplexity,
    t_quantile_975,
)

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


# ----------------------------------------------------------------------- calibration seeds

SEED_SPREAD = 0.04  # nats: how far one calibration seed's pruned model moves every window's loss


def two_way_losses(rng, seeds, windows, seed_spread=SEED_SPREAD, loss=TRUE_LOSS):
    """Window losses of `seeds` pruned models on the same windows: a window's difficulty shared by
    every seed, a seed's shift shared by every window, and a little of both's interaction."""
    difficulty = rng.normal(0.0, LOSS_SPREAD, windows)
    shift = rng.normal(0.0, seed_spread, seeds)
    return (loss + difficulty[None, :] + shift[:, None] + rng.normal(0.0, 0.01, (seeds, windows))).tolist()


def test_with_one_seed_the_seeded_interval_is_the_window_interval():
    window_nll = [2.0, 2.5, 3.0, 2.2]
    seeded = seeded_perplexity([window_nll])
    assert seeded.ci95 == pytest.approx(perplexity_interval(window_nll))
    assert seeded.seed_range is None and seeded.seeds == 1


def test_the_seeded_perplexity_is_that_of_the_mean_loss_and_its_range_the_seeds():
    rows = [[2.0, 2.2], [2.4, 2.6], [2.1, 2.3]]
    seeded = seeded_perplexity(rows)
    assert seeded.perplexity == pytest.approx(math.exp(sum(map(sum, rows)) / 6))
    assert seeded.seed_range == pytest.approx((math.exp(2.1), math.exp(2.5)))
    assert seeded.ci95[0] < seeded.perplexity < seeded.ci95[1]


def test_the_combined_interval_holds_the_true_perplexity_where_the_window_interval_alone_does_not():
    """Seeds that move every window's loss by 0.15 nats: over 2,000 draws of 3 seeds × 16 windows the
    combined interval holds exp(TRUE_LOSS) at least 93% of the time (it double-counts the small
    interaction, so it may hold it a little more often than 95%), while an interval that sees only the
    windows of the seed-averaged losses falls well short."""
    rng = np.random.default_rng(3)
    held = held_by_windows = 0
    for _ in range(DRAWS):
        rows = two_way_losses(rng, 3, 16, seed_spread=0.15)
        combined = seeded_perplexity(rows).ci95
        windows_only = perplexity_interval(np.mean(rows, axis=0).tolist())
        held += combined[0] <= math.exp(TRUE_LOSS) <= combined[1]
        held_by_windows += windows_only[0] <= math.exp(TRUE_LOSS) <= windows_only[1]
    assert 0.93 <= held / DRAWS <= 0.99
    assert held_by_windows / DRAWS < 0.85


def test_seeds_that_pair_up_give_a_comparison_that_covers_the_true_ratio():
    """A is B with every loss 0.02 nats higher, each seed drawing the same calibration on both sides,
    and each side's seed shift its own: the ratio interval holds exp(0.02) about 95% of the time."""
    rng = np.random.default_rng(5)
    held = 0
    for _ in range(DRAWS):
        rows_b = np.array(two_way_losses(rng, 3, 16))
        rows_a = rows_b + 0.02 + rng.normal(0.0, 0.01, (3, 1)) + rng.normal(0.0, 0.005, rows_b.shape)
        comparison = seeded_comparison(rows_a.tolist(), rows_b.tolist(), 255, seeds_pair=True)
        held += comparison.ci95[0] <= math.exp(0.02) <= comparison.ci95[1]
    assert 0.93 <= held / DRAWS <= 0.99


def test_a_seeded_run_against_itself_is_not_distinguishable_and_says_its_seeds():
    rows = two_way_losses(np.random.default_rng(0), 3, 8)
    comparison = seeded_comparison(rows, rows, 255, seeds_pair=True)
    assert comparison.ratio == 1.0 and comparison.ci95 == (1.0, 1.0)
    assert comparison.verdict == "not distinguishable on these 2,040 tokens and 3 calibration seeds"
    assert comparison.seeds == (3, 3) and comparison.seed_spread == (1.0, 1.0)
    assert not comparison.distinguishable


def test_a_seed_spread_larger_than_the_gain_makes_a_window_verdict_not_distinguishable():
    """Every window 1% lower for A on seed 0, but seeds 1 and 2 give A higher and lower losses: on one
    seed A is lower, over the three the difference is within the seeds' spread."""
    base = two_way_losses(np.random.default_rng(1), 1, 16)[0]
    rows_b = [base, base, base]
    rows_a = [[loss + shift for loss in base] for shift in (-0.01, 0.03, -0.04)]
    assert seeded_comparison(rows_a[:1], rows_b[:1], 255).verdict == "A is lower"
    comparison = seeded_comparison(rows_a, rows_b, 255, seeds_pair=True)
    assert comparison.verdict == "not distinguishable on these 4,080 tokens and 3 calibration seeds"
    assert comparison.seed_spread == pytest.approx((math.exp(-0.04), math.exp(0.03)))


def test_seeds_that_do_not_pair_up_use_each_sides_own_spread():
    base = two_way_losses(np.random.default_rng(2), 1, 16)[0]
    rows_a = [[loss - 0.2 + shift for loss in base] for shift in (0.0, 0.01, -0.01)]
    comparison = seeded_comparison(rows_a, [base], 255)
    assert comparison.verdict == "A is lower" and comparison.seed_spread is None and comparison.seeds == (3, 1)
    same = seeded_comparison([base, base], [base], 255)
    assert same.verdict == "not distinguishable on these 4,080 tokens, with 2 and 1 calibration seeds"


def test_seed_rows_on_different_windows_are_refused():
    with pytest.raises(ValueError, match="same windows"):
        seeded_perplexity([[2.0, 2.1], [2.0]])


def test_a_record_repeated_over_seeds_is_compared_over_all_of_them():
    rows_a = two_way_losses(np.random.default_rng(4), 3, 8)
    rows_b = [[loss + 0.3 for loss in row] for row in rows_a]
    records = []
    for rows in (rows_a, rows_b):
        record = {"model": "m", "eval_source": "t", "eval_windows": 8, "eval_len": 256, "seed": 0,
                  "window_nll": rows[0], **seed_fields([0, 1, 2], rows)}
        records.append(record)
    assert records[0]["ppl_by_seed"] == pytest.approx([math.exp(sum(row) / 8) for row in rows_a])
    assert records[0]["ppl_seed_range"] == pytest.approx([min(records[0]["ppl_by_seed"]),
                                                          max(records[0]["ppl_by_seed"])])
    comparison = compare_runs(*records)
    assert comparison.verdict == "A is lower" and comparison.seeds == (3, 3) and comparison.seed_spread is not None
    assert comparison.ratio == pytest.approx(math.exp(-0.3))
    one_seed = dict(records[1], seeds=None, window_nll_by_seed=None)
    assert compare_runs(records[0], one_seed).seeds == (3, 1)


def test_a_verdict_names_its_sides_wherever_it_mentions_them():
    worse = paired_comparison([2.5, 3.0, 3.6], [2.0, 2.5, 3.0], 255)
    assert named_verdict(worse, "SPAP", "flap") == "flap's perplexity is lower than SPAP's"
    assert named_verdict(paired_comparison([], [], 255), "SPAP", "magnitude") == \
        "no verdict: SPAP and magnitude kept no window losses"
    unpaired = paired_comparison([2.0, 2.1], [2.0], 255)
    assert named_verdict(unpaired, "run A", "run B") == \
        "not comparable pairwise: run A was evaluated on 2 windows, run B on 1 window"
