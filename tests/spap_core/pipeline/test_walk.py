"""The sequential pruning walk on a tiny random Llama: physical pruning equals masking, save and
reload with vanilla transformers, the source model is untouched, traces and cancellation."""

import copy
import threading

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods import altmin
from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.registry import METHODS, PruneSettings, with_options
from spap_core.methods.spap import PenaltySettings, SpapSettings
from spap_core.models.adapters import model_adapter
from spap_core.models.shrink import save_pruned
from spap_core.pipeline.walk import prune_model

CALIBRATION = torch.randint(3, 203, (6, 32), generator=torch.Generator().manual_seed(0))
PROBE = torch.randint(3, 203, (2, 24), generator=torch.Generator().manual_seed(1))


def masked_dense_copy(dense: nn.Module, pruned: nn.Module, keeps) -> nn.Module:
    """The dense architecture with pruned channels zeroed and the pruned model's new weights
    scattered back into place: what physical pruning must compute exactly."""
    masked = copy.deepcopy(dense)
    for layer, pruned_layer, keep in zip(masked.model.layers, pruned.model.layers, keeps):
        keep = torch.as_tensor(keep)
        mlp, small = layer.mlp, pruned_layer.mlp
        width = mlp.down_proj.in_features
        with torch.no_grad():
            for name in ("gate_proj", "up_proj"):
                weight = torch.zeros_like(getattr(mlp, name).weight)
                weight[keep] = getattr(small, name).weight
                getattr(mlp, name).weight.copy_(weight)
            down = torch.zeros(mlp.down_proj.out_features, width)
            down[:, keep] = small.down_proj.weight
            mlp.down_proj = nn.Linear(width, down.shape[0], bias=small.down_proj.bias is not None)
            mlp.down_proj.weight.copy_(down)
            if small.down_proj.bias is not None:
                mlp.down_proj.bias.copy_(small.down_proj.bias)
    return masked


@pytest.mark.parametrize("method", METHODS)
def test_physical_pruning_matches_masked_dense_computation(tiny, method):
    result = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.25), batch_size=4)
    for layer in result.model.model.layers:
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == 96
        assert layer.mlp.down_proj.in_features == 96
    assert result.model.config.intermediate_size == 96
    assert result.params_after < result.params_before
    masked = masked_dense_copy(tiny.model, result.model, [r.keep for r in result.layers])
    with torch.no_grad():
        torch.testing.assert_close(result.model(PROBE).logits, masked(PROBE).logits, rtol=1e-4, atol=1e-5)


def test_alternating_minimization_changes_gate_up_and_still_matches_masking(tiny):
    settings = with_options(PruneSettings(sparsity=0.25),
                            altmin=AltMinSettings(rounds=2, steps=3, lr=1e-3, batch_tokens=64))
    result = prune_model(tiny, CALIBRATION, settings, batch_size=4)
    keep = torch.as_tensor(result.layers[0].keep)
    assert not torch.allclose(result.model.model.layers[0].mlp.gate_proj.weight,
                              tiny.model.model.layers[0].mlp.gate_proj.weight[keep])
    masked = masked_dense_copy(tiny.model, result.model, [r.keep for r in result.layers])
    with torch.no_grad():
        torch.testing.assert_close(result.model(PROBE).logits, masked(PROBE).logits, rtol=1e-4, atol=1e-5)


def test_alternating_minimization_does_not_increase_layer_error(tiny):
    base = prune_model(tiny, CALIBRATION, with_options(PruneSettings(sparsity=0.5), altmin=AltMinSettings(rounds=0)),
                       batch_size=4)
    tuned = prune_model(tiny, CALIBRATION, with_options(
        PruneSettings(sparsity=0.5), altmin=AltMinSettings(rounds=2, steps=20, lr=1e-3, batch_tokens=192)),
        batch_size=4)
    assert tuned.layers[0].objective <= base.layers[0].objective * 1.0001


def test_bfloat16_adam_steps_reach_the_layer_error_of_float32_steps(tiny, monkeypatch):
    """The steps' products in bfloat16 (precision 'auto' where the CPU multiplies it natively) must
    buy the same recovery as float32 ones: the gain over no recovery agrees to a few percent in
    every layer."""
    steps = dict(rounds=1, steps=20, lr=1e-3, batch_tokens=64)
    settings = with_options(PruneSettings(sparsity=0.5), altmin=AltMinSettings(**steps, precision="auto"))
    without = prune_model(tiny, CALIBRATION, with_options(settings, altmin=AltMinSettings(rounds=0)), batch_size=4)
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):  # what 'auto' picks on a machine without, and with, native bfloat16
        monkeypatch.setattr(altmin, "adam_step_dtype", lambda _device, dtype=dtype: dtype)
        errors[dtype] = [layer.objective for layer in prune_model(tiny, CALIBRATION, settings, batch_size=4).layers]
    assert errors[torch.bfloat16] != errors[torch.float32]  # the bfloat16 products did run
    # the default, 'float32', keeps float32 products even where 'auto' would choose bfloat16
    default = with_options(settings, altmin=AltMinSettings(**steps))
    assert ([layer.objective for layer in prune_model(tiny, CALIBRATION, default, batch_size=4).layers]
            == errors[torch.float32])
    for index, base in enumerate(without.layers):
        gain32 = base.objective - errors[torch.float32][index]
        gain16 = base.objective - errors[torch.bfloat16][index]
        assert gain32 > 0 and gain16 == pytest.approx(gain32, rel=0.05)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                         (False, False, torch.float32)])
def test_adam_steps_use_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert altmin.adam_step_dtype(torch.device("cpu")) == expected


@pytest.mark.parametrize("method", ["spap", "flap"])
def test_saved_model_reloads_with_vanilla_transformers(tiny, tmp_path, method):
    result = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.5), batch_size=4)
    save_pruned(result.model, tiny.tokenizer, tmp_path)
    assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == 64
    assert reloaded.model.layers[0].mlp.down_proj.bias is not None  # both methods compensate with a bias
    with torch.no_grad():
        torch.testing.assert_close(reloaded(PROBE).logits, result.model(PROBE).logits)


def test_source_model_is_never_modified(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    prune_model(tiny, CALIBRATION, PruneSettings(sparsity=0.3), batch_size=4)
    after = tiny.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_trace_has_one_step_per_layer_and_rho_iteration(tiny):
    steps, layers_done = [], []
    result = prune_model(tiny, CALIBRATION,
                         with_options(PruneSettings(sparsity=0.3), penalty=PenaltySettings(iterations=7)),
                         on_step=steps.append, on_layer=lambda i, n: layers_done.append((i, n)), batch_size=4)
    assert [(s.layer, s.iteration) for s in steps] == [(layer, k) for layer in range(2) for k in range(1, 8)]
    assert len(result.trace) == 14 and layers_done == [(1, 2), (2, 2)]
    rhos = [s.rho for s in steps[:7]]
    assert rhos == pytest.approx([PenaltySettings().rho0 * PenaltySettings().tau**k for k in range(7)])


def test_cancel_stops_within_one_rho_iteration(tiny):
    cancel, steps = threading.Event(), []

    def on_step(step):
        steps.append(step)
        if len(steps) == 3:
            cancel.set()

    with pytest.raises(PruningCancelled):
        prune_model(tiny, CALIBRATION, PruneSettings(sparsity=0.3), on_step=on_step, cancel=cancel, batch_size=4)
    assert len(steps) == 3


def test_sequential_inputs_flow_through_pruned_layers(tiny):
    """Layer 1's problem must be built on layer 0's pruned output: pruning layer 0 harder changes
    layer 1's statistics, even with layer 1's own decision rule unchanged (magnitude ignores data,
    so its layer-1 objective differs only through its inputs)."""
    light = prune_model(tiny, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.1), batch_size=4)
    heavy = prune_model(tiny, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.9), batch_size=4)
    assert light.layers[0].dense_objective == pytest.approx(heavy.layers[0].dense_objective)
    assert light.layers[1].dense_objective != pytest.approx(heavy.layers[1].dense_objective, rel=1e-6)


def test_a_family_without_an_adapter_is_refused_naming_the_supported_ones():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=50))
    with pytest.raises(SpapInputError, match="'bloom' is not supported.*Llama.*OPT.*GPT-2.*Phi-3"):
        model_adapter(bloom)


def test_model_without_gate_proj_is_refused(tiny):
    broken = copy.deepcopy(tiny.model)
    del broken.model.layers[1].mlp.gate_proj
    with pytest.raises(SpapInputError, match="layer 1.*gate_proj"):
        model_adapter(broken)


@pytest.mark.parametrize("method", ["spap", "flap"])
def test_layer_statistics_come_from_the_pruned_models_own_activations(tiny, method):
    """Layer 1's targets must be the dense MLP applied to what layer 1 really receives in the
    pruned model (inputs propagated through pruned layer 0), bit for bit up to float error. SPAP's
    default recovery changes gate/up, so its walk propagates through the activations of the
    recovery's last refit: this checks them against the model's own forward too."""
    result = prune_model(tiny, CALIBRATION, PruneSettings(method=method, sparsity=0.5), batch_size=4)
    seen = {}
    handle = result.model.model.layers[1].mlp.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        result.model(CALIBRATION)
    handle.remove()
    dense_mlp = tiny.model.model.layers[1].mlp
    with torch.no_grad():
        energy = 0.5 * dense_mlp(seen["x"]).double().pow(2).sum().item()
    assert result.layers[1].dense_objective == pytest.approx(energy, rel=1e-4)


def test_error_correcting_targets_start_from_local_ones_and_then_differ(tiny):
    """At layer 0 both streams are identical, so β changes nothing; from layer 1 on the targets
    also carry the residual error left by pruned layer 0."""
    local = prune_model(tiny, CALIBRATION, PruneSettings(sparsity=0.5), batch_size=4)
    corrected = prune_model(tiny, CALIBRATION, with_options(PruneSettings(sparsity=0.5), target_correction=1.0),
                            batch_size=4)
    assert corrected.layers[0].dense_objective == pytest.approx(local.layers[0].dense_objective)
    assert corrected.layers[1].dense_objective != pytest.approx(local.layers[1].dense_objective, rel=1e-6)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_target_correction_outside_unit_interval_is_refused(beta):
    with pytest.raises(SpapInputError, match="β"):
        SpapSettings(target_correction=beta)


def tiny_family_model(model_type: str) -> nn.Module:
    """Small random models of the other supported families; the sliding windows (8 < the 32
    calibration tokens) make layers see different attention masks, which the walk must keep apart."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    shape = dict(vocab_size=203, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    if model_type == "gemma2":
        return Gemma2ForCausalLM(Gemma2Config(**shape, head_dim=8, sliding_window=8)).eval()
    if model_type == "mistral":
        return MistralForCausalLM(MistralConfig(**shape, sliding_window=8)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**shape, use_sliding_window=True, sliding_window=8, max_window_layers=1,
                                        layer_types=["full_attention", "sliding_attention", "full_attention"])).eval()


@pytest.mark.parametrize("model_type", ["qwen2", "mistral", "gemma2"])
def test_every_layer_is_fed_what_the_model_itself_feeds_it(tiny, model_type):
    """The walk records each layer's keyword arguments (rotary embeddings, per-layer masks) in a
    pass that skips the layers' work; every layer's statistics must still match the activations the
    pruned model computes itself."""
    from spap_core.models.loading import LoadedModel

    model = tiny_family_model(model_type)
    loaded = LoadedModel(model=model, tokenizer=tiny.tokenizer, source=model_type, description=model_type,
                         family=model_adapter(model))
    result = prune_model(loaded, CALIBRATION, PruneSettings(method="fasp", sparsity=0.5), batch_size=4)
    for index in (1, 2):
        seen = {}
        handle = result.model.model.layers[index].mlp.register_forward_hook(
            lambda m, args, out, seen=seen: seen.setdefault("x", args[0]))
        with torch.no_grad():
            result.model(CALIBRATION)
        handle.remove()
        with torch.no_grad():
            energy = 0.5 * model.model.layers[index].mlp(seen["x"]).double().pow(2).sum().item()
        assert result.layers[index].dense_objective == pytest.approx(energy, rel=1e-4), f"layer {index}"
