"""The words the app puts next to its charts are computed from the data they describe: each test
builds the data in a way that makes a claim true or false and checks the sentence follows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from spap_core.evaluation.latency import Timing
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import PruneSettings, with_options
from spap_core.methods.spap import readout_gap
from spap_core.pipeline.walk import LayerRecord, prune_model
from spap_service.analysis import (
    MASK_COLOUR_NAMES,
    SPAP_PRUNED,
    changed_mind_counts,
    final_norms,
    jaccard_matrix,
    marked_share_of_final,
    mask_picture,
    mask_story,
    norm_paths,
    overlap_scope,
    overlap_story,
    parameter_picture,
    readable_range,
    readout_masks,
    scan_picture,
    scores_picture,
    soft_masks,
    speedup_verdict,
    time_breakdown,
    violation_sentence,
    zeroshot_picture,
)
from spap_service.comparisons import SCAN_REFERENCE, verdict_columns

NO_ALTMIN = AltMinSettings(rounds=0)


def run(tiny, **penalty_changes):
    torch.manual_seed(0)
    calibration = torch.randint(3, 200, (4, 48))
    settings = with_options(PruneSettings(sparsity=0.25), altmin=NO_ALTMIN)
    settings = with_options(settings, penalty=replace(settings.options.penalty, **penalty_changes))
    return prune_model(tiny, calibration, settings)


def ends_binary(masks: np.ndarray) -> bool:
    final = masks[:, -1]
    return bool(np.all((final < 1e-3) | (final > 1 - 1e-3)))


def test_the_story_of_the_default_path_says_s_does_not_end_binary(tiny):
    result = run(tiny)  # ramp schedule, s⁽⁰⁾ = 0, α = 0.5
    masks = soft_masks(result)
    assert not ends_binary(masks)
    story = mask_story(result, masks)
    assert "s⁽⁰⁾ = 0" in story and "⌈λk/K⌉" in story
    assert "is not binary" in story and "read out as the λ largest s" in story
    assert "is binary" not in story.replace("is not binary", "")
    # the values it names are the values s has
    named = story.split("its values are ", 1)[1].split(", and", 1)[0]
    assert np.allclose(sorted(float(v) for v in named.split(", ")), np.unique(np.round(masks[:, -1], 3)), atol=1e-6)


def test_the_story_says_binary_only_when_s_is_binary(tiny):
    result = run(tiny, schedule="fixed", momentum=1.0)  # every step jumps to the λ marks
    masks = soft_masks(result)
    assert ends_binary(masks)
    story = mask_story(result, masks)
    assert "s is binary" in story and "not binary" not in story
    assert "every iteration marks the λ" in story


def test_the_story_names_the_centre_start(tiny):
    result = run(tiny, start="centre")
    story = mask_story(result, soft_masks(result))
    assert "λ/n = 0.25 everywhere" in story and "s⁽⁰⁾ = 0 " not in story


def test_readout_gap_is_zero_exactly_for_a_binary_mask():
    assert readout_gap(np.array([1.0, 0.0, 1.0, 0.0]), 2) == 0.0
    assert readout_gap(np.array([0.5, 0.0, 0.5, 0.0]), 2) == pytest.approx(0.5)  # (½ + ½) short of 1, ÷ λ
    assert readout_gap(np.array([0.5, 0.5, 0.5, 0.5]), 2) == pytest.approx(1.0)  # and ½ + ½ off 0


def test_readout_frames_and_channel_groups_match_the_run(tiny):
    result = run(tiny)
    masks, readouts = soft_masks(result), readout_masks(result)
    for layer, record in enumerate(result.layers):
        assert set(np.flatnonzero(readouts[layer] == 0)) == set(record.keep.tolist())
    share = marked_share_of_final(masks, readouts)
    assert np.all(np.diff(share, axis=1) >= 0) and np.allclose(share[:, -1], 1.0)  # ramp: all marked by k = K
    assert changed_mind_counts(masks, readouts).shape == (len(result.layers),)
    paths = norm_paths(result, 0)
    assert paths is not None and set(paths["iteration"]) == set(range(1, masks.shape[1] + 1))
    rhos = sorted({step.rho for step in result.trace if step.layer == 0})
    assert sorted(paths["rho"].unique()) == pytest.approx(rhos)
    # the ρ growth shrinks the columns marked from the first iteration on
    first = paths[paths["group"] == "pruned, marked from k = 1"].sort_values("iteration")
    assert first["relative_norm"].iloc[-1] < first["relative_norm"].iloc[0] < 1.0 + 1e-6
    after = final_norms(result.layers[0])
    assert (after[after["status"] == "pruned"]["relative_norm"] == 0).all()
    assert (after[after["status"] == "kept"]["relative_norm"] > 0).all()


def test_the_violation_sentence_says_only_what_the_iterations_show():
    single = violation_sentence(np.array([0.4]))
    assert "single ρ iteration (K = 1)" in single and "keeps growing" not in single and "rises" not in single
    assert "ρ shrinks the marked channels' columns faster" in violation_sentence(np.array([3.0, 1.0]))
    assert "then ρ wins" in violation_sentence(np.array([1.0, 3.0, 0.5]))


def test_mask_evolution_with_one_iteration_says_so(app_files):
    from app_harness import click, finish_job, open_page, start_app

    at = start_app()
    open_page(at, "run_spap")
    at.slider(key="K").set_value(1)
    click(at, "Run SPAP")
    finish_job(at, "run")
    open_page(at, "mask_evolution")
    captions = " ".join(c.value for c in at.caption)
    assert "single ρ iteration (K = 1)" in captions and "keeps growing" not in captions


def test_an_axis_spans_at_least_five_percent_of_its_mean():
    values = np.array([811e-6, 812e-6, 815e-6])  # a 0.5 % spread
    (low, high), note = readable_range(values)
    assert (high - low) >= 0.05 * values.mean() and low < values.min() and high > values.max()
    assert note == "spread 0.5% of the mean"
    wide = np.array([10.0, 20.0])
    (low, high), _ = readable_range(wide)
    assert low < 10 and high > 20 and (high - low) < 12  # a real spread is kept, with a margin


def test_latency_says_inconclusive_when_the_ranges_overlap():
    dense = Timing(median=5.0, low=2.0, high=10.0, repeats=5)
    pruned = Timing(median=5.7, low=3.0, high=9.0, repeats=5)
    conclusive, sentence = speedup_verdict("Prefill", dense, pruned, "ms", lower_is_faster=True)
    assert not conclusive and "inconclusive" in sentence and "2–10 ms" in sentence
    faster = Timing(median=1.0, low=0.9, high=1.1, repeats=5)
    conclusive, sentence = speedup_verdict("Prefill", dense, faster, "ms", lower_is_faster=True)
    assert conclusive and "faster in every repeat" in sentence
    conclusive, sentence = speedup_verdict("Decode", Timing(10, 9, 11, 5), Timing(20, 19, 21, 5), "tokens/s",
                                           lower_is_faster=False)
    assert conclusive and "faster" in sentence


def test_where_the_time_went_shows_alternating_minimization_only_for_runs_that_had_it():
    record = {"timings": {"capture": 1.0, "solve": 2.0, "altmin": 0.0, "propagate": 0.5},
              "eval_seconds": 3.0, "dense_eval_seconds": 4.0}
    without = with_options(PruneSettings(), altmin=AltMinSettings(rounds=0))
    assert without.recovery is None
    assert time_breakdown(record, without) == {"prune: capture": 1.0, "prune: solve": 2.0, "prune: propagate": 0.5,
                                               "pruned perplexity": 3.0, "dense perplexity": 4.0}
    assert "prune: altmin" not in time_breakdown(record, PruneSettings(method="flap"))
    with_recovery = with_options(PruneSettings(), altmin=AltMinSettings(rounds=1))
    assert time_breakdown({**record, "timings": {**record["timings"], "altmin": 6.0}}, with_recovery)[
        "prune: altmin"] == 6.0


def test_the_mask_picture_counts_what_its_heatmap_draws():
    steps = np.array([[0.0, 0.5, 0.0, 0.0, 0.0], [0.0, 0.8, 0.5, 0.0, 0.0], [0.0, 0.9, 0.8, 0.5, 0.0]])
    readout = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
    sentence = mask_picture(np.vstack([steps, readout]), layer=7, width=5)
    left_alone, pushed_out = MASK_COLOUR_NAMES
    assert sentence.startswith(f"Each row is one ρ step of layer 7 (its 5 channels): the more {pushed_out}")
    assert f"({left_alone}: left alone)" in sentence
    assert "1 are being pushed after step 1, 3 after step 3" in sentence
    assert sentence.endswith(f"the bottom row is what gets removed: 3 channels, in {pushed_out}.")
    readout[3] = 0.0  # the data changes, the sentence follows
    assert "removed: 2 channels" in mask_picture(np.vstack([steps, readout]), layer=7, width=5)
    subset = mask_picture(np.vstack([steps, readout])[:, :4], layer=7, width=16)
    assert "(4 of its 16 channels, evenly spaced)" in subset and subset.endswith("removed: 2 of the drawn channels, "
                                                                                 f"in {pushed_out}.")
    with_layer = mask_picture(np.vstack([steps, readout])[:, :4], layer=7, width=16, layer_removed=6)
    assert with_layer.endswith(f"removed: 2 of the drawn channels, in {pushed_out} (6 of the layer's 16).")
    single = mask_picture(np.vstack([steps[-1:], readout]), layer=0, width=5)
    assert "3 are being pushed after its single step" in single


def record(layer: int, keep: list[int], scores: dict[str, list[float]]) -> LayerRecord:
    width = len(next(iter(scores.values())))
    return LayerRecord(layer=layer, width=width, keep=np.array(keep),
                       scores={name: np.array(values) for name, values in scores.items()},
                       objective=None, dense_objective=1.0)


def test_the_scores_picture_names_the_layer_the_cut_and_the_nearest_metric():
    layer = record(4, keep=[2, 3, 4, 5], scores={"magnitude": [1, 2, 3, 4, 5, 6], "flap": [6, 5, 4, 3, 2, 1]})
    sentence = scores_picture(layer, "left of")
    assert "the 6 channels of layer 4" in sentence and "the 2 left of the red dashed line" in sentence
    assert "the 2 this run removed match magnitude's on 2 of them" in sentence  # removed {0, 1}: magnitude's lowest
    flipped = record(4, keep=[0, 1, 2, 3], scores=layer.scores)
    assert "match flap's on 2 of them" in scores_picture(flipped, "below")
    assert "the 2 below the red dashed line" in scores_picture(flipped, "below")


def test_the_overlap_caption_quotes_the_matrix_it_stands_beside_and_names_its_scope():
    ranks = {"spap_first": [1, 2, 3, 4], "spap_last": [1, 2, 3, 4]}
    agreeing = record(0, keep=[2, 3], scores=ranks)  # SPAP removed {0, 1}: its rankings' lowest two
    disagreeing = record(1, keep=[0, 3], scores=ranks)  # removed {1, 2}: Jaccard 1/3 with {0, 1}
    this_layer = jaccard_matrix([disagreeing])
    story = overlap_story(this_layer, overlap_scope(1, 2))
    assert story is not None and story.startswith("In layer 1,")
    assert f"first ranking scored lowest by {this_layer.loc['spap_first', SPAP_PRUNED]:.2f}" in story
    assert "by 0.33" in story
    assert "moved well away" in story
    mean = jaccard_matrix([agreeing, disagreeing])
    story = overlap_story(mean, overlap_scope(None, 2))
    assert story is not None and story.startswith("In the mean over 2 layers,")
    assert f"by {mean.loc['spap_first', SPAP_PRUNED]:.2f}" in story and "0.67" in story
    assert overlap_story(jaccard_matrix([record(0, keep=[2, 3], scores={"magnitude": [1, 2, 3, 4]})]), "x") is None


def _scan(values: list[float], perplexities: list[float], default: float, shifts: dict[float, float]) -> pd.DataFrame:
    """A scan's table with its verdict columns: each value's window losses are the default's, shifted
    by `shifts[value]` nats (none: the default's own losses, so not distinguishable from it)."""
    rng = np.random.default_rng(0)
    losses = list(3.0 + rng.normal(0, 0.3, 8))
    table = pd.DataFrame({"value": values, "default": [value == default for value in values],
                          "mean_layer_error": [0.2, 0.3, 0.1], "perplexity": perplexities,
                          "ppl_ci95_low": [p * 0.9 for p in perplexities],
                          "ppl_ci95_high": [p * 1.1 for p in perplexities], "seeds": 1, "ppl_seed_low": np.nan,
                          "ppl_seed_high": np.nan, "dense_perplexity": [15.0] * 3, "eval_tokens": 8 * 31,
                          "window_nll_by_seed": [[[loss + shifts.get(value, 0.0) for loss in losses]]
                                                 for value in values]})
    return verdict_columns(table, table["default"], SCAN_REFERENCE, "the default value", within=None,
                           seeds_pair=True)


def test_the_scan_picture_follows_the_scan():
    table = _scan([0.5, 0.1, 0.9], [20.0, 25.0, 18.0], default=0.5, shifts={})
    sentence = scan_picture(table, "α")
    assert 'with "α" set to the value under it: from 0.1 to 0.9' in sentence
    assert "mean layer error falls from 0.3 to 0.1" in sentence and "perplexity falls from 25 to 18" in sentence
    assert "(the dense model's: 15)" in sentence
    table["perplexity"] = [30.0, 25.0, 18.0]
    assert "perplexity rises from 25 to 30 (at 0.5), then falls to 18" in scan_picture(table, "α")
    table["perplexity"] = [30.0, 30.04, 30.02]
    assert "perplexity stays at about 30 " in scan_picture(table, "α")
    table["perplexity"] = [30.0, 25.0, 18.0]
    shares = scan_picture(table, "Sparsity", share=True)  # a sparsity reads in percent, as its axis does
    assert "from 10% to 90%" in shares and "rises from 25 to 30 (at 50%)" in shares


def test_the_scan_picture_says_what_the_verdicts_against_the_default_allow():
    """Values whose losses equal the default's are not distinguishable from it, and the sentence says
    the scan's changes are within the noise; a value shifted by half a nat is named higher."""
    alike = scan_picture(_scan([0.1, 0.5, 0.9], [20.0, 21.0, 22.0], default=0.5, shifts={}), "α")
    assert alike.endswith("Against the default value, 0.5 (perplexity 21.00 [18.90, 23.10]), the perplexity is not "
                          "distinguishable at 0.1, 0.9 on these 248 tokens. Its changes across this scan are within "
                          "the noise of the evaluation and the calibration.")
    apart = scan_picture(_scan([0.1, 0.5, 0.9], [20.0, 21.0, 35.0], default=0.5, shifts={0.9: 0.5, 0.1: -0.5}), "α")
    assert apart.endswith("the perplexity is lower at 0.1; higher at 0.9.")
    assert "within the noise" not in apart


def test_the_zeroshot_picture_quotes_the_mean_row_or_the_single_task():
    rows = pd.DataFrame([
        {"task": "piqa", "metric": "acc", "dense": 0.70, "pruned": 0.60, "change": -0.10, "n": 50},
        {"task": "piqa", "metric": "acc_norm", "dense": 0.72, "pruned": 0.61, "change": -0.11, "n": 50},
    ])
    assert "on piqa, the dense model picks the right answer 70% of the time and the pruned one 60% (-10.0 " \
           "points)" in zeroshot_picture(rows)
    rows = pd.concat([rows, pd.DataFrame([
        {"task": "boolq", "metric": "acc", "dense": 0.50, "pruned": 0.56, "change": 0.06, "n": 50},
        {"task": "mean", "metric": "acc", "dense": 0.60, "pruned": 0.58, "change": -0.02, "n": 100}])])
    assert "on average over 2 tasks, the dense model picks the right answer 60% of the time and the pruned one " \
           "58% (-2.0 points)" in zeroshot_picture(rows)


def test_the_parameter_picture_quotes_the_mlp_share_and_widths():
    split = {"attention": 20, "MLP": 60, "embeddings": 15, "norms and other": 5}
    sentence = parameter_picture(split, [128, 128, 96])
    assert "The MLPs hold 60% of the model's 0.0 M parameters" in sentence
    assert "each of its 3 layers has 96–128 to choose from" in sentence
    assert "has 128 to choose" in parameter_picture({**split, "MLP": 2_000_000}, [128, 128])
