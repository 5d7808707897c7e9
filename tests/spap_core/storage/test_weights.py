"""A pruned model kept as the tensors that differ from its dense model comes back from that dense
model with the same logits, in every family; another dense model, or a damaged file, is refused."""

from dataclasses import replace

import pytest
import torch
from family_models import CALIBRATION, FAMILIES, NO_BIAS_FAMILIES, family_model, loaded_family, logits

from spap_core.errors import SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.models.shrink import LAYER_WIDTHS_KEY
from spap_core.pipeline.walk import prune_model
from spap_core.storage.weights import (
    WEIGHTS_FILE,
    pruned_difference,
    read_pruned_weights,
    write_pruned_weights,
)

HEADLESS_FAMILIES = ("opt", "gpt2", "gpt_neox", "gpt_neox_sequential", "phi")  # their classes cannot drop heads


def pruned(model_type: str):
    """The family's tiny model and a pruned copy: heads and channels where the family can drop heads,
    a bias added where it can hold one, and per-layer widths (global allocation) for Llama."""
    loaded = loaded_family(model_type)
    settings = PruneSettings(method="magnitude" if model_type in NO_BIAS_FAMILIES else "flap", sparsity=0.25,
                             head_sparsity=0.0 if model_type in HEADLESS_FAMILIES else 0.5)
    if model_type == "llama":
        with torch.no_grad():  # three loud channels in layer 0 only, so the layers get different widths
            loaded.model.model.layers[0].mlp.down_proj.weight[:, :3] *= 50
        settings = replace(settings, sparsity=0.4).with_allocation("global")
    return loaded, prune_model(loaded, CALIBRATION, settings).model


def without_dtype(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "dtype"}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_pruned_model_comes_back_from_the_dense_one_with_the_same_logits(model_type, tmp_path):
    loaded, model = pruned(model_type)
    dense_logits = logits(loaded.model)
    difference = pruned_difference(loaded.model, model)
    file = write_pruned_weights(tmp_path, difference)

    back = read_pruned_weights(file, loaded.model)
    assert torch.equal(logits(back), logits(model))
    # the shrunk widths, heads and bias switches (building records the dtype the pruned copy left unset)
    assert without_dtype(back.config.to_dict()) == without_dtype(model.config.to_dict())
    assert torch.equal(logits(loaded.model), dense_logits)  # the dense model lent its tensors unchanged
    unchanged = [name for name, tensor in loaded.model.state_dict().items()
                 if torch.equal(tensor, model.state_dict()[name])]
    assert unchanged and not set(unchanged) & (difference.tensors.keys() | difference.selections.keys())
    full = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    assert file.stat().st_size < full


def test_per_layer_widths_come_back_as_each_layer_was_pruned(tmp_path):
    loaded, model = pruned("llama")
    widths = getattr(model.config, LAYER_WIDTHS_KEY)
    assert len(set(widths)) > 1  # the global allocation gave the layers different widths
    back = read_pruned_weights(write_pruned_weights(tmp_path, pruned_difference(loaded.model, model)), loaded.model)
    assert [loaded.family.mlp_channels.width(layer) for layer in loaded.family.decoder_layers(back)] == widths


def test_weights_of_another_dense_model_or_precision_are_refused(tmp_path):
    loaded, model = pruned("llama")
    file = write_pruned_weights(tmp_path, pruned_difference(loaded.model, model))
    other = family_model("llama")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # same shapes, other values: another checkpoint
    for dense in (other, family_model("llama").to(torch.bfloat16)):
        with pytest.raises(SpapInputError, match="another model"):
            read_pruned_weights(file, dense)


def test_a_damaged_weights_file_is_refused_in_one_line(tmp_path):
    loaded, model = pruned("llama")
    file = write_pruned_weights(tmp_path, pruned_difference(loaded.model, model))
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(SpapInputError, match=f"{WEIGHTS_FILE}. cannot be read"):
        read_pruned_weights(file, loaded.model)


def test_a_difference_counts_the_bytes_it_stores(tmp_path):
    loaded, model = pruned("opt")
    difference = pruned_difference(loaded.model, model)
    smaller = replace(difference, tensors=dict(list(difference.tensors.items())[:1]))
    assert 0 < smaller.bytes < difference.bytes
    assert write_pruned_weights(tmp_path, difference).stat().st_size >= difference.bytes


def test_what_pruning_only_dropped_is_kept_as_indices_and_a_refit_as_its_values(tiny, tmp_path):
    selected = prune_model(tiny, CALIBRATION, PruneSettings(method="magnitude", sparsity=0.25)).model
    difference = pruned_difference(tiny.model, selected)
    assert difference.selections and not difference.tensors  # magnitude drops channels and changes nothing else
    dense_state, pruned_state = tiny.model.state_dict(), selected.state_dict()
    for name, (dim, indices) in difference.selections.items():
        assert torch.equal(dense_state[name].index_select(dim, indices), pruned_state[name])

    refit = prune_model(tiny, CALIBRATION, PruneSettings(method="spap", sparsity=0.25)).model
    difference = pruned_difference(tiny.model, refit)
    # SPAP refits the kept output columns and adds a bias: their values are stored
    assert {"model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.bias"} <= difference.tensors.keys()
    back = read_pruned_weights(write_pruned_weights(tmp_path, difference), tiny.model)
    assert torch.equal(logits(back), logits(refit))
