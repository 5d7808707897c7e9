"""One parameter budget split between MLP channels and attention heads: the split removes the
budget exactly as the shapes count it (and as the pruned model then holds it), the criterion picks
the candidate with the smallest summed layer errors, and the CLI runs it and records it."""

from __future__ import annotations

import json

import pytest
from cli_helpers import last_json_line, run
from family_models import CALIBRATION, loaded_family

from spap_core.errors import SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.split import UnitCosts, split_budget
from spap_core.pipeline.walk import prune_model


@pytest.mark.parametrize("heads", [0.0, 0.5])
def test_the_split_removes_the_budget_the_pruned_model_loses(heads):
    loaded = loaded_family("llama")  # 2 layers, hidden 32, MLP 64, 4 heads of 8 over 2 KV heads
    split = split_budget(loaded, CALIBRATION, 0.3, head_sparsity=heads)
    costs = UnitCosts.of(loaded)
    assert abs(split.removed - 0.3 * split.total) <= 2 * costs.channel / 2  # within half a channel per layer
    assert (split.layout is None) == (heads == 0) and split.head_sparsity == heads
    result = prune_model(loaded, CALIBRATION, PruneSettings(method="magnitude", sparsity=split.sparsity,
                                                            head_sparsity=split.head_sparsity))
    assert result.params_before - result.params_after == split.removed  # magnitude adds no bias


def test_the_criterion_chooses_the_smallest_summed_layer_error():
    loaded = loaded_family("llama")
    split = split_budget(loaded, CALIBRATION, 0.3)
    # heads untouched, 2 of 4 removed (one per KV group, rather than a whole group) or 3
    assert set(split.objectives) == {0, 2, 3}
    chosen = 0 if split.layout is None else split.layout.removed
    assert split.objectives[chosen] == min(split.objectives.values())
    assert all(value > 0 for value in split.objectives.values())
    assert "summed layer errors by heads removed per layer: 0: " in split.describe()


def test_a_family_without_prunable_heads_spends_the_budget_on_the_mlp():
    loaded = loaded_family("gpt2")
    split = split_budget(loaded, CALIBRATION, 0.2)
    assert split.layout is None and not split.objectives
    with pytest.raises(SpapInputError, match="attention heads cannot be pruned"):
        split_budget(loaded, CALIBRATION, 0.2, head_sparsity=0.5)


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.2, float("nan")])
def test_a_budget_out_of_range_is_refused(budget):
    with pytest.raises(SpapInputError, match="parameter budget"):
        split_budget(loaded_family("llama"), CALIBRATION, budget)


def budget_args(model, files, *extra):
    return ["prune", "--model", str(model), "--calib-file", str(files["calib"]), "--nsamples", "4", "--seqlen", "32",
            "--eval-file", str(files["eval"]), "--eval-len", "32", "--eval-windows", "2", "-K", "2", "--json", *extra]


def test_the_cli_splits_a_parameter_budget_and_records_it(tiny_dir, text_files, capsys):
    assert run(budget_args(tiny_dir, text_files, "--param-sparsity", "0.25", "--head-sparsity", "0.5")) == 0
    captured = capsys.readouterr()
    record = last_json_line(captured.out)
    assert record["budget"]["param_sparsity"] == 0.25 and record["settings"]["head_sparsity"] == 0.5
    assert record["budget"]["removed_of_layers"] == pytest.approx(0.25, abs=0.02)
    assert record["heads"]["layout"]["kv_kept"] * record["heads"]["layout"]["per_group_kept"] == 2
    assert f"MLP sparsity {record['sparsity']:.1%}" in captured.err
    json.dumps(record)


def test_the_cli_refuses_a_budget_beside_a_sparsity(tiny_dir, text_files, capsys):
    assert run(budget_args(tiny_dir, text_files, "--param-sparsity", "0.25", "--sparsity", "0.3")) == 2
    assert "--param-sparsity decides the MLP sparsity itself" in capsys.readouterr().err
