"""LLM-Pruner's Taylor selection: each unit's importance is Σ|W·∂L/∂W| over the weights it is
coupled with, checked against autograd on the modules as each family stores them (separate
projections, GPT-2's transposed Conv1D, Phi-3's fused ones); the walk measures it on the dense
model and prunes the lowest; an offloaded model is refused before any work and a cancel stops it
between windows. Every family's save-and-reload runs in tests/spap_core/models/adapters (every
registered method), the heads' in tests/spap_core/pipeline/test_heads.py."""

from __future__ import annotations

import threading

import pytest
import torch
from family_models import CALIBRATION, loaded_family

from spap_core.cli import build_parser, prune_settings
from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods.reconstruction import Reconstruction
from spap_core.methods.registry import PruneSettings
from spap_core.methods.taylor import Taylor, TaylorSettings, taylor_importances
from spap_core.methods.toy import toy_problem
from spap_core.models.loading import Placement, load_model
from spap_core.pipeline.experiment import plan_run
from spap_core.pipeline.walk import prune_model
from spap_core.problem.objective import keep_from_pruned

WINDOWS = CALIBRATION[:3]


def _taylor_terms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """|W·∂L/∂W| of every parameter as its module stores it, with L the mean next-token loss over
    WINDOWS' tokens (one batch: every window has as many tokens, so it is the windows' mean loss)."""
    model.zero_grad()
    model(input_ids=WINDOWS, labels=WINDOWS).loss.backward()
    terms = {name: (p.detach() * p.grad).abs().double() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return terms


def _channels_by_hand(model_type: str, terms: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """Channel i's row of every input projection plus its column of the output projection, read
    from each family's own storage."""
    if model_type == "gpt2":  # Conv1D stores in × out: channel i is c_fc's column i and c_proj's row i
        return terms[f"{prefix}.mlp.c_fc.weight"].sum(dim=0) + terms[f"{prefix}.mlp.c_proj.weight"].sum(dim=1)
    down = terms[f"{prefix}.mlp.down_proj.weight"].sum(dim=0)
    if model_type == "phi3":  # gate_up_proj: the gate's rows, then the up projection's
        gate, up = terms[f"{prefix}.mlp.gate_up_proj.weight"].sum(dim=1).chunk(2)
        return gate + up + down
    return (terms[f"{prefix}.mlp.gate_proj.weight"].sum(dim=1) + terms[f"{prefix}.mlp.up_proj.weight"].sum(dim=1)
            + down)


def _heads_by_hand(model_type: str, terms: dict[str, torch.Tensor], prefix: str, heads: int,
                   kv_heads: int) -> torch.Tensor:
    """Head h's query rows and output columns, plus half (two heads per KV group here) of its
    group's key and value rows."""
    attention = f"{prefix}.self_attn"
    if model_type == "phi3":
        query, key, value = terms[f"{attention}.qkv_proj.weight"].split([heads * 8, kv_heads * 8, kv_heads * 8])
    else:
        query, key, value = (terms[f"{attention}.{name}_proj.weight"] for name in ("q", "k", "v"))
    output = terms[f"{attention}.o_proj.weight"]
    group = heads // kv_heads
    shared = (key.reshape(kv_heads, -1).sum(dim=1) + value.reshape(kv_heads, -1).sum(dim=1)) / group
    return (query.reshape(heads, -1).sum(dim=1) + output.reshape(output.shape[0], heads, -1).sum(dim=(0, 2))
            + shared.repeat_interleave(group))


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3"])
def test_the_importance_is_the_taylor_term_summed_over_each_units_coupled_weights(model_type):
    loaded = loaded_family(model_type)
    model, family = loaded.model, loaded.family
    layers = family.decoder_layers(model)
    parts = [family.mlp_channels] if model_type == "gpt2" else [family.mlp_channels, family.attention_heads]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    layers[0].mlp.requires_grad_(False)  # frozen weights are measured all the same, and stay frozen

    measured = taylor_importances(model, layers, parts, WINDOWS)

    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the weights are back
    assert not any(p.requires_grad for p in layers[0].mlp.parameters())
    layers[0].mlp.requires_grad_(True)
    terms = _taylor_terms(model)
    layer_prefix = "transformer.h" if model_type == "gpt2" else "model.layers"
    for index in range(len(layers)):
        prefix = f"{layer_prefix}.{index}"
        expected = _channels_by_hand(model_type, terms, prefix)
        torch.testing.assert_close(measured[0][index], expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
        if len(parts) == 2:
            heads, kv_heads, _ = family.attention_heads.shape(model)
            expected = _heads_by_hand(model_type, terms, prefix, heads, kv_heads)
            torch.testing.assert_close(measured[1][index], expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_the_decision_prunes_the_lowest_importances_and_keeps_the_dense_columns():
    problem = toy_problem(width=12, outputs=5, tokens=40, n_prune=4, seed=3)
    importance = torch.tensor([5.0, 0.1, 7.0, 0.3, 9.0, 0.2, 6.0, 8.0, 0.4, 4.0, 3.0, 2.0], dtype=torch.float64)
    problem.dense_importance = importance
    decision = Taylor().decide(problem, TaylorSettings(), layer=0)
    assert decision.keep.tolist() == keep_from_pruned(12, torch.tensor([1, 3, 5, 8])).tolist()
    torch.testing.assert_close(decision.output_weight, problem.dense_output[:, decision.keep])
    assert decision.output_bias is None and decision.input_weights is None
    assert decision.scores["taylor"].tolist() == pytest.approx(importance.tolist())
    problem.dense_importance = None
    with pytest.raises(RuntimeError, match="measured on the dense model"):
        Taylor().decide(problem, TaylorSettings(), layer=0)


def test_the_walk_prunes_the_units_of_lowest_importance_on_the_dense_model_channels_and_heads():
    """Layer 1's importances are the dense model's (measured before layer 0 was pruned), and the
    heads removed are the lowest the layout allows."""
    loaded = loaded_family("llama")
    family = loaded.family
    layers = family.decoder_layers(loaded.model)
    dense = taylor_importances(loaded.model, layers, [family.attention_heads, family.mlp_channels], CALIBRATION[:2])
    settings = PruneSettings(method="taylor", sparsity=0.25, head_sparsity=0.5, options=TaylorSettings(windows=2))
    result = prune_model(loaded, CALIBRATION, settings, batch_size=4)
    layout = result.heads.layout
    for index in range(len(layers)):
        channels, heads = result.layers[index], result.heads.layers[index]
        assert channels.scores["taylor"] == pytest.approx(dense[1][index].numpy(), rel=1e-5)
        assert set(range(64)) - set(channels.keep.tolist()) == set(torch.argsort(dense[1][index])[:16].tolist())
        assert heads.scores["taylor"] == pytest.approx(dense[0][index].numpy(), rel=1e-5)
        removed = layout.removal(torch.argsort(dense[0][index], stable=True).tolist(), layout.removed)
        assert set(range(layout.heads)) - set(heads.keep.tolist()) == set(removed)


def test_a_reconstruction_changes_the_weights_but_no_layers_selection():
    """The importances are the dense model's, so unlike a selection from the pruned stream's
    statistics, every layer keeps the same units whatever the weight update of the layers before;
    the refit fits no worse than the dense columns, which it could have kept."""
    loaded = loaded_family("llama")
    own = prune_model(loaded, CALIBRATION, PruneSettings(method="taylor", sparsity=0.4), batch_size=4)
    for reconstruction in (Reconstruction(), Reconstruction(altmin=True)):
        updated = prune_model(loaded, CALIBRATION, PruneSettings(method="taylor", sparsity=0.4,
                                                                 reconstruction=reconstruction), batch_size=4)
        assert [layer.keep.tolist() for layer in updated.layers] == [layer.keep.tolist() for layer in own.layers]
        assert updated.layers[0].objective <= own.layers[0].objective * (1 + 1e-6)
        mlp = updated.model.model.layers[1].mlp
        assert not torch.equal(mlp.down_proj.weight, own.model.model.layers[1].mlp.down_proj.weight)
        if reconstruction.altmin:
            assert not torch.equal(mlp.gate_proj.weight, own.model.model.layers[1].mlp.gate_proj.weight)


def test_only_the_declared_windows_are_backpropagated_and_a_cancel_stops_between_them():
    loaded = loaded_family("llama")
    calls: list[int] = []
    cancel = threading.Event()

    def count(_module, _args, kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 2:
            cancel.set()

    handle = loaded.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with pytest.raises(PruningCancelled, match="Taylor"):
            prune_model(loaded, CALIBRATION, PruneSettings(method="taylor", options=TaylorSettings(windows=3)),
                        cancel=cancel)
        assert calls == [1, 1]  # one window per backward pass; cancelled before the third
        calls.clear()
        taylor_importances(loaded.model, loaded.family.decoder_layers(loaded.model), [loaded.family.mlp_channels],
                           CALIBRATION[:3])
        assert calls == [1, 1, 1]
    finally:
        handle.remove()


def test_an_offloaded_model_is_refused_in_one_line_before_any_work(tiny_dir, monkeypatch):
    loaded = load_model(str(tiny_dir), device="cpu", placement=Placement("disk"))

    def no_work(*_args, **_kwargs):
        raise AssertionError("the importances were measured")

    monkeypatch.setattr(Taylor, "unit_importances", no_work)
    settings = PruneSettings(method="taylor")
    for attempt in (lambda: prune_model(loaded, CALIBRATION, settings, inplace=True),
                    lambda: plan_run(loaded, settings, (32, 32))):
        with pytest.raises(SpapInputError, match="Method 'taylor' backpropagates .* offloaded") as refusal:
            attempt()
        assert "\n" not in str(refusal.value)


def test_the_windows_are_a_declared_parameter_with_a_cli_flag_and_are_validated():
    arguments = build_parser().parse_args(["prune", "--method", "taylor", "--taylor-windows", "3"])
    assert prune_settings(arguments) == PruneSettings(method="taylor", options=TaylorSettings(windows=3))
    for windows in (0, -1, 2.5, True):
        with pytest.raises(SpapInputError, match="whole number"):
            TaylorSettings(windows=windows)
    assert PruneSettings(method="taylor").options == TaylorSettings(windows=8)
