"""`compare RUN_A RUN_B` on runs saved by a real prune of the tiny model: the ratio of their
perplexities with its 95% interval and a verdict, in lines of text or one JSON line; a run against
itself is not distinguishable; a folder that is no run, or a run saved before each window's loss was
kept, is refused in one line with exit code 2."""

import json
import math

import pytest
from cli_helpers import last_json_line, prune_args, run

from spap_core.evaluation.intervals import paired_comparison


@pytest.fixture(scope="module")
def runs(tiny_dir, text_files, tmp_path_factory) -> dict[str, str]:
    """Two runs on the same 3 windows: SPAP at 25% and magnitude at 50%."""
    folder = tmp_path_factory.mktemp("runs")
    saved = {}
    for name, flags in {"spap": ["-K", "3"], "magnitude": ["--method", "magnitude", "--sparsity", "0.5"]}.items():
        saved[name] = str(folder / name)
        assert run(prune_args(tiny_dir, text_files, *flags, "--out", saved[name])) == 0
    return saved


def compared(capsys, *argv: str) -> dict:
    assert run(["compare", *argv, "--json"]) == 0
    return last_json_line(capsys.readouterr().out)


def record_of(folder: str) -> dict:
    with open(f"{folder}/results.json", encoding="utf-8") as file:
        return json.load(file)


def test_two_runs_are_compared_window_by_window(runs, capsys):
    report = compared(capsys, runs["spap"], runs["magnitude"])
    assert report.keys() == {"ratio", "ci95", "verdict", "tokens", "a", "b"}
    spap, magnitude = record_of(runs["spap"]), record_of(runs["magnitude"])
    expected = paired_comparison(spap["window_nll"], magnitude["window_nll"], 31)
    assert report["ratio"] == pytest.approx(spap["ppl"] / magnitude["ppl"])
    assert report["ci95"] == pytest.approx(list(expected.ci95))
    assert report["verdict"] == expected.verdict and report["tokens"] == 3 * 31
    assert report["a"]["run"] == runs["spap"] and report["a"]["method"] == "spap"
    assert report["b"]["method"] == "magnitude" and report["b"]["sparsity"] == 0.5
    assert report["a"]["ppl"] == spap["ppl"] and report["a"]["ppl_ci95"] == spap["ppl_ci95"]


def test_the_text_shows_both_perplexities_the_ratio_and_the_verdict(runs, capsys):
    report = compared(capsys, runs["magnitude"], runs["spap"])
    assert run(["compare", runs["magnitude"], runs["spap"]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    low, high = report["b"]["ppl_ci95"]
    assert lines[1] == (f"B: {runs['spap']} (spap at sparsity 0.25): ppl {report['b']['ppl']:.2f} "
                        f"[{low:.2f}, {high:.2f}]")
    assert lines[0].startswith(f"A: {runs['magnitude']} (magnitude at sparsity 0.5): ppl ")
    low, high = report["ci95"]
    assert lines[2] == f"ratio ppl A / ppl B: {report['ratio']:.4f} [{low:.4f}, {high:.4f}] on 93 tokens"
    assert lines[3] == f"verdict: {report['verdict']}"


def test_a_run_against_itself_is_not_distinguishable(runs, capsys):
    report = compared(capsys, runs["spap"], runs["spap"])
    assert report["ratio"] == 1.0 and report["ci95"] == [1.0, 1.0]
    assert report["verdict"] == "not distinguishable on these 93 tokens"


def test_runs_on_other_windows_are_not_compared_pairwise(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    record = record_of(runs["magnitude"])
    record["eval_len"] = 64
    (other / "results.json").write_text(json.dumps(record))
    report = compared(capsys, runs["spap"], str(other))
    assert report["ci95"] is None and report["tokens"] == 0
    assert report["verdict"] == "not comparable pairwise: different evaluation windows (window length)"
    assert math.isfinite(report["ratio"])


def refusal(capsys, *argv: str) -> str:
    assert run(["compare", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_run_saved_before_window_losses_were_kept_is_refused(runs, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    record = record_of(runs["spap"])
    for key in ("window_nll", "window_nll_dense", "ppl_ci95", "ppl_dense_ci95"):
        del record[key]
    (old / "results.json").write_text(json.dumps(record))
    assert refusal(capsys, runs["spap"], str(old)) == (
        f"error: run B: {old} was saved before each window's loss was kept, so it cannot be compared window by "
        "window; prune it again to compare it.")


def test_what_is_no_run_is_refused(runs, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert refusal(capsys, str(missing), runs["spap"]) == f"error: run A: {missing} is not a folder."
    assert refusal(capsys, runs["spap"], str(tmp_path)) == (
        f"error: run B: {tmp_path} holds no results.json: not a run folder saved by prune --out.")
    (tmp_path / "results.json").write_text("{not json")
    assert refusal(capsys, runs["spap"], str(tmp_path)).startswith(f"error: {tmp_path / 'results.json'}: ")
