"""spap_service.runs: a run's job snapshot says how far it is, the pruned perplexity included."""

from __future__ import annotations

import threading
from typing import Any

from spap_core.methods.registry import PruneSettings
from spap_core.storage.runs import RESULTS_DIR_ENV
from spap_service.data import DataSpec, TextChoice
from spap_service.jobs import JobProgress, ProgressReporter
from spap_service.runs import RunRequest, run_pruning


class RecordingReporter(ProgressReporter):
    """Keeps every snapshot a run reports."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[JobProgress] = []

    def update(self, **fields: Any) -> None:
        super().update(**fields)
        self.snapshots.append(self.current)


def test_the_pruned_perplexity_reports_its_batches_after_the_last_layer(tiny, text_files, tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    data = DataSpec(calibration=TextChoice(kind="file", path=str(text_files["calib"])),
                    evaluation=TextChoice(kind="file", path=str(text_files["eval"])), nsamples=4, seqlen=32,
                    eval_windows=4, eval_len=32, batch_size=2)
    reporter = RecordingReporter()
    run_pruning(tiny, RunRequest(PruneSettings(method="magnitude", sparsity=0.25), 0, data), reporter,
                threading.Event(), save=False)
    pruning = [s for s in reporter.snapshots if s.phase.startswith("pruning")]
    evaluating = [s for s in reporter.snapshots if s.phase.startswith("pruned perplexity")]
    assert pruning and all(s.n_batches == 0 for s in pruning)  # no stale batches while it prunes
    assert [(s.batch, s.n_batches) for s in evaluating][-1] == (2, 2)
    assert all(s.layer == s.n_layers for s in evaluating)  # every layer pruned by then
