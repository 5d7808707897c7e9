"""bench/sensitivity.py end to end on the tiny model: every value against the default with a paired
verdict over calibration seeds, and --resume measuring only the seeds a point lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def run_sensitivity(tiny_dir, text_files, out, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "bench" / "sensitivity.py"), "--model", str(tiny_dir),
                           "--grid", "K=1,5", "delta=0.1", "--nsamples", "2", "--seqlen", "32", "--eval-windows", "3",
                           "--out", str(out), *extra], check=True, env=env, capture_output=True, text=True,
                          timeout=600)


def test_each_value_gets_a_verdict_against_the_default_and_resume_adds_only_missing_seeds(
        tiny_dir, text_files, tmp_path):
    out = tmp_path / "sensitivity.md"
    run_sensitivity(tiny_dir, text_files, out, "--seeds", "2")
    first = json.loads(out.with_suffix(".json").read_text())
    assert sorted(first["rows"]) == ["K=1", "default"]  # K=5 and δ=0.1 are the default point
    assert all(row["seeds"] == [0, 1] for row in first["rows"].values())
    table = out.read_text()
    k1 = next(line for line in table.splitlines() if line.startswith("| K: ρ iterations | 1 |"))
    ratio, verdict = k1.split(" | ")[4].split(" ", 1)[0], k1.split(" | ")[4]
    assert "(2 seeds)" in k1 and float(ratio) > 0
    assert ("not distinguishable on these 93 tokens and 2 calibration seeds" in verdict) != (
        "K = 1's perplexity is" in verdict)  # a verdict, naming the value when it has a lower side
    assert "**5**" in table and "**0.1**" in table
    assert "- K: " in table and "- δ: no other value measured yet." in table

    resumed = run_sensitivity(tiny_dir, text_files, out, "--seeds", "3", "--resume")
    measured = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith('{"key"')]
    assert sorted((one["key"], one["seed"]) for one in measured) == [("K=1", 2), ("default", 2)]
    second = json.loads(out.with_suffix(".json").read_text())
    assert second["rows"]["K=1"]["window_nll_by_seed"]["wikitext2"][:2] == \
        first["rows"]["K=1"]["window_nll_by_seed"]["wikitext2"]
