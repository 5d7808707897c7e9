"""Run records on disk give back what the inspection pages need, without the weights, the
perplexities' window losses and intervals included (a record saved before they were kept reads back
with none); a record that cannot be read is one typed error naming its file, and never hides the
readable ones."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from spap_core.errors import UnreadableRunError
from spap_core.evaluation.intervals import perplexity_interval
from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.walk import prune_model
from spap_core.storage.runs import ARRAYS_FILE, RESULTS_DIR_ENV, list_runs, new_run_directory, read_run, write_run


def test_a_written_run_reads_back_layer_for_layer(tiny, tmp_path):
    calibration = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny, calibration, PruneSettings(sparsity=0.25))
    record = {"method": "spap", "sparsity": 0.25, "settings": asdict(result.settings),
              "timings": result.timings, "params_before": result.params_before, "params_after": result.params_after,
              "calibration_tokens": result.calibration_tokens, "ppl": 12.5, "ppl_dense": 11.0, "eval_tokens": 62,
              "eval_windows": 2, "eval_len": 32, "window_nll": [2.4, 2.65], "window_nll_dense": [2.3, 2.5],
              "ppl_ci95": list(perplexity_interval([2.4, 2.65])),
              "ppl_dense_ci95": list(perplexity_interval([2.3, 2.5]))}
    folder = write_run(new_run_directory(tmp_path, record), record, result)
    assert list_runs(tmp_path) == [folder]

    stored_record, stored = read_run(folder)
    assert stored_record == {**record, **NO_RECOVERY} and stored.model is None
    assert stored.settings == result.settings
    assert stored.relative_error == pytest.approx(result.relative_error)
    for original, back in zip(result.layers, stored.layers, strict=True):
        np.testing.assert_array_equal(back.keep, original.keep)
        assert back.scores.keys() == original.scores.keys()
        for name in original.scores:
            np.testing.assert_array_equal(back.scores[name], original.scores[name])
    assert [(s.layer, s.iteration) for s in stored.trace] == [(s.layer, s.iteration) for s in result.trace]
    for original, back in zip(result.trace, stored.trace):
        np.testing.assert_allclose(back.soft_mask, original.soft_mask)
        assert back.rho == pytest.approx(original.rho) and back.objective == pytest.approx(original.objective)


# what read_record fills in a record of a run without recovery (one saved before recoveries existed too)
NO_RECOVERY = {"ppl_before_recovery": None, "ppl_before_recovery_ci95": None, "window_nll_before_recovery": [],
               "recovery": None}


def test_a_record_saved_before_window_losses_were_kept_reads_back_with_no_interval(saved_run):
    folder, record = saved_run
    assert not {"window_nll", "window_nll_dense", "ppl_ci95", "ppl_dense_ci95"} & record.keys()
    stored_record, _ = read_run(folder)
    assert stored_record == {**record, "window_nll": [], "window_nll_dense": [], "ppl_ci95": None,
                             "ppl_dense_ci95": None, **NO_RECOVERY}


def test_half_written_run_folders_are_not_listed(tmp_path):
    (tmp_path / "20260101-000000-spap-0.30-abcdef").mkdir()  # no results.json: a crash mid-write
    assert list_runs(tmp_path) == []
    assert list_runs(tmp_path / "missing") == []


@pytest.fixture()
def saved_run(tiny, tmp_path):
    """One complete run folder as the app wrote it before window losses were kept, and its record."""
    calibration = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny, calibration, PruneSettings(sparsity=0.25))
    record = {"method": "spap", "sparsity": 0.25, "settings": asdict(result.settings), "timings": result.timings,
              "params_before": result.params_before, "params_after": result.params_after,
              "calibration_tokens": result.calibration_tokens, "ppl": 12.5, "ppl_dense": 11.0, "eval_tokens": 64,
              "eval_windows": 2, "eval_len": 32, "finished_at": 1.0, "owner": "me", "model": "tiny"}
    return write_run(tmp_path / "runs" / "20260101-000000-spap-0.25-good00", record, result), record


def _spoil(folder, fault: str) -> str:
    """Spoil one file of a run folder in the way `fault` says; return the file's name."""
    results = folder / "results.json"
    record = json.loads(results.read_text())
    if fault == "not json":
        results.write_text('{"method": "spap", ')
    elif fault == "a list":
        results.write_text("[1, 2, 3]")
    elif fault == "no ppl":
        del record["ppl"]
        results.write_text(json.dumps(record))
    elif fault == "nan ppl":
        results.write_text(json.dumps({**record, "ppl": float("nan")}))  # json writes NaN
    elif fault == "infinite ppl":
        results.write_text(json.dumps({**record, "ppl_dense": float("inf")}))
    elif fault == "string sparsity":
        results.write_text(json.dumps({**record, "sparsity": "0.3"}))
    elif fault == "nan window loss":
        results.write_text(json.dumps({**record, "window_nll": [2.0, float("nan")]}))
    elif fault == "reversed interval":
        results.write_text(json.dumps({**record, "ppl_dense_ci95": [12.0, 10.0]}))
    elif fault == "bad settings":
        results.write_text(json.dumps({**record, "settings": {**record["settings"], "method": "bogus"}}))
    elif fault == "not a zip":
        (folder / ARRAYS_FILE).write_bytes(b"this is no npz")
        return ARRAYS_FILE
    elif fault == "no arrays":
        (folder / ARRAYS_FILE).unlink()
        return ARRAYS_FILE
    elif fault == "bad trace":
        (folder / "trace.csv").write_text("layer,iteration\nx,y\n")
        return "trace.csv"
    return "results.json"


FAULTS = ["not json", "a list", "no ppl", "nan ppl", "infinite ppl", "string sparsity", "nan window loss",
          "reversed interval", "bad settings", "not a zip", "no arrays", "bad trace"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_run_that_cannot_be_read_raises_one_typed_error_naming_the_file(saved_run, fault):
    folder, _ = saved_run
    spoiled = _spoil(folder, fault)
    with pytest.raises(UnreadableRunError) as caught:
        read_run(folder)
    message = str(caught.value)
    assert message.startswith(str(folder / spoiled)) and "\n" not in message


def test_the_saved_runs_list_skips_an_unreadable_run_with_a_reason_and_lists_the_others(saved_run, monkeypatch):
    import shutil

    from spap_service.runs import saved_runs

    folder, record = saved_run
    monkeypatch.setenv(RESULTS_DIR_ENV, str(folder.parent))
    for index, fault in enumerate(f for f in FAULTS if _spoils_the_record(f)):
        spoiled = folder.parent / f"20260102-00000{index}-spap-0.25-bad{index:03d}"
        shutil.copytree(folder, spoiled)
        _spoil(spoiled, fault)
    listed = saved_runs(owner="me")
    assert list(listed.table["run"]) == [folder.name]
    assert listed.table.iloc[0]["ppl pruned"] == record["ppl"]
    assert len(listed.unreadable) == sum(map(_spoils_the_record, FAULTS))
    assert all(str(fault).startswith(str(folder.parent)) and fault.file.name == "results.json"
               for fault in listed.unreadable)


def _spoils_the_record(fault: str) -> bool:
    return fault not in ("not a zip", "no arrays", "bad trace", "bad settings")


def test_the_map_of_pruned_channels_of_a_wide_layer_samples_them_and_keeps_their_numbers():
    """Compare runs draws at most 256 columns per layer: a wider layer's channels are sampled
    evenly, and the map says which channel each column is, so the axis shows channel numbers."""
    from types import SimpleNamespace

    from spap_core.pipeline.walk import LayerRecord
    from spap_service.compare import pruned_map

    pruned = {0, 500, 1535}
    record = LayerRecord(layer=0, width=1536, keep=np.array(sorted(set(range(1536)) - pruned)), scores={},
                         objective=None, dense_objective=1.0)
    grid, channels = pruned_map(SimpleNamespace(result=SimpleNamespace(layers=[record])))
    assert grid.shape == (1, 256) and channels[0] == 0 and channels[-1] == 1535
    assert np.all(np.diff(channels) > 0) and set(channels[grid[0] == 1].tolist()) == pruned & set(channels.tolist())
    assert grid[0, 0] == 1 and grid[0, -1] == 1
