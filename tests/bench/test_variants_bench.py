"""bench/variants.py end to end on the tiny model: each variant against the reference variant with a
paired verdict, a reference that is not a variant refused, and --resume keeping a variant only while
its overrides are the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def run_variants(tiny_dir, text_files, out, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "bench" / "variants.py"), "--model", str(tiny_dir),
                           "--nsamples", "2", "--seqlen", "32", "--eval-windows", "3", "--sparsity", "0.5",
                           "--out", str(out), *extra], check=check, env=env, capture_output=True, text=True,
                          timeout=600)


def test_variants_are_compared_with_the_reference_and_resume_keeps_only_unchanged_ones(
        tiny_dir, text_files, tmp_path):
    out = tmp_path / "allocation.md"
    run_variants(tiny_dir, text_files, out, "uniform:am_rounds=0", "flap:method=flap", "--seeds", "2")
    table = out.read_text()
    flap = next(line for line in table.splitlines() if line.startswith("| flap |"))
    assert "(2 seeds)" in flap and ("flap's perplexity is" in flap or "not distinguishable" in flap)
    assert next(line for line in table.splitlines() if line.startswith("| uniform |")).count(" – ") == 1
    assert '## Against "uniform"' in table and "- flap: on wikitext2 " in table

    resumed = run_variants(tiny_dir, text_files, out, "uniform:am_rounds=0", "flap:method=flap,flap_bias=false",
                           "--seeds", "2", "--resume")
    measured = [json.loads(line)["label"] for line in resumed.stdout.splitlines() if line.startswith('{"label"')]
    assert measured == ["flap", "flap"]  # its overrides changed: both seeds again; uniform kept

    refused = run_variants(tiny_dir, text_files, tmp_path / "x.md", "a:", "--reference", "b", check=False)
    assert refused.returncode != 0 and "--reference 'b' is not one of the variants' labels: a" in refused.stderr
