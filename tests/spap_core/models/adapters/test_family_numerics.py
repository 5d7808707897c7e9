"""The numerical checks of tests/spap_core/pipeline/test_walk.py on every family, written through the adapter
(so they hold for a fused GLU, a transposed Conv1D, an MLP held by the layer itself and a native
output bias alike): the physically shrunk model computes exactly the dense model with its pruned
channels masked, and the output projection a method refits is the least-squares solution on the
activations the pruned model itself produces."""

from __future__ import annotations

import copy

import pytest
import torch
from family_models import CALIBRATION, FAMILIES, NATIVE_BIAS_FAMILIES, NO_BIAS_FAMILIES, TOKENIZER, loaded_family
from torch import nn

from spap_core.methods.altmin import AltMinSettings
from spap_core.methods.baselines import FASP_REFIT
from spap_core.methods.registry import METHODS, PruneSettings, settings_for_family, with_options
from spap_core.models.adapters import MlpWeights, ModelAdapter
from spap_core.pipeline.walk import prune_model

PROBE = torch.randint(3, 203, (2, 24), generator=torch.Generator().manual_seed(2))
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
BIAS_DAMPING = 1e-9  # the solver's damping of the bias column, relative to the token count


def _prune(model_type: str, settings: PruneSettings):
    """Prune the tiny model of a family with the settings a run on it would use (the no-bias
    variant where the family cannot store a bias)."""
    loaded = loaded_family(model_type, TOKENIZER)
    settings, _ = settings_for_family(settings, loaded.family)
    return loaded, prune_model(loaded, CALIBRATION, settings, batch_size=4)


def _scattered(kept: torch.Tensor, keep: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`kept` (channels along `dim`) placed at `keep` of a zero tensor of `width` channels."""
    shape = list(kept.shape)
    shape[dim] = width
    full = torch.zeros(shape, dtype=kept.dtype)
    full.index_copy_(dim, keep, kept)
    return full


def masked_dense_copy(family: ModelAdapter, dense: nn.Module, pruned: nn.Module, keeps) -> nn.Module:
    """The dense architecture, full width, with the pruned channels' input rows (and input-bias
    entries) and output columns zeroed and the pruned model's kept weights and output bias put in
    place: what physical pruning must compute exactly."""
    masked = copy.deepcopy(dense)
    for layer, small_layer, keep in zip(family.decoder_layers(masked), family.decoder_layers(pruned), keeps):
        keep = torch.as_tensor(keep)
        width, small = family.mlp_channels.width(layer), family.mlp_channels.weights(small_layer)
        full = MlpWeights(
            inputs=tuple(_scattered(w.detach(), keep, width, 0) for w in small.inputs),
            input_biases=tuple(None if b is None else _scattered(b.detach(), keep, width, 0)
                               for b in small.input_biases),
            output=_scattered(small.output.detach(), keep, width, 1),
            output_bias=None if small.output_bias is None else small.output_bias.detach().clone())
        with torch.no_grad():
            family.mlp_channels.set_weights(layer, full)
        assert family.mlp_channels.width(layer) == width
    return masked.eval()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_type", FAMILIES)
def test_physical_pruning_matches_the_masked_dense_computation(model_type, method):
    """Every method (its compensation included: refitted columns, an added bias, SPAP's new input
    rows) gives a shrunk model whose logits are those of the full-width model with the pruned
    channels zeroed and the same new weights in place."""
    loaded, result = _prune(model_type, PruneSettings(method=method, sparsity=0.25))
    family = loaded.family
    assert [family.mlp_channels.width(layer) for layer in family.decoder_layers(result.model)] == [48, 48]
    masked = masked_dense_copy(family, loaded.model, result.model, [layer.keep for layer in result.layers])
    shrunk = _logits(result.model)
    torch.testing.assert_close(shrunk, _logits(masked), **TOLERANCE)
    # the pruning changed the output far beyond the tolerance, so the comparison above can fail
    assert (shrunk - _logits(loaded.model)).abs().max() > 100 * TOLERANCE["atol"]


@pytest.mark.parametrize("method", ["magnitude", "wanda-sp"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_pruning_without_compensation_is_the_dense_model_with_the_pruned_channels_zeroed(model_type, method):
    """A method that only selects keeps the dense weights of its channels and the family's own
    output bias: the shrunk model is the dense one with the other channels zeroed."""
    loaded, result = _prune(model_type, PruneSettings(method=method, sparsity=0.25))
    family = loaded.family
    for dense_layer, small_layer, record in zip(family.decoder_layers(loaded.model),
                                                family.decoder_layers(result.model), result.layers):
        dense, small = family.mlp_channels.weights(dense_layer), family.mlp_channels.weights(small_layer)
        expected = dense.kept(torch.as_tensor(record.keep))
        assert all(torch.equal(a, b) for a, b in zip(small.inputs, expected.inputs))
        assert all((a is None and b is None) or torch.equal(a, b)
                   for a, b in zip(small.input_biases, expected.input_biases))
        assert torch.equal(small.output, expected.output)
        assert (small.output_bias is None) == (dense.output_bias is None)
        assert small.output_bias is None or torch.equal(small.output_bias, dense.output_bias)
    masked = masked_dense_copy(family, loaded.model, result.model, [layer.keep for layer in result.layers])
    torch.testing.assert_close(_logits(result.model), _logits(masked), **TOLERANCE)


def _mlp_inputs(family: ModelAdapter, model: nn.Module) -> list[torch.Tensor]:
    """What each layer's MLP receives when the model runs the calibration windows (tokens × d)."""
    seen: dict[int, torch.Tensor] = {}
    handles = [family.mlp_channels.input_projections(layer)[0].register_forward_pre_hook(
        lambda _module, args, index=index: seen.setdefault(index, args[0]))
        for index, layer in enumerate(family.decoder_layers(model))]
    try:
        with torch.no_grad():
            model(input_ids=CALIBRATION)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[index].reshape(-1, seen[index].shape[-1]) for index in range(len(handles))]


@pytest.mark.parametrize("model_type", [f for f in FAMILIES if f not in NO_BIAS_FAMILIES])
def test_flaps_bias_is_the_native_bias_plus_the_pruned_channels_mean_output(model_type):
    """FLAP's compensation, recomputed from the activations the pruned model feeds each layer:
    W_out[:, pruned] · mean(Z[pruned]), added to the family's own output bias (Llama: a new one)."""
    loaded, result = _prune(model_type, PruneSettings(method="flap", sparsity=0.25))
    family = loaded.family
    dense_layers, small_layers = family.decoder_layers(loaded.model), family.decoder_layers(result.model)
    for index, x in enumerate(_mlp_inputs(family, result.model)):
        dense = family.mlp_channels.weights(dense_layers[index])
        with torch.no_grad():
            z = family.mlp_channels.activations(dense_layers[index], x).double()
        pruned = torch.ones(dense.width, dtype=torch.bool)
        pruned[torch.as_tensor(result.layers[index].keep)] = False
        added = dense.output[:, pruned].double() @ z[:, pruned].mean(dim=0)
        native = 0 if dense.output_bias is None else dense.output_bias.double()
        saved = family.mlp_channels.weights(small_layers[index]).output_bias
        assert (dense.output_bias is not None) == (model_type in NATIVE_BIAS_FAMILIES)
        torch.testing.assert_close(saved.double(), native + added, rtol=1e-4, atol=1e-6)
        assert added.abs().max() > 100 * 1e-6  # the compensation is far above the tolerance


def direct_ridge_refit(z: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, ridge: float,
                       bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """argmin over W (and b) of ‖W Zᵀ + b − Yᵀ‖² + ridge‖W − prior‖² + damping‖b‖², as one stacked
    least-squares problem in float64: the solver's normal equations, written out."""
    tokens, width = z.shape
    rows = [torch.cat([z, torch.ones(tokens, 1, dtype=z.dtype)], 1) if bias else z]
    rhs = [targets]
    pad = (0, 1) if bias else (0, 0)
    rows.append(torch.nn.functional.pad(ridge ** 0.5 * torch.eye(width, dtype=z.dtype), pad))
    rhs.append(ridge ** 0.5 * prior.T)
    if bias:
        rows.append(torch.cat([torch.zeros(1, width, dtype=z.dtype),
                               torch.full((1, 1), (BIAS_DAMPING * tokens) ** 0.5, dtype=z.dtype)], 1))
        rhs.append(torch.zeros(1, targets.shape[1], dtype=z.dtype))
    solution = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs)).solution.T
    return solution[:, :width], solution[:, width] if bias else None


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Within 0.1% in norm: the solver works in float32 on float32 activations, the direct solve
    in float64, so single entries near zero may differ by more than elementwise tolerances allow."""
    error = float((actual.double() - expected).norm() / expected.norm())
    assert error < 1e-3, f"{what} is {error:.2e} (relative, in norm) from the direct solve"


# name → (settings, whether the refit runs on the activations after SPAP's recovery)
REFITS = {
    "spap-refit": (with_options(PruneSettings(sparsity=0.25), altmin=AltMinSettings(rounds=0)), False),
    "spap-recovered": (PruneSettings(sparsity=0.25), True),  # the defaults: refit after the Adam steps
    "fasp": (PruneSettings(method="fasp", sparsity=0.25), False),
}


@pytest.mark.parametrize("case", list(REFITS))
@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_refit_is_the_direct_least_squares_solve_on_the_captured_activations(model_type, case):
    """Per layer, on the inputs the pruned model gives that layer's MLP: the targets are the dense
    MLP's output without its own bias, the features the kept channels' activations (the dense
    ones, or after SPAP's recovery the pruned model's own), and the refitted output projection
    and added bias must be the ridge least-squares solution (δh̄ towards the dense columns for
    SPAP, towards zero for FASP, h̄ the mean squared activation the refit saw)."""
    settings, recovered = REFITS[case]
    loaded, result = _prune(model_type, settings)
    refit = result.settings.options.refit if result.settings.method == "spap" else FASP_REFIT
    assert refit.bias == (result.settings.method == "spap" and model_type not in NO_BIAS_FAMILIES)
    family = loaded.family
    dense_layers, small_layers = family.decoder_layers(loaded.model), family.decoder_layers(result.model)
    for index, x in enumerate(_mlp_inputs(family, result.model)):
        keep = torch.as_tensor(result.layers[index].keep)
        mlp = family.mlp_channels
        dense, small = mlp.weights(dense_layers[index]), mlp.weights(small_layers[index])
        with torch.no_grad():
            dense_z = family.mlp_channels.activations(dense_layers[index], x).double()
            kept_z = family.mlp_channels.activations(small_layers[index], x).double()
        # the input rows stay, and the features are the dense activations, unless SPAP's recovery ran
        assert all(torch.equal(a, b) for a, b in zip(small.inputs, dense.kept(keep).inputs)) != recovered
        targets = dense_z @ dense.output.double().T
        scale = (kept_z if recovered else dense_z).pow(2).sum(dim=0).mean()
        prior = (dense.output[:, keep].double() if refit.prior == "dense"
                 else torch.zeros(dense.output.shape[0], len(keep), dtype=torch.float64))
        weight, bias = direct_ridge_refit(kept_z, targets, prior, refit.ridge * float(scale), refit.bias)
        assert_close_normwise(small.output, weight, f"layer {index}'s output projection")
        native = None if dense.output_bias is None else dense.output_bias.double()
        if bias is None:
            assert (small.output_bias is None) == (native is None)
            assert native is None or torch.equal(small.output_bias.double(), native)
        else:
            added = small.output_bias.double() - (0 if native is None else native)
            assert_close_normwise(added, bias, f"the bias the refit added to layer {index}")
