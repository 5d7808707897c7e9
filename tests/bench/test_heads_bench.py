"""bench/heads.py end to end on the tiny model: perplexities with their intervals, and goals said from
the paired verdicts rather than from the bare numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_heads_table_carries_intervals_and_goals_from_verdicts(tiny_dir, text_files, tmp_path):
    out = tmp_path / "heads.md"
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "bench" / "heads.py"), "--model", str(tiny_dir), "--eval",
                    "wikitext2", "--sparsities", "0.3", "--nsamples", "2", "--seqlen", "32", "--eval-windows", "3",
                    "--seeds", "2", "--contexts", "32", "--repeats", "1", "--out", str(out)],
                   check=True, env=env, capture_output=True, text=True, timeout=600)
    payload = json.loads(out.with_suffix(".json").read_text())
    assert {(row["mode"], row["method"]) for row in payload["rows"]} == {
        (mode, method) for mode in ("MLP only", "MLP + heads") for method in ("spap", "flap")}
    assert all(row["seeds"] == [0, 1] for row in payload["rows"])
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 30% |")]
    assert len(rows) == 4 and all(" [" in line.split(" | ")[6] for line in rows)  # 'ppl [low, high]'
    goal = next(line for line in table.splitlines() if line.startswith("- 30%, MLP + heads: SPAP ÷ FLAP"))
    holds = "the perplexity goal holds" in goal
    assert holds == ("(wikitext2, lower)" in goal)  # the goal follows the verdict
    assert "SPAP MLP + heads ÷ SPAP MLP only:" in table
