"""bench/quality.py's table over calibration seeds, on constructed rows (no model runs): each row's
interval and seeds' range, SPAP's paired verdict against the row's method, and the paragraph that
says where SPAP is lower than every baseline and where it is not distinguishable from one."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import REPO

WINDOWS = 8
# hard and easy windows, far apart: a per-model interval is wide, a paired difference is not
BASE = [2.0 + 0.5 * (index % 3) for index in range(WINDOWS)]
NOISE = [0.004 * (-1) ** index * (1 + index % 4) for index in range(WINDOWS)]


@pytest.fixture
def quality(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import quality

    return quality


def seeded_row(method: str, sparsity: float, shift: float, seed_shifts=(0.0, 0.01, -0.01)) -> dict:
    losses = [[loss + shift + seed_shift + noise for loss, noise in zip(BASE, NOISE)] for seed_shift in seed_shifts]
    per_seed = [math.exp(sum(row) / len(row)) for row in losses]
    return {"method": method, "sparsity": sparsity, "seeds": list(range(len(seed_shifts))),
            "window_nll_by_seed": {"wikitext2": losses}, "ppl_by_seed": {"wikitext2": per_seed},
            "ppl": {"wikitext2": math.exp(sum(map(sum, losses)) / (len(losses) * WINDOWS))}, "prune_seconds": 1.0}


def payload(rows: list[dict]) -> dict:
    return {"description": "Constructed.", "dense": {"wikitext2": 7.0}, "tokens_per_window": {"wikitext2": 511},
            "rows": rows, "args": {}}


ROWS = [seeded_row("spap", 0.3, 0.0), seeded_row("flap", 0.3, 0.1),
        # the same losses as SPAP's, each window moved by ±0.002: no difference the windows could show
        seeded_row("wanda-sp", 0.3, 0.0) | {"window_nll_by_seed": {"wikitext2": [
            [loss + 0.002 * (-1) ** index for index, loss in enumerate(row)]
            for row in seeded_row("spap", 0.3, 0.0)["window_nll_by_seed"]["wikitext2"]]}},
        {"method": "fasp", "sparsity": 0.3, "ppl": {"wikitext2": 9.5}, "prune_seconds": 2.0},
        seeded_row("spap", 0.5, 0.0), seeded_row("flap", 0.5, 0.2), seeded_row("wanda-sp", 0.5, 0.3)]


def table(quality, rows: list[dict]) -> dict[tuple[str, str], list[str]]:
    lines = [line for line in quality.table_lines(payload(rows)) if line.startswith("| ") and "---" not in line]
    return {(cells[0], cells[1]): cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                       for line in lines[1:])}


def test_each_row_shows_its_interval_seed_range_and_spaps_verdict_against_it(quality):
    cells = table(quality, ROWS)
    low, high = (float(x) for x in cells[("spap", "0.30")][2].split("[")[1].rstrip("]").split(", "))
    assert low < ROWS[0]["ppl"]["wikitext2"] < high
    lowest, _, highest = sorted(ROWS[0]["ppl_by_seed"]["wikitext2"])
    assert cells[("spap", "0.30")][3] == f"{lowest:.2f}–{highest:.2f} (3 seeds)"
    assert cells[("spap", "0.30")][4] == "–"
    assert cells[("flap", "0.30")][4].endswith("SPAP's perplexity is lower than flap's")
    assert cells[("flap", "0.30")][4].startswith(f"{math.exp(-0.1):.3f} [")
    assert "not distinguishable on these 4,088 tokens" in cells[("wanda-sp", "0.30")][4]
    # a row kept from an earlier run without window losses: its perplexity, no interval, no verdict
    assert cells[("fasp", "0.30")][2:5] == ["9.50 (no interval)", "–", "no verdict: fasp kept no window losses"]


def test_the_paragraph_names_where_spap_is_lower_than_every_baseline_and_where_not(quality):
    summary = [line for line in quality.table_lines(payload(ROWS)) if line.startswith("At sparsity")]
    assert summary[0].startswith("At sparsity 0.30: on wikitext2 SPAP is lower than flap (0.905 [")
    assert "not distinguishable from wanda-sp (1.000 [" in summary[0]
    assert summary[0].endswith("with no verdict against fasp (rows without window losses).")
    assert summary[1].startswith("At sparsity 0.50: on wikitext2 SPAP is lower than every baseline (flap (0.819 [")
    # a baseline lower than SPAP is named as such
    higher = [seeded_row("spap", 0.5, 0.2), seeded_row("flap", 0.5, 0.0)]
    assert "SPAP is higher than flap (1.221 [" in quality.verdict_summary(higher, ["wikitext2"], {"wikitext2": 511})[0]
    # a SPAP row kept from before window losses were recorded gives no verdict at its sparsity
    assert quality.verdict_summary(ROWS[3:4] + [{"method": "spap", "sparsity": 0.3, "ppl": {"wikitext2": 9.0}}],
                                   ["wikitext2"], {"wikitext2": 511}) == \
        ["At sparsity 0.30: no verdict (SPAP's row kept no window losses)."]


def test_a_cut_or_narrower_run_keeps_the_earlier_rows_it_did_not_replace_in_table_order(quality):
    kept = [{"method": "flap", "sparsity": 0.1}, {"method": "fasp", "sparsity": 0.5},
            {"method": "spap", "sparsity": 0.5}]
    measured = {("flap", 0.1): {"method": "flap", "sparsity": 0.1, "seeds": [0]},
                ("spap", 0.1): {"method": "spap", "sparsity": 0.1, "seeds": [0]}}
    assert quality.table_rows(measured, kept) == [measured[("spap", 0.1)], measured[("flap", 0.1)],
                                                  {"method": "spap", "sparsity": 0.5},
                                                  {"method": "fasp", "sparsity": 0.5}]


def test_the_bench_says_its_flags():
    shown = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--help"], capture_output=True,
                           text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": ""}).stdout
    assert "--seeds" in shown
