"""The rows of sweeps and scans carry what they were measured on, so a downloaded CSV stands alone."""

from spap_core.methods.registry import PruneSettings
from spap_service.comparisons import provenance_columns
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
