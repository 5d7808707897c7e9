"""Run records on disk give back what the inspection pages need, without the weights."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from spap_core.methods.registry import PruneSettings
from spap_core.prune import prune_model
from spap_core.runs import list_runs, new_run_directory, read_run, write_run


def test_a_written_run_reads_back_layer_for_layer(tiny, tmp_path):
    calibration = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny, calibration, PruneSettings(sparsity=0.25))
    record = {"method": "spap", "sparsity": 0.25, "settings": asdict(result.settings),
              "timings": result.timings, "params_before": result.params_before, "params_after": result.params_after,
              "calibration_tokens": result.calibration_tokens, "ppl": 12.5}
    folder = write_run(new_run_directory(tmp_path, record), record, result)
    assert list_runs(tmp_path) == [folder]

    stored_record, stored = read_run(folder)
    assert stored_record == record and stored.model is None
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


def test_half_written_run_folders_are_not_listed(tmp_path):
    (tmp_path / "20260101-000000-spap-0.30-abcdef").mkdir()  # no results.json: a crash mid-write
    assert list_runs(tmp_path) == []
    assert list_runs(tmp_path / "missing") == []
