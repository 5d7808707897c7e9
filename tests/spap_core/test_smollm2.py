"""End to end on the real SmolLM2-135M (from the PyPI package) and real WikiText-2 text."""

import json

import pytest
from transformers import AutoModelForCausalLM

from spap_core.cli import main


def test_spap_prunes_smollm2_by_20_percent_and_stays_sane(data_dir, tmp_path, capsys):
    out = tmp_path / "smollm2-spap-20"
    argv = ["prune", "--model", "smollm2", "--method", "spap", "--sparsity", "0.2",
            "--calib-file", str(data_dir / "wikitext-2" / "wiki.valid.tokens"), "--nsamples", "4", "--seqlen", "256",
            "--eval-file", str(data_dir / "wikitext-2" / "wiki.test.joined.txt"), "--eval-len", "256",
            "--eval-windows", "4", "--seed", "0", "-K", "8", "--out", str(out), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["eval_tokens"] == 4 * 255
    assert result["params_before"] == 134_515_008
    assert result["params_before"] - result["params_after"] == pytest.approx(30 * 307 * 3 * 576, rel=0.01)
    assert 5 < result["ppl_dense"] < 100
    assert result["ppl_dense"] < result["ppl"] < 3 * result["ppl_dense"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.intermediate_size == 1536 - 307
    assert sum(p.numel() for p in reloaded.parameters()) == result["params_after"]
