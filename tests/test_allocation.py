"""Non-uniform sparsity: one budget for the whole model, spent where the dense model's channel
scores are lowest, with the parameter count of uniform sparsity; the model with per-layer widths is
physically smaller, saves padded so that vanilla transformers loads it with the same outputs, and
comes back unpadded through load_model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from spap_core.allocation import global_counts, uniform_counts
from spap_core.cli import main
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models import load_model
from spap_core.prune import prune_model
from spap_core.shrink import LAYER_WIDTHS_KEY, save_pruned

CALIBRATION = torch.randint(3, 200, (8, 32), generator=torch.Generator().manual_seed(0))


def test_the_global_budget_is_the_uniform_one_and_layers_with_outlier_channels_keep_more():
    rng = np.random.default_rng(0)
    base = rng.lognormal(size=100)
    # the same channels at a thousand times the output scale (a later layer) prune alike
    counts = global_counts([base, 1000 * base], 0.3)
    assert sum(counts) == sum(uniform_counts([100, 100], 0.3)) == 60 and counts[0] == counts[1]
    # a layer whose output a few loud channels dominate keeps more channels than one whose
    # channels are all alike, by the full ±0.1
    alike = rng.uniform(0.9, 1.1, 100)
    few_loud = np.concatenate([rng.uniform(0.0, 0.1, 95), np.full(5, 100.0)])
    assert global_counts([alike, few_loud], 0.3) == [40, 20]


def test_every_layer_stays_within_the_deviation_and_the_total_is_exact():
    rng = np.random.default_rng(1)
    scores = [rng.lognormal(sigma=sigma, size=width) for sigma, width in zip((0.5, 1, 2, 3), (50, 77, 100, 129))]
    for sparsity in (0.1, 0.35, 0.5, 0.85):
        counts = global_counts(scores, sparsity, max_deviation=0.08)
        assert sum(counts) == sum(uniform_counts([50, 77, 100, 129], sparsity))
        for count, width in zip(counts, (50, 77, 100, 129)):
            assert 1 <= count <= width - 1 and abs(count / width - sparsity) <= 0.08 + 2 / width


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_prunes_with_a_global_allocation_to_the_same_parameter_count(tiny, method):
    uniform = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.4), batch_size=4)
    allocated = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.4, allocation="global"),
                            batch_size=4)
    widths = [len(layer.keep) for layer in allocated.layers]
    assert sum(widths) == sum(len(layer.keep) for layer in uniform.layers)
    assert allocated.params_after == uniform.params_after
    assert [mlp.down_proj.in_features for mlp in (layer.mlp for layer in allocated.model.model.layers)] == widths


def test_per_layer_widths_save_padded_reload_in_vanilla_transformers_and_unpadded_in_load_model(tiny, tmp_path):
    with torch.no_grad():  # three loud channels in layer 0 only, so the layers get different widths
        tiny.model.model.layers[0].mlp.down_proj.weight[:, :3] *= 50
    result = prune_model(tiny, CALIBRATION, PruneSettings(method="flap", sparsity=0.4, allocation="global"),
                         batch_size=4)
    widths = [len(layer.keep) for layer in result.layers]
    assert len(set(widths)) > 1, "the tiny model's layers should get different widths"
    save_pruned(result.model, tiny.tokenizer, tmp_path)
    # the in-memory model is unchanged (still physically per-layer)
    assert [layer.mlp.down_proj.in_features for layer in result.model.model.layers] == widths
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["intermediate_size"] == max(widths) and config[LAYER_WIDTHS_KEY] == widths

    ids = CALIBRATION[:2]
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        vanilla = AutoModelForCausalLM.from_pretrained(tmp_path)
        assert torch.allclose(vanilla(input_ids=ids).logits, expected, atol=1e-5)
        reloaded = load_model(str(tmp_path), device="cpu")
        assert torch.allclose(reloaded.model(input_ids=ids).logits, expected, atol=1e-5)
    assert [layer.mlp.down_proj.in_features for layer in reloaded.model.model.layers] == widths
    assert sum(p.numel() for p in reloaded.model.parameters()) == result.params_after


def test_the_cli_prunes_with_a_global_allocation_and_records_the_widths(tiny_dir, text_files, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_dir), "--device", "cpu", "--method", "wanda-sp", "--allocation", "global",
                 "--calib-file", str(text_files["calib"]), "--eval-file", str(text_files["eval"]), "--nsamples", "4",
                 "--seqlen", "32", "--eval-len", "32", "--eval-windows", "2", "--out", str(tmp_path / "out"),
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["allocation"] == "global" and len(record["layer_widths"]) == 2
    assert (tmp_path / "out" / "config.json").is_file()
