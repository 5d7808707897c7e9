"""Non-uniform sparsity: one budget for the whole model, spread by the dense model's outlier
channels (global) or spent on its least loss-sensitive channels (fisher), with the parameter count
of uniform sparsity; the model with per-layer widths is
physically smaller, saves padded so that vanilla transformers loads it with the same outputs, and
comes back unpadded through load_model."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from transformers import AutoModelForCausalLM

from spap_core.cli import main
from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods import sensitivity
from spap_core.methods.allocation import GlobalSettings, fisher_counts, global_counts, uniform_counts
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models.loading import load_model
from spap_core.models.shrink import LAYER_WIDTHS_KEY, save_pruned
from spap_core.pipeline.walk import prune_model
from spap_core.storage.runs import read_run

CALIBRATION = torch.randint(3, 200, (8, 32), generator=torch.Generator().manual_seed(0))


def test_the_global_budget_is_the_uniform_one_and_layers_with_outlier_channels_keep_more():
    rng = np.random.default_rng(0)
    base = rng.lognormal(size=100)
    # the same channels at a thousand times the output scale (a later layer) prune alike
    counts = global_counts([base, 1000 * base], 0.3, GlobalSettings())
    assert sum(counts) == sum(uniform_counts([100, 100], 0.3)) == 60 and counts[0] == counts[1]
    # a layer whose output a few loud channels dominate keeps more channels than one whose
    # channels are all alike, by the full ±0.1
    alike = rng.uniform(0.9, 1.1, 100)
    few_loud = np.concatenate([rng.uniform(0.0, 0.1, 95), np.full(5, 100.0)])
    assert global_counts([alike, few_loud], 0.3, GlobalSettings()) == [40, 20]


def test_every_layer_stays_within_the_deviation_and_the_total_is_exact():
    rng = np.random.default_rng(1)
    scores = [rng.lognormal(sigma=sigma, size=width) for sigma, width in zip((0.5, 1, 2, 3), (50, 77, 100, 129))]
    for sparsity in (0.1, 0.35, 0.5, 0.85):
        counts = global_counts(scores, sparsity, GlobalSettings(max_deviation=0.08))
        assert sum(counts) == sum(uniform_counts([50, 77, 100, 129], sparsity))
        for count, width in zip(counts, (50, 77, 100, 129)):
            assert 1 <= count <= width - 1 and abs(count / width - sparsity) <= 0.08 + 2 / width


def test_the_global_strategys_settings_bound_the_deviation_and_choose_the_outliers():
    rng = np.random.default_rng(3)
    alike = rng.uniform(0.9, 1.1, 100)
    few_loud = np.concatenate([rng.uniform(0.0, 0.1, 95), np.full(5, 100.0)])
    # the full deviation either side of 30%, whatever it is set to
    assert global_counts([alike, few_loud], 0.3, GlobalSettings(max_deviation=0.05)) == [35, 25]
    # no channel carries 1000× its layer's mean: no layer has outliers, every layer prunes the same
    assert global_counts([alike, few_loud], 0.3, GlobalSettings(outlier_factor=1000.0)) == [30, 30]
    for bad in ({"max_deviation": -0.1}, {"max_deviation": float("nan")}, {"outlier_factor": 0.0}):
        with pytest.raises(SpapInputError):
            GlobalSettings(**bad)


def test_the_strategys_settings_round_trip_through_a_record_and_an_older_record_reads_as_the_defaults():
    narrow = PruneSettings(allocation="global", allocation_options=GlobalSettings(max_deviation=0.05))
    assert PruneSettings.from_dict(asdict(narrow)) == narrow
    older = {key: value for key, value in asdict(narrow).items() if key != "allocation_options"}
    assert PruneSettings.from_dict(older).allocation_options == GlobalSettings()
    assert PruneSettings.from_dict(asdict(PruneSettings())) == PruneSettings()
    with pytest.raises(SpapInputError, match="The uniform allocation takes"):
        PruneSettings(allocation_options=GlobalSettings())
    assert narrow.with_allocation("global") is narrow
    assert narrow.with_allocation("fisher").with_allocation("global").allocation_options == GlobalSettings()


def test_the_fisher_budget_is_the_uniform_one_spent_on_the_least_informative_channels_of_any_layer():
    rng = np.random.default_rng(2)
    informative = rng.uniform(10, 11, 100)
    mostly_idle = np.concatenate([rng.uniform(0, 1, 60), rng.uniform(10, 11, 40)])
    # all 60 channels of the budget are idle ones of layer 1, but every layer prunes at least one
    assert fisher_counts([informative, mostly_idle], 0.3) == [1, 59]
    # a layer keeps at least 10% of its channels, however idle: the rest of the budget goes elsewhere
    assert fisher_counts([informative, rng.uniform(0, 1, 100)], 0.5) == [10, 90]
    with pytest.raises(SpapInputError, match="at least 10%"):
        fisher_counts([informative, mostly_idle], 0.95)
    with pytest.raises(SpapInputError, match="at least 10%"):
        PruneSettings(sparsity=0.95, allocation="fisher")


def test_the_fisher_of_a_channel_is_the_sum_over_windows_of_its_squared_loss_gradient(monkeypatch):
    """Masking channel i by mᵢ scales down_proj's column i, so ∂L/∂mᵢ = Σ_r W[r,i]·∂L/∂W[r,i]: the
    check uses the ordinary weight gradient, not the masks. Only the first FISHER_WINDOWS count."""
    monkeypatch.setattr(sensitivity, "FISHER_WINDOWS", 2)
    model = tiny_llama()
    downs = [layer.mlp.down_proj for layer in model.model.layers]
    fisher = sensitivity.channel_fisher(model, downs, CALIBRATION[:3])
    assert not any(down._forward_pre_hooks for down in downs), "the masks are removed again"

    expected = [torch.zeros(down.in_features, dtype=torch.float64) for down in downs]
    for window in CALIBRATION[:2]:
        model.zero_grad()
        model(input_ids=window[None], labels=window[None]).loss.backward()
        for total, down in zip(expected, downs):
            total += (down.weight.detach() * down.weight.grad).sum(dim=0).double().pow(2)
    for measured, reference in zip(fisher, expected):
        np.testing.assert_allclose(measured, reference.numpy(), rtol=1e-4, atol=1e-12 * float(reference.max()))


def test_a_fisher_allocation_can_be_cancelled_while_it_measures(tiny):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PruningCancelled, match="sensitivity"):
        prune_model(tiny, CALIBRATION, PruneSettings(sparsity=0.4, allocation="fisher"), cancel=cancel)


@pytest.mark.parametrize("allocation", ["global", "fisher"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_prunes_with_a_global_allocation_to_the_same_parameter_count(tiny, method, allocation):
    uniform = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.4), batch_size=4)
    allocated = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.4, allocation=allocation),
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


@pytest.mark.parametrize("allocation", ["global", "fisher"])
def test_the_cli_prunes_with_a_global_allocation_and_records_the_widths(tiny_dir, text_files, tmp_path, capsys,
                                                                         allocation):
    assert main(["prune", "--model", str(tiny_dir), "--device", "cpu", "--method", "wanda-sp",
                 "--allocation", allocation,
                 "--calib-file", str(text_files["calib"]), "--eval-file", str(text_files["eval"]), "--nsamples", "4",
                 "--seqlen", "32", "--eval-len", "32", "--eval-windows", "2", "--out", str(tmp_path / "out"),
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["allocation"] == allocation and len(record["layer_widths"]) == 2
    assert (tmp_path / "out" / "config.json").is_file()


def test_the_global_strategys_flags_reach_the_counts_and_the_record(tiny_dir, text_files, tmp_path, capsys):
    """--outlier-factor and --max-deviation reach the counts: with outliers at 1.5 times a layer's mean
    score the tiny model's two layers move apart by the default deviation, at --max-deviation 0.01
    each stays within one channel's rounding of 30%; the record keeps both values and reads them back."""
    def widths(expected: GlobalSettings, *flags: str) -> list[int]:
        out = tmp_path / f"out{len(flags)}"
        assert main(["prune", "--model", str(tiny_dir), "--device", "cpu", "--method", "magnitude",
                     "--allocation", "global", *flags, "--calib-file", str(text_files["calib"]),
                     "--eval-file", str(text_files["eval"]), "--nsamples", "4", "--seqlen", "32", "--eval-len", "32",
                     "--eval-windows", "2", "--out", str(out), "--json"]) == 0
        record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert read_run(out)[1].settings.allocation_options == expected
        return record["layer_widths"]

    default = widths(GlobalSettings())
    spread = widths(GlobalSettings(outlier_factor=1.5), "--outlier-factor", "1.5")
    narrow = widths(GlobalSettings(max_deviation=0.01, outlier_factor=1.5),
                    "--outlier-factor", "1.5", "--max-deviation", "0.01")
    assert spread != default and sum(default) == sum(spread) == sum(narrow)
    assert max(abs(width - 128 * 0.7) for width in spread) > 2 >= max(abs(width - 128 * 0.7) for width in narrow)
