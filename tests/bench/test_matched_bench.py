"""bench/matched.py's tables from constructed rows (no model runs): every cell with its interval, and
SPAP against the best other selection with a paired verdict at each reconstruction."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture
def matched(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import matched

    return matched


def row(method: str, name: str, shift: float) -> dict:
    losses = [[3.0 + shift + 0.3 * (index % 2) + 0.001 * seed * (-1) ** index for index in range(6)]
              for seed in range(2)]
    return {"method": method, "reconstruction": name, "sparsity": 0.3, "seeds": [0, 1], "altmin": None,
            "window_nll_by_seed": {"wikitext2": losses}, "ppl": {"wikitext2": math.exp(sum(map(sum, losses)) / 12)},
            "ppl_by_seed": {"wikitext2": [math.exp(sum(one) / 6) for one in losses]}}


def test_each_cell_has_its_interval_and_spap_its_verdict_against_the_best_other(matched, tmp_path):
    rows = [row("spap", "own", 0.0), row("flap", "own", 0.1), row("wanda-sp", "own", 0.2),
            row("spap", "refit", 0.0), row("flap", "refit", 0.0)]
    out = tmp_path / "matched.md"
    matched.write_outputs(out, {"description": "Constructed.", "dense": {"wikitext2": 20.0},
                                "tokens_per_window": {"wikitext2": 511}, "args": {}, "rows": rows})
    table = out.read_text().splitlines()
    spap = next(line for line in table if line.startswith("| spap |"))
    assert spap.count(" [") == 3  # own, refit, and refit+altmin (its own run) each with an interval
    fasp = next(line for line in table if line.startswith("| fasp |"))
    wanda = next(line for line in table if line.startswith("| wanda-sp |"))
    assert fasp.split(" | ")[2] == wanda.split(" | ")[2]  # FASP's refit column is Wanda-sp's
    own = next(line for line in table if line.startswith("| 0.30 | wikitext2 | own |"))
    assert "| flap " in own and "SPAP's perplexity is lower than flap's" in own
    refit = next(line for line in table if line.startswith("| 0.30 | wikitext2 | refit |"))
    assert "1.000 [1.000, 1.000] not distinguishable" in refit


def test_the_bench_measures_every_pair_once_per_seed_and_resume_adds_the_missing_seed(tiny_dir, text_files, tmp_path):
    out = tmp_path / "matched.md"
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "PYTHONPATH": str(REPO)}

    def run(*extra: str) -> list[dict]:
        done = subprocess.run([sys.executable, str(REPO / "bench" / "matched.py"), "--model", str(tiny_dir),
                               "--eval", "wikitext2", "--sparsities", "0.5", "--nsamples", "2", "--seqlen", "32",
                               "--eval-windows", "3", "--out", str(out), *extra],
                              check=True, env=env, capture_output=True, text=True, timeout=600)
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"method"')]

    first = run()
    assert len(first) == 15 and {one["seed"] for one in first} == {0}
    second = run("--seeds", "2", "--resume")
    assert len(second) == 15 and {one["seed"] for one in second} == {1}
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert all(row["seeds"] == [0, 1] for row in rows)
    narrower = run("--sparsities", "0.25", "--resume")
    assert len(narrower) == 15 and {one["sparsity"] for one in narrower} == {0.25}
    kept = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [row["sparsity"] for row in kept] == [0.25] * 15 + [0.5] * 15  # the 0.5 rows stay, after
