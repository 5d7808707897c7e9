"""The rows of sweeps and scans carry what they were measured on, so a downloaded CSV stands alone;
each point runs over its calibration seeds and keeps its interval, and each is compared with its
reference (SPAP at its sparsity, a scan's default value) in a verdict the chart's sentence follows."""

import io
import json
import math
import threading
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from spap_core.evaluation.intervals import seeded_perplexity
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import PruneSettings, with_options
from spap_core.recovery.settings import RecoverySettings
from spap_service.comparisons import (
    BEFORE_RECOVERY,
    WINDOW_LOSSES,
    perplexity_by_sparsity,
    perplexity_cell,
    provenance_columns,
    ratio_cell,
    readable,
    recovery_order,
    scan_key,
    seeded_columns,
    sensitivity_scan,
    split_off_scale,
    sweep_key,
    sweep_reading,
    sweep_sparsities,
    table_csv,
    value_ranges,
    verdict_columns,
    with_default_value,
)
from spap_service.data import DataSpec, TextChoice
from spap_service.executors import PointResult
from spap_service.jobs import ProgressReporter
from spap_service.runs import RunRequest
from spap_service.uncertainty import perplexity_text


def test_a_sweep_or_scan_row_names_the_model_and_the_data_it_measured(tiny):
    text = TextChoice(kind="file", path="x.txt")
    whole = DataSpec(calibration=text, evaluation=text, nsamples=8, seqlen=250, eval_windows=0, eval_len=250,
                     batch_size=4)
    columns = provenance_columns(tiny, RunRequest(settings=PruneSettings(), seed=3, data=whole))
    assert list(columns) == ["model", "calibration", "evaluation"]
    assert columns["model"] == "tiny random Llama"
    assert columns["calibration"].startswith("8 × 250 tokens of ") and columns["calibration"].endswith(", seed 3")
    assert columns["evaluation"].startswith("the whole text tokens of ")


def _curves(values: dict[str, list[float]], sparsities=(0.1, 0.3, 0.5), text: str = "wikitext2") -> pd.DataFrame:
    return pd.DataFrame([{"method": method, "sparsity": sparsity, "text": text, "perplexity": value}
                         for method, points in values.items() for sparsity, value in zip(sparsities, points)])


def test_a_method_far_above_the_others_is_taken_off_their_axis():
    """magnitude's lowest value (2,000) is more than 10 × the highest median below it (wanda-sp's 60):
    off the axis; wanda-sp (min 40 < 10 × spap's median 45) stays."""
    table = _curves({"spap": [30, 45, 70], "wanda-sp": [40, 60, 130], "magnitude": [2_000, 50_000, 7_000_000]})
    split = split_off_scale(table)
    assert split.off_scale_methods == ["magnitude"]
    assert set(split.shown["method"]) == {"spap", "wanda-sp"} and len(split.off_scale) == 3
    assert value_ranges(split.off_scale) == "magnitude (2,000 to 7,000,000)"


def test_every_method_above_the_first_one_off_the_scale_is_off_it_too():
    table = _curves({"spap": [30, 45, 70], "magnitude": [2_000, 5_000, 9_000], "other": [4_000, 8_000, 90_000]})
    assert set(split_off_scale(table).off_scale_methods) == {"magnitude", "other"}


def test_methods_within_a_factor_of_ten_share_the_axis_and_a_single_method_always_stays():
    table = _curves({"spap": [30, 45, 70], "obs": [35, 200, 400]})  # obs's lowest, 35, is near spap
    assert split_off_scale(table).off_scale.empty
    assert split_off_scale(_curves({"magnitude": [2_000, 5_000, 9_000]})).off_scale.empty


def test_a_method_off_the_scale_in_one_panel_is_off_it_in_every_panel():
    near = _curves({"spap": [30, 45, 70], "magnitude": [60, 90, 200]}, text="shakespeare")
    far = _curves({"spap": [30, 45, 70], "magnitude": [2_000, 5_000, 9_000]})
    split = split_off_scale(pd.concat([far, near]), panel="text")
    assert split.off_scale_methods == ["magnitude"] and len(split.off_scale) == 6
    assert value_ranges(split.panel("text", "shakespeare").off_scale) == "magnitude (60.0 to 200.0)"


def test_the_sweep_reading_names_the_lowest_method_at_the_highest_sparsity_and_what_is_off_the_axis():
    table = _curves({"spap": [30, 45, 65], "fasp": [31, 50, 71.1], "magnitude": [2_000, 5_000, 9_000]})
    reading = sweep_reading(split_off_scale(table), dense=28.17, where="on wikitext2, ")
    assert reading == ("On wikitext2, at 50% sparsity, spap has the lowest perplexity, 65.0: 6.1 below fasp, the "
                       "next (no interval: these perplexities were kept without their window losses). The dense "
                       "model's is 28.2 (dashed). Off the axis, far above the others: magnitude (2,000 to 9,000).")


def test_the_sweep_reading_compares_only_where_two_methods_were_measured():
    table = _curves({"spap": [30, 45, 65], "fasp": [31, 50]})  # fasp has no 50% point
    assert sweep_reading(split_off_scale(table)).startswith("At 30% sparsity, spap has the lowest perplexity, 45.0: "
                                                            "5.0 below fasp")
    alone = sweep_reading(split_off_scale(_curves({"flap": [33, 40, 52]})))
    assert alone == "The perplexity of flap is 33.0 at 10% sparsity and 52.0 at 50%."


# ------------------------------------------------------------- calibration seeds, intervals, verdicts

WINDOWS, TOKENS_PER_WINDOW = 8, 31


def _losses(seeds: int, shift: float = 0.0, seed: int = 0) -> list[list[float]]:
    """Window losses of `seeds` calibration seeds on the same WINDOWS windows: a window's difficulty
    (shared by every method and seed), a little seed noise, and `shift` nats added."""
    rng = np.random.default_rng(seed)
    difficulty = 3.0 + rng.normal(0, 0.3, WINDOWS)
    return [list(difficulty + rng.normal(0, 0.01, WINDOWS) + shift) for _ in range(seeds)]


def _row(method: str, sparsity: float, losses: list[list[float]], error: str | None = None,
         before_recovery: list[list[float]] | None = None) -> dict:
    """A sweep's row from its seeds' window losses (after recovery, when `before_recovery` gives the
    losses before it)."""
    before = before_recovery or [[] for _ in losses]
    results = [PointResult(perplexity=math.exp(float(np.mean(row))), dense_perplexity=15.0, mean_layer_error=0.1,
                           params_after=100, eval_tokens=WINDOWS * TOKENS_PER_WINDOW, window_nll=tuple(row),
                           window_nll_before_recovery=tuple(before_row), error=error if index == 0 else None)
               for index, (row, before_row) in enumerate(zip(losses, before))]
    point = seeded_columns(results, list(range(len(losses))))
    return {"method": method, "sparsity": sparsity, **point.leading, **point.trailing}


def _sweep(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    return verdict_columns(table, table["method"] == "spap", "spap", "spap", within="sparsity", seeds_pair=True)


def test_a_point_over_seeds_has_the_combined_perplexity_its_interval_and_the_seeds_range():
    losses = _losses(2)
    point = seeded_columns([PointResult(perplexity=1.0, mean_layer_error=error, eval_tokens=248, window_nll=tuple(row))
                            for row, error in zip(losses, (0.1, 0.3))], [4, 5])
    combined = seeded_perplexity(losses)
    assert point.leading == {"perplexity": combined.perplexity, "ppl_ci95_low": combined.ci95[0],
                             "ppl_ci95_high": combined.ci95[1], "seeds": 2, "ppl_seed_low": combined.seed_range[0],
                             "ppl_seed_high": combined.seed_range[1]}
    assert point.trailing["mean_layer_error"] == pytest.approx(0.2) and point.trailing[WINDOW_LOSSES] == losses
    one = seeded_columns([PointResult(perplexity=1.0, window_nll=tuple(losses[0]))], [0]).leading
    assert one["seeds"] == 1 and math.isnan(one["ppl_seed_low"]) and math.isnan(one["ppl_seed_high"])
    assert one["ppl_ci95_low"] < one["perplexity"] < one["ppl_ci95_high"]


def test_a_failed_seed_fails_its_point_and_says_which_and_why():
    good = PointResult(perplexity=20.0, window_nll=tuple(_losses(1)[0]))
    point = seeded_columns([good, PointResult(error="its Ray worker died")], [3, 4])
    assert point.trailing["error"] == "calibration seed 4: its Ray worker died"
    assert math.isnan(point.leading["perplexity"]) and point.trailing[WINDOW_LOSSES] == []
    alone = seeded_columns([PointResult(error="its Ray worker died")], [3])  # one seed: the reason alone
    assert alone.trailing["error"] == "its Ray worker died"


def test_each_baseline_gets_a_verdict_against_spap_at_its_own_sparsity():
    spap = _losses(2)
    table = _sweep([_row("spap", 0.3, spap), _row("same", 0.3, spap), _row("worse", 0.3, _losses(2, shift=0.5)),
                    _row("better", 0.3, _losses(2, shift=-0.4)), _row("spap", 0.5, _losses(2, shift=1.0)),
                    _row("worse", 0.5, _losses(2, shift=1.0, seed=1)),
                    _row("failed", 0.3, spap, error="out of memory")])
    verdict = dict(zip(zip(table["method"], table["sparsity"]), table["verdict_vs_spap"]))
    assert verdict[("spap", 0.3)] == verdict[("spap", 0.5)] == "reference"
    assert verdict[("same", 0.3)] == f"not distinguishable on these {WINDOWS * TOKENS_PER_WINDOW} tokens and 2 " \
                                     "calibration seeds"
    same = table[table["method"] == "same"].iloc[0]
    assert (same["ratio_vs_spap"], same["ratio_vs_spap_ci95_low"], same["ratio_vs_spap_ci95_high"]) == (1.0, 1.0, 1.0)
    assert verdict[("worse", 0.3)] == "higher than spap" and verdict[("better", 0.3)] == "lower than spap"
    worse = table[(table["method"] == "worse") & (table["sparsity"] == 0.3)].iloc[0]
    assert worse["ratio_vs_spap_ci95_low"] > 1 and worse["ratio_vs_spap"] == pytest.approx(math.exp(0.5), rel=0.02)
    # at 50% it is compared with spap at 50% (both shifted by 1 nat), not at 30%: other windows' noise, no gap
    assert verdict[("worse", 0.5)].startswith("not distinguishable")
    assert verdict[("failed", 0.3)] == "no verdict: this point has no result"
    assert ratio_cell(worse, "spap").startswith(f"{worse['ratio_vs_spap']:.3f} [") and \
        ratio_cell(worse, "spap").endswith("]: higher than spap")
    assert perplexity_cell(worse) == perplexity_text(worse["perplexity"], (worse["ppl_ci95_low"],
                                                                           worse["ppl_ci95_high"]),
                                                     (worse["ppl_seed_low"], worse["ppl_seed_high"]), 2)


def test_without_spap_at_a_sparsity_a_baseline_has_no_verdict_and_says_why():
    table = _sweep([_row("spap", 0.3, _losses(1), error="its worker died"), _row("flap", 0.3, _losses(1))])
    assert table["verdict_vs_spap"].tolist() == ["reference", "no verdict: spap has no result here"]


def test_the_sweep_reading_names_the_lowest_only_when_the_verdict_does():
    spap = _losses(2)
    clear = split_off_scale(_sweep([_row("spap", 0.5, spap), _row("flap", 0.5, _losses(2, shift=0.3))]))
    reading = sweep_reading(clear)
    gap = readable(clear.shown["perplexity"].max() - clear.shown["perplexity"].min())
    assert reading.startswith(f"At 50% sparsity, spap has the lowest perplexity, "
                              f"{readable(clear.shown['perplexity'].min())}: {gap} below flap, the next, a difference "
                              "beyond the noise (their ratio, ")
    assert reading.endswith(", excludes 1 at 95%).")
    # flap a hair below spap, within the windows' noise: never "the lowest … below", but "not distinguishable"
    tied = split_off_scale(_sweep([_row("spap", 0.5, spap), _row("flap", 0.5, _losses(2, shift=-0.001, seed=7))]))
    reading = sweep_reading(tied)
    assert "has the lowest perplexity" not in reading and " below " not in reading
    assert reading.startswith("At 50% sparsity, flap's perplexity, ")
    assert (f", is not distinguishable from spap's, {readable(tied.shown['perplexity'].max())}, the next, on these "
            f"{WINDOWS * TOKENS_PER_WINDOW} tokens and 2 calibration seeds (their ratio, ") in reading
    assert reading.endswith(", holds 1 at 95%).")


def test_a_scan_always_holds_the_default_value_and_the_keys_hold_the_seeds(tiny):
    text = TextChoice(kind="file", path="x.txt")
    data = DataSpec(calibration=text, evaluation=text, nsamples=8, seqlen=32, eval_windows=4, eval_len=32,
                    batch_size=4)
    base = RunRequest(settings=PruneSettings(sparsity=0.3), seed=0, data=data)
    assert with_default_value(base, "sparsity", [0.1, 0.5]) == [0.1, 0.3, 0.5]
    assert with_default_value(base, "sparsity", [0.1, 0.3]) == [0.1, 0.3]
    twice = replace(base, seeds=2)
    assert scan_key(tiny, base, "sparsity", [0.1, 0.3]) != scan_key(tiny, twice, "sparsity", [0.1, 0.3])
    methods = {"spap": base.settings}
    assert sweep_key(tiny, base, methods, [0.3]) != sweep_key(tiny, twice, methods, [0.3])


def test_a_tiny_sweep_and_scan_over_two_seeds_give_seed_columns_intervals_and_verdicts(tiny, text_files):
    data = DataSpec(calibration=TextChoice(kind="file", path=str(text_files["calib"])),
                    evaluation=TextChoice(kind="file", path=str(text_files["eval"])),
                    nsamples=4, seqlen=32, eval_windows=4, eval_len=32, batch_size=4)
    spap = with_options(PruneSettings(sparsity=0.25), altmin=AltMinSettings(rounds=0))
    base = RunRequest(settings=spap, seed=0, data=data, seeds=2)
    progress, cancel = ProgressReporter(), threading.Event()
    sweep = sweep_sparsities(tiny, base, {"spap": spap, "magnitude": PruneSettings(method="magnitude")}, [0.25],
                             progress, cancel)
    scan = sensitivity_scan(tiny, base, "sparsity", [0.5], progress, cancel)  # 25%, the default, is added
    for table in (sweep, scan):
        assert "error" not in table and (table["seeds"] == 2).all()
        assert ((table["ppl_ci95_low"] < table["perplexity"]) & (table["perplexity"] < table["ppl_ci95_high"])).all()
        assert (table["ppl_seed_low"] <= table["ppl_seed_high"]).all()
        assert all(len(rows) == 2 and all(len(row) == 4 for row in rows) for rows in table[WINDOW_LOSSES])
        for rows, perplexity in zip(table[WINDOW_LOSSES], table["perplexity"]):
            assert perplexity == pytest.approx(seeded_perplexity(rows).perplexity)
    assert sweep["verdict_vs_spap"].tolist()[0] == "reference"
    assert scan["value"].tolist() == [0.25, 0.5] and scan["default"].tolist() == [True, False]
    assert scan["verdict_vs_default"].iloc[0] == "reference" and scan["ratio_vs_default"].iloc[1] > 0
    loaded_back = pd.read_csv(io.StringIO(table_csv(scan)))
    assert json.loads(loaded_back[WINDOW_LOSSES].iloc[1]) == scan[WINDOW_LOSSES].iloc[1]


# ------------------------------------------------------------------ recovery after every point


def _recovered(points: dict[tuple[str, float], tuple[float, float]]) -> pd.DataFrame:
    """A recovered sweep whose (method, sparsity) point has its mean loss (after recovery, before it)
    shifted by these nats on the same windows."""
    return _sweep([_row(method, sparsity, _losses(1, shift=after), before_recovery=_losses(1, shift=before))
                   for (method, sparsity), (after, before) in points.items()])


def test_a_sweeps_key_holds_the_recovery_its_points_run(tiny):
    text = TextChoice(kind="file", path="x.txt")
    data = DataSpec(calibration=text, evaluation=text, nsamples=8, seqlen=32, eval_windows=4, eval_len=32,
                    batch_size=4)
    base = RunRequest(settings=PruneSettings(sparsity=0.3), seed=0, data=data)
    methods = {"spap": base.settings}
    keys = [sweep_key(tiny, replace(base, recovery=recovery), methods, [0.3])
            for recovery in (RecoverySettings(), RecoverySettings(mode="lora", steps=2),
                             RecoverySettings(mode="lora", steps=3))]
    assert len(set(keys)) == 3
    assert keys[0] == sweep_key(tiny, base, methods, [0.3])  # no recovery: the key a sweep had without one


def test_a_recovered_point_keeps_its_perplexity_before_recovery_and_its_table_shows_both():
    after, before = _losses(2), _losses(2, shift=0.4)
    row = _row("spap", 0.3, after, before_recovery=before)
    combined = seeded_perplexity(before)
    assert (row[BEFORE_RECOVERY.perplexity], row[BEFORE_RECOVERY.ci95_low], row[BEFORE_RECOVERY.ci95_high],
            row[BEFORE_RECOVERY.seed_low], row[BEFORE_RECOVERY.seed_high]) == (
        combined.perplexity, *combined.ci95, *combined.seed_range)
    assert row[BEFORE_RECOVERY.window_losses] == before and row["perplexity"] == seeded_perplexity(after).perplexity
    unrecovered = _row("spap", 0.3, after)
    assert not {column for column in unrecovered if "before_recovery" in column}  # no empty columns without one

    table = _sweep([row, _row("flap", 0.3, _losses(2, shift=0.2), before_recovery=_losses(2, shift=0.9))])
    shown = perplexity_by_sparsity(table)
    assert shown.columns.tolist() == ["spap, after recovery", "spap, before recovery", "flap, after recovery",
                                      "flap, before recovery"]
    spap = table.iloc[0]
    assert shown.loc["30%", "spap, before recovery"] == perplexity_text(
        combined.perplexity, combined.ci95, combined.seed_range, 2) == perplexity_cell(spap, BEFORE_RECOVERY)
    assert shown.loc["30%", "spap, after recovery"] == perplexity_cell(spap)
    without = _sweep([unrecovered, _row("flap", 0.3, _losses(2, shift=0.2))])
    assert perplexity_by_sparsity(without).columns.tolist() == ["spap", "flap"]
    loaded_back = pd.read_csv(io.StringIO(table_csv(table)))
    assert json.loads(loaded_back[BEFORE_RECOVERY.window_losses].iloc[0]) == before
    assert loaded_back[BEFORE_RECOVERY.perplexity].iloc[1] == pytest.approx(table[BEFORE_RECOVERY.perplexity].iloc[1])
    assert "before_recovery" not in table_csv(without)


def test_the_reading_of_a_recovered_sweep_reads_after_recovery_and_says_the_order_holds_before_it():
    table = _recovered({("spap", 0.3): (0.0, 0.3), ("flap", 0.3): (0.5, 0.9),
                        ("spap", 0.5): (1.0, 1.5), ("flap", 0.5): (1.6, 2.2)})
    order = ("By their perplexities, recovery keeps the methods' order at every sparsity: spap is lowest at each, "
             "before recovery and after it.")
    assert recovery_order(table) == order
    reading = sweep_reading(split_off_scale(table), dense=15.0)
    assert reading.startswith("At 50% sparsity after recovery, spap has the lowest perplexity, ")
    assert reading.endswith(f"The dense model's is 15.0 (the grey dashes). {order}")


def test_the_reading_of_a_recovered_sweep_says_where_recovery_changes_the_order():
    # flap is above spap before recovery at both sparsities, and below it after recovery at 50%
    table = _recovered({("spap", 0.3): (0.0, 0.3), ("flap", 0.3): (0.5, 0.9),
                        ("spap", 0.5): (1.6, 1.8), ("flap", 0.5): (1.0, 2.4), ("obs", 0.5): (1.8, 2.0)})
    assert recovery_order(table) == (
        "By their perplexities, recovery changes the methods' order: at 50%, flap is lowest after recovery and spap "
        "before it (spap < obs < flap before, flap < spap < obs after); it keeps it at 30%.")
    assert sweep_reading(split_off_scale(table)).endswith(recovery_order(table))
    # the lowest stays, the others swap
    swapped = _recovered({("spap", 0.3): (0.0, 0.1), ("flap", 0.3): (0.5, 0.9), ("obs", 0.3): (0.4, 1.0)})
    assert recovery_order(swapped) == (
        "By their perplexities, recovery changes the methods' order: at 30%, spap is lowest before and after "
        "recovery, the others reorder (spap < flap < obs before, spap < obs < flap after).")


def test_a_sweep_without_recovery_reads_as_before():
    table = _sweep([_row("spap", 0.5, _losses(1)), _row("flap", 0.5, _losses(1, shift=0.3))])
    reading = sweep_reading(split_off_scale(table), dense=15.0)
    assert "recovery" not in reading and reading.endswith("The dense model's is 15.0 (dashed).")
