"""A perplexity and a comparison read with their intervals, in the same words on every page."""

import math

from spap_core.evaluation.intervals import paired_comparison
from spap_service.uncertainty import interval_text, number, perplexity_text, ratio_interval, ratio_text


def test_a_perplexity_reads_with_its_interval_or_says_it_has_none():
    assert perplexity_text(42.7213, (41.9, 43.571)) == "42.72 [41.90, 43.57]"
    assert perplexity_text(42.7213, None) == "42.72 (no interval)"
    assert perplexity_text(17690.02, (15000.0, math.inf)) == "17,690 [15,000, inf]"


def test_the_seeds_range_follows_the_interval_only_with_more_than_one_seed():
    assert perplexity_text(42.7, (41.1, 44.4), (42.1, 43.3), seeds=3) == "42.70 [41.10, 44.40]; 3 seeds 42.10 to 43.30"
    assert perplexity_text(42.7, (41.1, 44.4), (42.1, 43.3), seeds=1) == "42.70 [41.10, 44.40]"


def test_a_ratio_reads_with_its_interval_and_the_verdict_of_the_data():
    same = paired_comparison([2.0, 2.5, 3.0], [2.0, 2.5, 3.0], 255)
    assert ratio_text(same) == "ratio 1.000 [1.000, 1.000]: not distinguishable on these 765 tokens"
    worse = paired_comparison([2.5, 3.0, 3.6], [2.0, 2.5, 3.0], 255)
    assert ratio_text(worse).startswith(f"ratio {math.exp(1.6 / 3):.3f} [") and ratio_text(worse).endswith(
        ": B is lower")
    assert ratio_text(paired_comparison([], [2.0], 255)) == "no verdict: A kept no window losses"
    assert number(math.inf) == "inf"


def test_a_ratio_cell_says_when_there_is_no_ratio_or_no_interval():
    assert ratio_interval(0.9461, (0.8332, 1.0744)) == "0.946 [0.833, 1.074]"
    assert ratio_interval(0.9461, None) == "0.946 (no interval)"
    assert ratio_interval(0.9461, (math.nan, math.nan)) == "0.946 (no interval)"
    assert ratio_interval(None, None) == ratio_interval(math.nan, None) == "–"


def test_an_interval_cell_says_when_there_is_none():
    assert interval_text([41.9, 43.571]) == "[41.90, 43.57]"
    assert interval_text(None) == "no interval"
