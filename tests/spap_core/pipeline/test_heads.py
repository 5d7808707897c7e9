"""Attention heads as units of the output projection: the head layout (valid for grouped-query
attention in every layer), each method's head decision against the exact least-squares costs, the
walk's shrunk attention against the costs it reported, saving and vanilla reloading with the
same logits on every family that can hold fewer heads, and the refusals where it cannot."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from family_models import CALIBRATION, EVALUATION, TOKENIZER, loaded_family
from transformers import AutoModelForCausalLM

from spap_core.errors import SpapInputError
from spap_core.methods.obs import ObsSettings, obs_layer
from spap_core.methods.registry import PruneSettings, settings_for_family, with_options
from spap_core.methods.spap import PenaltySettings, spap_layer
from spap_core.models.adapters import model_adapter, text_config
from spap_core.models.loading import LoadedModel
from spap_core.models.shrink import save_pruned
from spap_core.pipeline.experiment import plan_run, run_experiment
from spap_core.pipeline.walk import prune_model
from spap_core.problem.layout import HeadLayout
from spap_core.problem.objective import LayerProblem, RefitSettings, refit
from spap_core.problem.statistics import GramAccumulator
from spap_core.storage.runs import read_run, write_run

HEAD_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi", "phi3")
REFUSED_FAMILIES = ("opt", "gpt2", "gpt_neox")


# ---------------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("heads,kv,sparsity,expected", [
    (9, 3, 0.2, (3, 2)),  # SmolLM2's 9 heads over 3 KV heads: one query head per group
    (9, 3, 0.5, (2, 2)),  # 5 of 9 removed, the nearest to 4.5; 2 groups of 2
    (9, 3, 1 / 3, (3, 2)),  # 3 heads either way: within the groups first, not a whole group
    (8, 8, 0.25, (6, 1)),  # multi-head attention: any count
    (8, 2, 0.5, (2, 2)),  # 4 removed within the groups rather than one whole group of 4
    (8, 2, 0.6, (1, 3)),
])
def test_the_layout_is_the_nearest_that_keeps_the_grouping(heads, kv, sparsity, expected):
    layout = HeadLayout.for_sparsity(heads, kv, sparsity)
    assert (layout.kv_kept, layout.per_group_kept) == expected
    assert layout.removed == heads - layout.kv_kept * layout.per_group_kept >= 1


@pytest.mark.parametrize("seed", range(40))
def test_any_priority_ends_in_the_layout(seed):
    """Whatever order a method ranks the heads in, the greedy removal ends with every kept KV group
    holding the layout's number of query heads, and the others empty."""
    rng = random.Random(seed)
    kv = rng.choice([1, 2, 3, 4])
    heads = kv * rng.choice([1, 2, 3, 4])
    if heads < 2:
        heads, kv = 2, 1
    layout = rng.choice([HeadLayout(heads, kv, g, r) for g in range(1, kv + 1) for r in range(1, heads // kv + 1)
                         if g * r < heads])
    priority = list(range(heads))
    rng.shuffle(priority)
    first = rng.randint(0, layout.removed)
    removed = layout.removal(priority, first)
    removed += layout.removal(priority, layout.removed - first, already=removed)  # in two steps, as OBS blocks are
    assert len(set(removed)) == layout.removed
    kept = [h for h in range(heads) if h not in removed]
    per_group = [sum(1 for h in kept if layout.kv_group(h) == g) for g in range(kv)]
    assert sorted(per_group, reverse=True) == [layout.per_group_kept] * layout.kv_kept + [0] * (kv - layout.kv_kept)


def test_a_layout_takes_the_lowest_heads_it_can():
    layout = HeadLayout(6, 2, 2, 2)  # one query head from each group of 3
    assert layout.removal([0, 1, 2, 3, 4, 5], 2) == [0, 3]  # 1 would empty group 0 below 2
    whole = HeadLayout(6, 2, 1, 3)  # one whole group
    assert sorted(whole.removal([4, 0, 1, 2, 3, 5], 3)) == [3, 4, 5]  # 4 first, then its group must go


# ---------------------------------------------------------------------------------- head decisions


def head_problem(seed: int, heads: int = 4, head_dim: int = 3, n_prune: int = 1, outputs: int = 5,
                 layout: HeadLayout | None = None) -> LayerProblem:
    """A layer problem over `heads` blocks of `head_dim` correlated columns, dense targets."""
    generator = torch.Generator().manual_seed(seed)
    width = heads * head_dim
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    z = (torch.randn(200, width, generator=generator, dtype=torch.float64) @ mixing) + 0.3
    stats = GramAccumulator()
    stats.add(z)
    dense = torch.randn(outputs, width, generator=generator)
    return stats.problem(dense, n_prune, group_size=head_dim,
                         layout=layout or HeadLayout(heads, heads, heads - n_prune, 1))


def head_cost(problem: LayerProblem, pruned_heads: list[int], settings: RefitSettings) -> float:
    keep = problem.keep_columns(torch.tensor(pruned_heads, dtype=torch.long))
    return refit(problem, keep, settings).objective


@pytest.mark.parametrize("seed", range(6))
def test_obs_removes_the_exactly_cheapest_head(seed):
    problem = head_problem(seed)
    settings = ObsSettings(damping=1e-9)
    costs = [head_cost(problem, [h], RefitSettings(ridge=1e-9, prior="zero", bias=True, precision="float64"))
             for h in range(4)]
    decision = obs_layer(problem, settings)
    kept_heads = problem.kept_units(decision.keep).tolist()
    assert set(range(4)) - set(kept_heads) == {int(np.argmin(costs))}
    # the Gram is summed in float32 (GramAccumulator), whose rounding differs between CPUs' kernels;
    # on this ill-conditioned problem that moves the two solves apart by a few parts in a million
    assert decision.objective == pytest.approx(min(costs), rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_spap_on_heads_penalises_whole_blocks_and_refits_what_it_keeps(seed):
    problem = head_problem(seed, heads=6, n_prune=2, layout=HeadLayout(6, 3, 2, 2))
    steps = []
    decision = spap_layer(problem, PenaltySettings(), RefitSettings(), on_step=steps.append)
    assert all(len(step.soft_mask) == 6 and len(step.column_norms) == 6 for step in steps)
    kept = problem.kept_units(decision.keep).tolist()
    assert len(decision.keep) == 4 * 3 and decision.keep.tolist() == problem.columns(torch.tensor(kept)).tolist()
    groups = [sum(1 for h in kept if h // 2 == g) for g in range(3)]
    assert sorted(groups) == [0, 2, 2]  # two KV groups of two query heads: the layout
    assert decision.objective == pytest.approx(head_cost(problem, [h for h in range(6) if h not in kept],
                                                         RefitSettings()), rel=1e-6)


# ---------------------------------------------------------------------------------- the walk


def layer0_attention_error(loaded: LoadedModel, pruned: torch.nn.Module) -> float:
    """½‖Y' − Y‖² of layer 0's attention output on the calibration windows: the dense attention
    against the pruned one, on the same input (layer 0 sees the embeddings in both)."""
    outputs = []
    for model in (loaded.model, pruned):
        family = model_adapter(model)
        captured = []
        handle = family.attention(family.decoder_layers(model)[0]).register_forward_hook(
            lambda _m, _a, out, captured=captured: captured.append(out[0] if isinstance(out, tuple) else out))
        with torch.no_grad():
            for chunk in CALIBRATION.split(4):
                model(chunk)
        handle.remove()
        outputs.append(torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).double())
    return 0.5 * float((outputs[1] - outputs[0]).pow(2).sum())


@pytest.mark.parametrize("model_type", HEAD_FAMILIES)
@pytest.mark.parametrize("method", ["spap", "flap", "obs", "taylor"])
def test_the_shrunk_attention_has_the_error_the_method_reported(model_type, method):
    """If a query head were matched with the wrong KV head, or a block of o_proj with the wrong
    head, the pruned attention would not reproduce the objective computed on the statistics."""
    loaded = loaded_family(model_type)
    settings, _ = settings_for_family(PruneSettings(method=method, sparsity=0.25, head_sparsity=0.5), loaded.family)
    result = prune_model(loaded, CALIBRATION, settings, batch_size=4)
    reported = result.heads.layers[0].objective
    assert reported == pytest.approx(layer0_attention_error(loaded, result.model), rel=1e-3, abs=1e-6)
    assert 0 < reported < result.heads.layers[0].dense_objective


@pytest.mark.parametrize("model_type", HEAD_FAMILIES)
@pytest.mark.parametrize("kv_heads", [2, 4])  # grouped (2 query heads per KV head) and ungrouped attention
@pytest.mark.parametrize("method", ["spap", "taylor"])  # a solver's and a dense-model measurement's selection
def test_pruned_heads_save_and_reload_with_the_same_logits(model_type, kv_heads, method, tmp_path):
    loaded = loaded_family(model_type, num_key_value_heads=kv_heads)
    settings, _ = settings_for_family(PruneSettings(method=method, sparsity=0.25, head_sparsity=0.5), loaded.family)
    result = prune_model(loaded, CALIBRATION, settings, batch_size=4)
    path = save_pruned(result.model, TOKENIZER, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    config = text_config(reloaded)
    layout = result.heads.layout
    assert (config.num_attention_heads, config.num_key_value_heads) == (layout.kept, layout.kv_kept)
    assert sum(p.numel() for p in reloaded.parameters()) == result.params_after < result.params_before
    with torch.no_grad():
        assert torch.allclose(reloaded(EVALUATION).logits, result.model(EVALUATION).logits, atol=1e-5)
        assert torch.isfinite(reloaded.generate(EVALUATION[:1, :4], max_new_tokens=4, do_sample=False)).all()


@pytest.mark.parametrize("kv", [8, 2, 1])
def test_grouped_and_ungrouped_attention_keep_their_layout_in_every_layer(kv):
    """8 query heads over 8 (multi-head), 2 and 1 (multi-query) KV heads, at 60%: whole KV groups
    go where the layout says so, and the key and value projections shrink with them."""
    loaded = loaded_family("llama", hidden_size=48, num_attention_heads=8, num_key_value_heads=kv, head_dim=4)
    result = prune_model(loaded, CALIBRATION, PruneSettings(method="flap", sparsity=0.25, head_sparsity=0.6))
    layout = result.heads.layout
    assert (layout.kv_kept, layout.per_group_kept) == {8: (3, 1), 2: (1, 3), 1: (1, 3)}[kv]
    for record, layer in zip(result.heads.layers, loaded.family.decoder_layers(result.model)):
        groups = [sum(1 for h in record.keep if layout.kv_group(int(h)) == g) for g in range(kv)]
        assert sorted(groups, reverse=True) == [layout.per_group_kept] * layout.kv_kept + [0] * (kv - layout.kv_kept)
        attention = layer.self_attn
        assert attention.k_proj.out_features == attention.v_proj.out_features == layout.kv_kept * 4
        assert attention.q_proj.out_features == attention.o_proj.in_features == layout.kept * 4
        assert attention.num_key_value_groups == layout.per_group_kept


def test_a_run_record_keeps_the_heads(tmp_path):
    loaded = loaded_family("llama")
    experiment = run_experiment(loaded, CALIBRATION, EVALUATION, PruneSettings(sparsity=0.25, head_sparsity=0.5))
    record = experiment.record(loaded)
    assert record["heads"]["layout"] == {"heads": 4, "kv_heads": 2, "kv_kept": 2, "per_group_kept": 1}
    json.dumps(record)
    stored_record, stored = read_run(write_run(tmp_path / "run", record, experiment.result))
    assert stored.settings.head_sparsity == 0.5 and stored.heads.layout == experiment.result.heads.layout
    for mine, theirs in zip(experiment.result.heads.layers, stored.heads.layers):
        assert mine.keep.tolist() == theirs.keep.tolist() and mine.width == theirs.width == 4
        assert np.array_equal(mine.scores["spap_last"], theirs.scores["spap_last"])
    assert len(stored.heads.trace) == len(experiment.result.heads.trace) == 2 * 5  # K steps per layer
    assert np.array_equal(stored.heads.trace[-1].soft_mask, experiment.result.heads.trace[-1].soft_mask)
    assert len(stored.trace) == len(experiment.result.trace)  # the MLP's trace apart from the heads'


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("model_type", REFUSED_FAMILIES)
def test_a_family_that_cannot_hold_fewer_heads_is_refused_before_any_work(model_type):
    loaded = loaded_family(model_type)
    with pytest.raises(SpapInputError, match="attention heads cannot be pruned, as .*head sparsity 0"):
        plan_run(loaded, PruneSettings(method="magnitude", head_sparsity=0.5), (32,))


@pytest.mark.parametrize("settings,message", [
    (with_options(PruneSettings(head_sparsity=0.5), target_correction=0.5), "target correction to 0"),
    (PruneSettings(head_sparsity=0.5), None),
])
def test_settings_heads_cannot_use_are_refused(settings, message):
    loaded = loaded_family("llama")
    if message is None:
        plan_run(loaded, settings, (32,))
    else:
        with pytest.raises(SpapInputError, match=message):
            plan_run(loaded, settings, (32,))


def test_the_partial_score_is_refused_on_heads():
    from dataclasses import replace
    settings = PruneSettings(head_sparsity=0.5)
    settings = replace(settings, options=replace(settings.options, penalty=PenaltySettings(score="partial")))
    with pytest.raises(SpapInputError, match="'partial' score is defined per channel"):
        plan_run(loaded_family("llama"), settings, (32,))


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), True])
def test_a_head_sparsity_out_of_range_is_refused(value):
    with pytest.raises(SpapInputError, match="Head sparsity"):
        PruneSettings(head_sparsity=value)


def test_a_head_count_the_config_class_refuses_is_never_chosen():
    """LlamaConfig wants the hidden size (32 here) divisible by the head count, even with head_dim
    set: of 8 heads at 60% (4.8 removed), 3 kept is refused, so 4 are kept."""
    loaded = loaded_family("llama", num_attention_heads=8, num_key_value_heads=8, head_dim=4)
    _, notes = plan_run(loaded, PruneSettings(method="magnitude", head_sparsity=0.6), (32,))
    assert notes == ["Head sparsity 60% removes 4 of 8 heads (50%) from every layer, the nearest layout the model's "
                     "attention can hold (4 of 8 heads kept: no grouping)."]


def test_a_rounded_head_sparsity_is_said():
    loaded = loaded_family("llama", hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=4)
    _, notes = plan_run(loaded, PruneSettings(method="magnitude", head_sparsity=0.2), (32,))
    assert notes == ["Head sparsity 20% removes 2 of 6 heads (33%) from every layer, the nearest layout the model's "
                     "attention can hold (4 of 6 heads kept: 2 KV groups × 2 query heads)."]


def test_a_family_without_an_attention_bias_prunes_heads_without_it():
    loaded = loaded_family("qwen2")  # no o_proj bias in its class; the MLP cannot store one either
    settings, notes = settings_for_family(PruneSettings(method="flap", head_sparsity=0.5), loaded.family)
    assert not settings.adds_output_bias and len(notes) == 1


def test_phi3_attention_shares_the_model_config_again_after_pruning():
    """Phi-3 splits its fused projection by config.num_attention_heads at every forward pass: a pruned
    layer holds a config of its own during the walk, and the model's again once the config says so."""
    loaded = loaded_family("phi3")
    result = prune_model(loaded, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.25, head_sparsity=0.5))
    attentions = [layer.self_attn for layer in model_adapter(result.model).decoder_layers(result.model)]
    assert all(attention.config is result.model.config for attention in attentions)
    assert result.model.config.num_attention_heads == 2
