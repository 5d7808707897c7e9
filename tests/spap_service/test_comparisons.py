"""The rows of sweeps and scans carry what they were measured on, so a downloaded CSV stands alone."""

import pandas as pd

from spap_core.methods.registry import PruneSettings
from spap_service.comparisons import provenance_columns, split_off_scale, sweep_reading, value_ranges
from spap_service.data import DataSpec, TextChoice
from spap_service.runs import RunRequest


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
                       "next. The dense model's is 28.2 (dashed). Off the axis, far above the others: "
                       "magnitude (2,000 to 9,000).")


def test_the_sweep_reading_compares_only_where_two_methods_were_measured():
    table = _curves({"spap": [30, 45, 65], "fasp": [31, 50]})  # fasp has no 50% point
    assert sweep_reading(split_off_scale(table)).startswith("At 30% sparsity, spap has the lowest perplexity, 45.0: "
                                                            "5.0 below fasp")
    alone = sweep_reading(split_off_scale(_curves({"flap": [33, 40, 52]})))
    assert alone == "The perplexity of flap is 33.0 at 10% sparsity and 52.0 at 50%."
