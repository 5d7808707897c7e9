"""bench/recovery_cost.py: the memory sampler sees an allocation made inside it, the table judges
the issue's targets from the numbers it shows, and one run on the tiny model writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO


@pytest.fixture
def cost(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import recovery_cost

    return recovery_cost


def test_the_cpu_peak_counts_an_allocation_made_and_freed_inside_the_block(cost):
    size = 256 * 2**20
    with cost.PeakMemory(torch.device("cpu")) as peak:
        held = torch.ones(size // 4)  # float32, every page written, so resident
        for _ in range(400):  # the sampling thread's next samples, however slow a loaded machine makes them
            if peak.peak >= peak.start + 0.9 * size:
                break
            time.sleep(cost.SAMPLE_S)
        del held
    assert peak.above >= 0.9 * size  # seen by the thread only: the block's end samples after the tensor is freed


def test_the_cpu_peak_is_the_state_at_entry_when_nothing_is_allocated(cost):
    with cost.PeakMemory(torch.device("cpu")) as peak:
        pass
    assert peak.start > 0 and peak.above < 64 * 2**20


def payload(seconds: float, above_gib: float, steps: int = 100) -> dict:
    return {"description": "Constructed.", "recovery": "lora recovery: …", "pruned": "flap at 30%", "cpus": 2,
            "device": "cpu", "dense_weight_bytes": 2**30, "estimate_seconds": 150.0, "estimate_bytes": 2**29,
            "seconds": seconds, "peak_above_bytes": int(above_gib * 2**30), "peak_bytes": 3 * 2**30,
            "memory_measure": "process resident set", "final_loss": 2.5, "heldout_ppl": [[10, 30.0], [20, 28.0]],
            "args": {"recover_steps": steps, "recover_batch": 4, "seqlen": 256}}


@pytest.mark.parametrize(("seconds", "above", "steps", "time_cells", "memory_cells"), [
    (170.0, 1.5, 100, "| 180 s (on 2 CPU cores) | yes |", "| 1.50 GiB (1.50 × the dense weights) | 2.00 GiB (2 × the "
     "dense weights' 1.00 GiB) | yes |"),
    (200.0, 2.5, 100, "| 180 s (on 2 CPU cores) | no |", "(2.50 × the dense weights) | 2.00 GiB (2 × the dense "
     "weights' 1.00 GiB) | no |"),
    (20.0, 1.0, 10, "| – (set for 100 steps of 4 × 256 tokens) | not the target's budget |", "| yes |"),
])
def test_the_targets_are_judged_from_the_numbers(cost, tmp_path, seconds, above, steps, time_cells, memory_cells):
    out = tmp_path / "cost.md"
    cost.write_outputs(out, payload(seconds, above, steps))
    table = out.read_text().splitlines()
    wall = next(line for line in table if line.startswith("| wall time |"))
    assert wall.startswith(f"| wall time | 150.0 s | {seconds:.1f} s ") and wall.endswith(time_cells)
    memory = next(line for line in table if line.startswith("| peak memory above the state before it |"))
    assert memory.startswith("| peak memory above the state before it | 512.0 MiB |") and memory.endswith(memory_cells)
    assert json.loads(out.with_suffix(".json").read_text())["seconds"] == seconds


def test_the_bench_prunes_recovers_and_writes_the_table_on_the_tiny_model(cost, tiny_dir, text_files, tmp_path):
    out = tmp_path / "cost.md"
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "bench" / "recovery_cost.py"), "--model", str(tiny_dir), "--nsamples",
                    "4", "--seqlen", "32", "--eval-windows", "4", "--recover-steps", "3", "--recover-heldout-every",
                    "2", "--out", str(out)], check=True, env=env, capture_output=True, text=True, timeout=600)
    measured = json.loads(out.with_suffix(".json").read_text())
    assert [step for step, _ in measured["heldout_ppl"]] == [2, 3]
    assert measured["seconds"] > 0 and measured["estimate_seconds"] > 0 and measured["estimate_bytes"] > 0
    assert measured["pruned"] == "flap at 30% of every MLP's channels, default settings"
    assert "| wall time | " in out.read_text() and "| peak memory above the state before it | " in out.read_text()


def test_the_cost_bench_times_lora_only(tmp_path):
    shown = subprocess.run([sys.executable, str(REPO / "bench" / "recovery_cost.py"), "--recover", "distill", "--out",
                            str(tmp_path / "cost.md")], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert shown.returncode == 2 and "invalid choice: 'distill'" in shown.stderr
