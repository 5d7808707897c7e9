"""Latency measurement: models compared are timed in alternation (so a slow minute of the machine
hits all of them), every report describes its own model, and a measurement can be cancelled."""

from __future__ import annotations

import threading

import pytest
import torch

from spap_core.errors import PruningCancelled
from spap_core.evaluation.latency import _timed_rounds, latency_ratios, measure_latencies
from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.walk import prune_model

CALIBRATION = torch.randint(3, 203, (8, 16), generator=torch.Generator().manual_seed(0))


def test_rounds_rotate_which_model_goes_first_and_drop_the_warmups():
    order: list[str] = []

    def timed(model: str) -> float:
        order.append(model)
        return float(len(order))

    samples = _timed_rounds(["a", "b", "c"], timed, repeats=3, warmup=1, cancel=None)
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert [sorted(r) for r in rounds] == [["a", "b", "c"]] * 4  # every round times every model once
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]  # and a different one goes first each time
    assert [len(s) for s in samples] == [3, 3, 3]
    assert all(value > 3 for s in samples for value in s)  # the warm-up round's values are not kept


def test_each_report_describes_its_own_model(tiny):
    pruned = prune_model(tiny, CALIBRATION, PruneSettings(sparsity=0.5), batch_size=4).model
    dense_report, pruned_report = measure_latencies([tiny.model, pruned], seqlen=8, decode_tokens=2, repeats=2,
                                                    warmup=0)
    assert dense_report.parameters == sum(p.numel() for p in tiny.model.parameters())
    assert pruned_report.parameters == sum(p.numel() for p in pruned.parameters())
    for report in (dense_report, pruned_report):
        assert report.prefill_ms.repeats == report.decode_tokens_per_s.repeats == 2
        assert report.prefill_ms.low <= report.prefill_ms.median <= report.prefill_ms.high
    ratios = latency_ratios(dense_report, pruned_report)
    assert ratios["theoretical_params_ratio"] == pytest.approx(dense_report.parameters / pruned_report.parameters)
    # attention context work (2 layers × 8 tokens × 4 heads × 16 dims × 2) is the same in both and
    # belongs in the prefill ratio, which therefore lies between 1 and the linear-only ratio
    assert dense_report.attention_gflops_per_token == pruned_report.attention_gflops_per_token == 2 * 2 * 8 * 64 / 1e9
    assert 1 < ratios["theoretical_flops_ratio"] < ratios["linear_flops_ratio"]
    # the models' own memory is their parameters' bytes; a prefill's is named for what it is on this device
    for report, model in ((dense_report, tiny.model), (pruned_report, pruned)):
        assert report.weight_mb * 2**20 == sum(p.numel() * p.element_size() for p in model.parameters())
        assert report.prefill_memory_kind == "cpu" and report.prefill_memory.label == "RAM growth during one prefill"
        assert "not the model's own memory" in report.prefill_memory.meaning


def test_a_cancelled_measurement_stops():
    cancel = threading.Event()
    timed_models: list[str] = []

    def timed(model: str) -> float:
        timed_models.append(model)
        cancel.set()
        return 1.0

    with pytest.raises(PruningCancelled):
        _timed_rounds(["dense", "pruned"], timed, repeats=5, warmup=1, cancel=cancel)
    assert len(timed_models) <= 2  # stops at the end of the round the flag was set in
