"""bench/recovery.py: the answers follow the rows (constructed, no model runs), --resume measures
only the missing points and refuses another recovery budget, and one run on the tiny model writes
the tables; common.Protocol's joined evaluation splits back into each text's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO

from spap_core.evaluation.perplexity import PerplexityResult

TEXT = "wikitext2"
TOKENS = {TEXT: 31}


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import common
    import recovery
    import seeded

    return SimpleNamespace(recovery=recovery, seeded=seeded, common=common)


def losses(shift: float, wiggle: float) -> list[float]:
    """Six window losses: a shared pattern of hard and easy windows, moved by `shift`, with a
    method's own alternating `wiggle` (the paired differences' spread)."""
    return [3.0 + shift + 0.3 * (index % 3) + wiggle * (-1) ** index for index in range(6)]


def measurement(before: list[float], after: list[float], heldout: list[list[float]]) -> dict:
    """What common.measured returns for a recovered run on one text."""
    return {"ppl": {TEXT: math.exp(sum(after) / len(after))}, "window_nll": {TEXT: after},
            "window_nll_before_recovery": {TEXT: before},
            "recovery": {"seconds": 2.0, "heldout_ppl": heldout, "settings": {"heldout_every": 5}},
            "prune_seconds": 1.0, "relative_error": 0.1, "timings": {}, "params_after": 100}


def row(bench, method: str, before: list[float], after: list[float], heldout: list[list[float]] | None = None) -> dict:
    return bench.seeded.with_seed(None, {"method": method, "sparsity": 0.3}, 0,
                                  measurement(before, after, heldout or [[5, 99.0]]))


def lead_line(bench, rows: list[dict]) -> str:
    (line,) = bench.recovery.lead_lines(rows, [TEXT], TOKENS)
    return line


def test_spap_lower_before_and_after_recovery_is_a_lead_that_survives(bench):
    rows = [row(bench, "spap", losses(0.0, 0.01), losses(-0.5, 0.01)),
            row(bench, "flap", losses(0.1, 0.0), losses(-0.4, 0.0)),
            row(bench, "taylor", losses(0.3, 0.0), losses(-0.2, 0.0))]
    line = lead_line(bench, rows)
    assert line.startswith("- **0.30, wikitext2: survives.**")
    assert "SPAP ÷ flap (the best other after it) 0.905" in line


def test_another_method_lower_after_recovery_is_named(bench):
    rows = [row(bench, "spap", losses(0.0, 0.01), losses(-0.3, 0.01)),
            row(bench, "flap", losses(0.1, 0.0), losses(-0.2, 0.0)),
            row(bench, "taylor", losses(0.3, 0.0), losses(-0.6, 0.0))]
    line = lead_line(bench, rows)
    assert "does not survive (taylor is lower after recovery)" in line
    assert "before it SPAP ÷ flap (the best other before it) 0.905" in line


def test_overlapping_perplexities_after_recovery_are_not_distinguishable(bench):
    rows = [row(bench, "spap", losses(0.0, 0.01), losses(-0.3, 0.05)),
            row(bench, "flap", losses(0.1, 0.0), losses(-0.3, -0.05))]
    assert "0.30, wikitext2: not distinguishable after recovery." in lead_line(bench, rows)


def test_without_a_lead_before_recovery_nothing_is_said_to_survive(bench):
    rows = [row(bench, "spap", losses(0.1, 0.0), losses(-0.5, 0.01)),
            row(bench, "flap", losses(0.0, 0.01), losses(-0.3, 0.0))]
    assert "SPAP had no lead before recovery; after it, SPAP is lower." in lead_line(bench, rows)


def test_steps_to_reach_spap_without_recovery_are_read_from_the_heldout_curves(bench):
    spap = row(bench, "spap", losses(0.0, 0.01), losses(-0.3, 0.01))
    target = math.exp(sum(losses(0.0, 0.0)[:4]) / 4)  # its first 4 windows before recovery; the wiggles cancel
    crossing = [[5, target * 1.5], [10, target * 1.1], [15, target * 0.99], [20, target * 0.9]]
    never = [[5, target * 1.5], [10, target * 1.4], [15, target * 1.3], [20, target * 1.2]]
    rows = [spap, row(bench, "taylor", losses(0.5, 0.0), losses(0.1, 0.0), crossing),
            row(bench, "obs", losses(0.5, 0.0), losses(0.4, 0.0), never),
            row(bench, "flap", losses(-0.1, 0.0), losses(-0.2, 0.0), never)]
    (line,) = bench.recovery.reach_lines(rows, TEXT, 4)
    assert line == (f"- **0.30** (SPAP without recovery: {target:.2f} on these windows): taylor 15 steps; "
                    "obs not within 20 steps; flap 0 (already there before recovery).")


def test_the_outputs_are_written_from_the_rows(bench, tmp_path):
    rows = [row(bench, "spap", losses(0.0, 0.01), losses(-0.5, 0.01)),
            row(bench, "flap", losses(0.1, 0.0), losses(-0.4, 0.0))]
    out = tmp_path / "recovery.md"
    bench.recovery.write_outputs(out, {"description": "Constructed.", "recovery": "lora recovery: …",
                                       "dense": {TEXT: 20.0}, "tokens_per_window": TOKENS, "heldout_windows": 4,
                                       "args": {}, "rows": rows})
    table = out.read_text()
    flap = next(line for line in table.splitlines() if line.startswith("| flap |"))
    before, after = math.exp(sum(losses(0.1, 0.0)) / 6), math.exp(sum(losses(-0.4, 0.0)) / 6)
    assert flap.startswith(f"| flap | 0.30 | {before:.2f} [") and f" | {after:.2f} [" in flap
    assert f"| {math.exp(-0.5):.3f} [" in flap and "the recovered model's perplexity is lower" in flap
    assert flap.endswith("| 2.0 | 1.0 |")
    assert "measured every 5 steps" in table
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == rows
    assert out.with_suffix(".html").is_file()


def test_resume_measures_only_the_missing_points_and_refuses_another_recovery_budget(bench, tmp_path, monkeypatch):
    recovery = bench.recovery
    dense = PerplexityResult(20.0, 6 * 31 * math.log(20.0), 6 * 31, 6, 32, (math.log(20.0),) * 6)
    monkeypatch.setattr(recovery, "load_protocol", lambda *arguments: SimpleNamespace(
        description="Constructed.", dense_ppl={TEXT: 20.0}, dense={TEXT: dense}))
    measured: list[tuple[str, float, int, int]] = []

    def measure_each(protocol, arguments, settings, seeds, ray, budget):
        for index, (one, seed) in enumerate(zip(settings, seeds, strict=True)):
            measured.append((one.method, one.sparsity, seed, budget.steps))
            yield index, measurement(losses(0.0, 0.01), losses(-0.2, 0.0), [[5, 30.0]])

    monkeypatch.setattr(recovery, "measure_each", measure_each)
    out = tmp_path / "recovery.md"

    def run(*flags: str) -> list[tuple[str, float, int, int]]:
        measured.clear()
        monkeypatch.setattr(sys, "argv", ["recovery.py", "--eval", TEXT, "--eval-windows", "6", "--out", str(out),
                                          *flags])
        recovery.main()
        return list(measured)

    assert run("--methods", "spap", "flap", "--sparsities", "0.3") == [("spap", 0.3, 0, 50), ("flap", 0.3, 0, 50)]
    assert run("--methods", "spap", "flap", "taylor", "--sparsities", "0.3", "0.4", "--resume") == [
        ("taylor", 0.3, 0, 50), ("spap", 0.4, 0, 50), ("flap", 0.4, 0, 50), ("taylor", 0.4, 0, 50)]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {(row["method"], row["sparsity"]) for row in rows} == {
        (method, sparsity) for method in ("spap", "flap", "taylor") for sparsity in (0.3, 0.4)}
    with pytest.raises(SystemExit, match="another protocol \\(recover_steps\\)"):
        run("--methods", "spap", "--sparsities", "0.3", "--recover-steps", "10", "--resume")
    assert measured == []


def test_a_recovery_the_declarations_refuse_is_refused_before_the_model_loads(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.recovery, "load_protocol", lambda *arguments: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["recovery.py", "--recover-lr", "nan", "--out", str(tmp_path / "r.md")])
    with pytest.raises(SystemExit):
        bench.recovery.main()
    assert "learning rate must be between" in capsys.readouterr().err


def test_the_joined_evaluation_splits_back_into_each_texts_perplexity(bench):
    def result(window_nll: tuple[float, ...]) -> PerplexityResult:
        nll = sum(window_nll) * 31
        return PerplexityResult(math.exp(nll / (31 * len(window_nll))), nll, 31 * len(window_nll),
                                len(window_nll), 32, window_nll)

    dense = {"wikitext2": result((3.0, 3.2, 3.1)), "shakespeare": result((4.0, 4.4))}
    protocol = bench.common.Protocol(None, None, torch.zeros(2, 32), {}, {"wikitext2": torch.zeros(3, 32),
                                     "shakespeare": torch.zeros(2, 32)}, dense, "", 0)
    split = protocol.evaluations(bench.common.joined(list(dense.values())))
    assert split.keys() == dense.keys()
    for name, one in split.items():
        assert one.window_nll == dense[name].window_nll
        assert one.perplexity == pytest.approx(dense[name].perplexity)
        assert one.nll == pytest.approx(dense[name].nll) and one.tokens == dense[name].tokens


def test_the_bench_runs_each_method_once_with_its_recovery_on_the_tiny_model(tiny_dir, text_files, data_dir, tmp_path):
    out = tmp_path / "recovery.md"
    env = {**os.environ, "SPAP_CALIB_FILE": str(text_files["calib"]), "SPAP_EVAL_FILE": str(text_files["eval"]),
           "SPAP_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "bench" / "recovery.py"), "--model", str(tiny_dir), "--methods",
                    "spap", "flap", "--sparsities", "0.5", "--eval", "wikitext2", "shakespeare", "--nsamples", "4",
                    "--seqlen", "32", "--eval-windows", "5", "--recover-steps", "2", "--recover-heldout-every", "1",
                    "--out", str(out)], check=True, env=env, capture_output=True, text=True, timeout=600)
    table = out.read_text()
    header = ("| method | sparsity | ppl before [95%] | ppl after [95%] | after ÷ before [95%] | recovery s | "
              "prune s |")
    assert table.count(header) == 2  # one table per text
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith(("| spap ", "| flap "))] == [
        "| spap", "| flap"] * 2
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    for measured in rows:
        for text in ("wikitext2", "shakespeare"):
            (before,) = measured["window_nll_before_recovery_by_seed"][text]
            (after,) = measured["window_nll_by_seed"][text]
            assert len(before) == len(after) == 5 and before != after  # the same windows, measured on both sides
        (record,) = measured["recovery_by_seed"]
        assert [step for step, _ in record["heldout_ppl"]] == [1, 2] and len(record["losses"]) == 2
    assert "- **0.50, wikitext2: " in table and "- **0.50, shakespeare: " in table
    assert "- **0.50** (SPAP without recovery: " in table
