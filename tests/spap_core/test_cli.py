"""The CLI contract: `prune` and `latency` print one JSON object on stdout's last line, progress
on stderr, save a model vanilla transformers loads, and exit 2 with a clear message on bad input."""

import json
import os
import subprocess
import sys

import pytest
from cli_helpers import last_json_line, prune_args
from conftest import REPO
from transformers import AutoModelForCausalLM

from spap_core.cli import main

PRUNE_KEYS = {"method", "sparsity", "ppl", "ppl_dense", "ppl_ci95", "ppl_dense_ci95", "prune_seconds", "params_before",
              "params_after", "eval_tokens"}


@pytest.mark.parametrize("method", ["spap", "magnitude", "wanda-sp", "flap", "fasp"])
def test_prune_prints_the_contract_json(tiny_dir, text_files, capsys, method):
    assert main(prune_args(tiny_dir, text_files, "--method", method, *(["-K", "5"] if method == "spap" else []))) == 0
    result = last_json_line(capsys.readouterr().out)
    assert PRUNE_KEYS <= result.keys()
    assert result["method"] == method and result["eval_tokens"] == 3 * 31
    assert result["params_after"] < result["params_before"]
    assert 1 < result["ppl"] < float("inf") and 1 < result["ppl_dense"] < float("inf")
    for key in ("ppl", "ppl_dense"):
        low, high = result[f"{key}_ci95"]
        assert low < result[key] < high


def test_prune_out_saves_a_loadable_model_with_results(tiny_dir, text_files, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(prune_args(tiny_dir, text_files, "--out", str(out), "-K", "4")) == 0
    result = last_json_line(capsys.readouterr().out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["ppl"] == pytest.approx(result["ppl"])
    assert (out / "trace.csv").read_text().count("\n") == 1 + 2 * 4  # header + layers × K
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == result["params_after"]

    assert main(["latency", "--model", str(tiny_dir), "--pruned", str(out), "--repeats", "2", "--warmup", "1",
                 "--seqlen", "16", "--decode-tokens", "4", "--json"]) == 0
    report = last_json_line(capsys.readouterr().out)
    assert report["pruned"]["parameters"] == result["params_after"]
    assert report["dense"]["parameters"] == result["params_before"]
    assert report["ratios"]["theoretical_params_ratio"] > 1
    for side in ("dense", "pruned"):
        timing = report[side]["prefill_ms"]
        assert timing["low"] <= timing["median"] <= timing["high"] and timing["repeats"] == 2


def test_bad_input_exits_2_with_a_message(tiny_dir, text_files, capsys):
    assert main(prune_args(tiny_dir, text_files, "--tau", "0.9")) == 2
    assert "--tau must be between 1.05 and 8 (got 0.9)" in capsys.readouterr().err
    assert main(prune_args(tiny_dir, text_files, "--sparsity", "1.0")) == 2
    assert "--sparsity must be between 0.05 and 0.95 (got 1)" in capsys.readouterr().err
    assert main(prune_args(tiny_dir, text_files, "--nsamples", "1000")) == 2
    assert "lower the number of samples" in capsys.readouterr().err


def test_module_entry_point_separates_progress_and_result(tiny_dir, text_files):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "spap_core", *prune_args(tiny_dir, text_files, "-K", "3")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert PRUNE_KEYS <= last_json_line(run.stdout).keys()
    assert "layers" in run.stderr  # the progress bar


def test_every_spap_setting_has_a_flag_that_reaches_the_run(tiny_dir, text_files, capsys):
    flags = ["-K", "3", "--rho0", "0.02", "--tau", "2.0", "-t", "0.5", "--alpha", "0.6", "--score", "partial",
             "--start", "centre", "--schedule", "ramp", "--beta", "0.25", "--delta", "0.1", "--prior", "zero",
             "--precision", "float64", "--altmin-rounds", "1", "--altmin-steps", "2"]
    assert main(prune_args(tiny_dir, text_files, *flags)) == 0
    settings = last_json_line(capsys.readouterr().out)["settings"]["options"]
    assert settings["penalty"] == {"iterations": 3, "rho0": 0.02, "tau": 2.0, "balance": 0.5, "momentum": 0.6,
                                   "score": "partial", "start": "centre", "schedule": "ramp"}
    assert settings["refit"] == {"ridge": 0.1, "prior": "zero", "bias": True, "precision": "float64"}
    assert settings["target_correction"] == 0.25
    assert settings["altmin"]["rounds"] == 1 and settings["altmin"]["steps"] == 2
