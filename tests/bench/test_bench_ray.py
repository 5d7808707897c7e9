"""The benchmarks' --ray: bench/quality.py on a local Ray writes the table it writes in one process
(the same rows, the same perplexities), from the tiny model and texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def run_quality(tiny_dir, text_files, out: Path, *extra: str) -> dict:
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "PYTHONPATH": str(REPO), "SPAP_RAY_CPUS_PER_WORKER": "1"}
    subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--model", str(tiny_dir), "--methods", "spap",
                    "flap", "--sparsities", "0.25", "0.5", "--nsamples", "2", "--seqlen", "32", "--eval-windows", "2",
                    "--out", str(out), *extra], check=True, env=env, capture_output=True, timeout=600)
    return json.loads(out.with_suffix(".json").read_text())


def test_quality_on_a_local_ray_writes_the_table_of_one_process(tiny_dir, text_files, tmp_path):
    here = run_quality(tiny_dir, text_files, tmp_path / "here.md")
    there = run_quality(tiny_dir, text_files, tmp_path / "there.md", "--ray", "local")
    key = lambda row: (row["method"], row["sparsity"])  # noqa: E731
    assert [key(row) for row in there["rows"]] == [key(row) for row in here["rows"]]  # the grid's order
    for mine, theirs in zip(here["rows"], there["rows"]):
        assert theirs["ppl"]["wikitext2"] == pytest.approx(mine["ppl"]["wikitext2"], rel=1e-6)
    table = lambda path: [line for line in path.read_text().splitlines() if line.startswith("| ")]  # noqa: E731
    assert [line.split("|")[1:4] for line in table(tmp_path / "there.md")] == \
        [line.split("|")[1:4] for line in table(tmp_path / "here.md")]
