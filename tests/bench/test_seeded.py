"""bench/seeded.py: rows measured one calibration seed at a time, in any order, resumed where they
stopped, and the cells every bench table prints from them (no model runs)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO


@pytest.fixture
def seeded(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import seeded

    return seeded


def measurement(seed: int, shift: float = 0.0) -> dict:
    losses = [2.0 + seed + shift + 0.01 * (index % 3) for index in range(6)]
    return {"ppl": {"wikitext2": math.exp(sum(losses) / len(losses))}, "window_nll": {"wikitext2": losses},
            "prune_seconds": 1.0 + seed, "relative_error": seed, "timings": {}, "params_after": 100}


def test_seeds_measured_in_any_order_make_one_row_in_seed_order(seeded):
    identity = {"method": "flap", "sparsity": 0.3}
    row = seeded.with_seed(seeded.with_seed(None, identity, 2, measurement(2)), identity, 0, measurement(0))
    assert row["method"] == "flap" and row["seeds"] == [0, 2]
    assert row["window_nll_by_seed"]["wikitext2"] == [measurement(0)["window_nll"]["wikitext2"],
                                                      measurement(2)["window_nll"]["wikitext2"]]
    assert row["ppl"]["wikitext2"] == pytest.approx(math.exp(3.01))
    assert row["prune_seconds_by_seed"] == [1.0, 3.0]
    assert row["relative_error"] == 0  # the lowest seed's


def test_measure_rows_measures_only_the_seeds_a_row_lacks_and_writes_after_each(seeded):
    identity = {"label": "a"}
    rows = {"a": seeded.with_seed(None, identity, 0, measurement(0))}
    asked, written = [], []

    def measure_all(settings, seeds):
        asked.extend(zip(settings, seeds, strict=True))
        for index, seed in enumerate(seeds):
            yield index, measurement(seed, shift=0.5 if settings[index] == "B" else 0.0)

    result = seeded.measure_rows({"a": (identity, "A"), "b": ({"label": "b"}, "B")}, rows, [0, 1], measure_all,
                                 lambda rows: written.append({key: row["seeds"] for key, row in rows.items()}))
    assert asked == [("A", 1), ("B", 0), ("B", 1)]
    assert written == [{"a": [0, 1]}, {"a": [0, 1], "b": [0]}, {"a": [0, 1], "b": [0, 1]}]
    assert result["b"]["label"] == "b" and result["b"]["seeds"] == [0, 1]


def test_a_row_against_itself_is_not_distinguishable_and_a_worse_one_is_named(seeded):
    identity = {"label": "a"}
    row = seeded.with_seed(seeded.with_seed(None, identity, 0, measurement(0)), identity, 1, measurement(1))
    worse = seeded.with_seed(seeded.with_seed(None, identity, 0, measurement(0, 0.2)), identity, 1,
                             measurement(1, 0.2))
    same = seeded.comparison_cell(row, row, "wikitext2", 511, "uniform", "uniform")
    assert same.startswith("1.000 [1.000, 1.000]") and "not distinguishable" in same
    assert seeded.verdict_group(seeded.comparison(row, row, "wikitext2", 511)) == "not distinguishable"
    lower = seeded.comparison_cell(row, worse, "wikitext2", 511, "fisher", "uniform")
    assert lower.startswith(f"{math.exp(-0.2):.3f}") and "fisher's perplexity is lower than uniform's" in lower
    assert seeded.verdict_group(seeded.comparison(worse, row, "wikitext2", 511)) == "higher"


def test_cells_of_a_row_without_window_losses_say_so(seeded):
    old = {"ppl": {"wikitext2": 41.5}}
    assert seeded.interval_cell(old, "wikitext2") == "41.50 (no interval)"
    assert seeded.seed_range_cell(old, "wikitext2") == "–"
    assert seeded.verdict_group(seeded.comparison(old, old, "wikitext2", 511)) == "none"


def test_an_earlier_run_of_another_protocol_is_refused_not_mixed(seeded, tmp_path):
    path = tmp_path / "t.json"
    assert seeded.earlier_payload(path, {"seed": 0}, ["seed"], {"wikitext2": 28.0}) is None
    path.write_text(json.dumps({"args": {"seed": 0}, "dense": {"wikitext2": 28.0}, "rows": []}))
    assert seeded.earlier_payload(path, {"seed": 0}, ["seed"], {"wikitext2": 28.0})["rows"] == []
    with pytest.raises(SystemExit, match="another protocol \\(seed\\)"):
        seeded.earlier_payload(path, {"seed": 1}, ["seed"], {"wikitext2": 28.0})
    with pytest.raises(SystemExit, match="dense perplexity"):
        seeded.earlier_payload(path, {"seed": 0}, ["seed"], {"wikitext2": 29.0})
