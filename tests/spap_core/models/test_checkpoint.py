"""A local model's config.json checked against the weights beside it before any model is built:
a config that lies about its layers, widths, vocabulary or heads, that calls for a weight the
folder lacks, or that needs custom code is refused in one line naming the first offending tensor
(and both shapes), while every family's own saves (whole, sharded, or named without the base
model's prefix as base-model checkpoints are) pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from family_models import FAMILIES, family_model, saved_family
from safetensors.torch import load_file, save_file

from spap_core.errors import SpapInputError
from spap_core.models import checkpoint
from spap_core.models.checkpoint import SHARD_INDEX, SINGLE_FILE, checked_skeleton
from spap_core.models.loading import load_model

WHERE = "model folder under test"


def copy_with_config(source: Path, folder: Path, **changes) -> Path:
    """A copy of the model folder `source` whose config.json has `changes` applied."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def check(folder: Path):
    return checked_skeleton(folder, torch.float32, WHERE)


def refusal(folder: Path) -> str:
    with pytest.raises(SpapInputError) as refused:
        check(folder)
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.fixture()
def no_build(monkeypatch):
    """Fail if the meta skeleton is built: these refusals come from the config and the headers."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before its layer count was checked")
    monkeypatch.setattr(checkpoint, "skeleton", refuse)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_passes_as_saved_sharded_and_without_the_base_prefix(model_type, tmp_path):
    model = family_model(model_type)
    whole = Path(saved_family(model_type, tmp_path / "whole", model))
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    bare = tmp_path / "bare"  # as OPT's and GPT-2's hub checkpoints name their tensors
    bare.mkdir()
    tensors = load_file(whole / SINGLE_FILE)
    save_file({name.removeprefix(model.base_model_prefix + "."): tensor for name, tensor in tensors.items()},
              bare / SINGLE_FILE, metadata={"format": "pt"})
    shutil.copy(whole / "config.json", bare)
    assert (sharded / SHARD_INDEX).is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    expected = {name: parameter.shape for name, parameter in model.named_parameters()}
    for folder in (whole, sharded, bare):
        skeleton = check(folder)
        assert {name: parameter.shape for name, parameter in skeleton.named_parameters()} == expected
        assert {parameter.device.type for parameter in skeleton.parameters()} == {"meta"}


@pytest.mark.parametrize("model_type, changes, message", [
    ("llama", {"num_hidden_layers": 1_000_000}, "says 1000000 layers (num_hidden_layers) but its weights hold 2"),
    ("llama", {"num_hidden_layers": 3}, "says 3 layers (num_hidden_layers) but its weights hold 2"),
    ("qwen2", {"num_hidden_layers": 1_000_000}, "says 1000000 layers (num_hidden_layers) but its weights hold 2"),
    ("gemma3_text", {"num_hidden_layers": 10**12}, "says 1000000000000 layers (num_hidden_layers)"),
    ("gpt2", {"n_layer": 1_000_000}, "says 1000000 layers (n_layer) but its weights hold 2"),
    ("llama", {"num_hidden_layers": "many"}, "gives num_hidden_layers = many, not a number of layers"),
    ("llama", {"num_hidden_layers": 0}, "gives num_hidden_layers = 0, not a number of layers"),
    ("opt", {"num_hidden_layers": True}, "gives num_hidden_layers = True, not a number of layers"),
])
def test_a_layer_count_the_weights_cannot_fill_is_refused_before_the_model_is_built(no_build, tmp_path, model_type,
                                                                                  changes, message):
    folder = copy_with_config(Path(saved_family(model_type, tmp_path / "saved")), tmp_path / "lying", **changes)
    assert message in refusal(folder)


@pytest.mark.parametrize("model_type, layers_key, first", [
    ("llama", "num_hidden_layers", "model.layers.1"),
    ("opt", "num_hidden_layers", "model.decoder.layers.1"),
    ("gpt2", "n_layer", "transformer.h.1"),
    ("gpt_neox", "num_hidden_layers", "gpt_neox.layers.1"),
])
def test_weights_of_more_layers_than_the_config_says_are_refused(tmp_path, model_type, layers_key, first):
    """transformers would build one layer and drop the other's weights."""
    folder = copy_with_config(Path(saved_family(model_type, tmp_path / "saved")), tmp_path / "lying",
                              **{layers_key: 1})
    assert f"says 1 layer but its weights hold 2 ({first} is beyond the model the config describes)" in refusal(folder)


@pytest.mark.parametrize("model_type, changes, tensor, stored, built", [
    ("llama", {"hidden_size": 64}, "model.embed_tokens.weight", [203, 32], [203, 64]),
    ("llama", {"intermediate_size": 128}, "model.layers.0.mlp.gate_proj.weight", [64, 32], [128, 32]),
    ("llama", {"vocab_size": 50_000}, "model.embed_tokens.weight", [203, 32], [50000, 32]),
    ("llama", {"num_attention_heads": 8}, "model.layers.0.self_attn.q_proj.weight", [32, 32], [32, 32]),
    ("qwen3", {"head_dim": 16}, "model.layers.0.self_attn.q_proj.weight", [32, 32], [64, 32]),
    ("opt", {"ffn_dim": 128}, "model.decoder.layers.0.fc1.weight", [64, 32], [128, 32]),
    ("gpt2", {"n_inner": 128}, "transformer.h.0.mlp.c_fc.weight", [32, 64], [32, 128]),
    ("gpt_neox", {"intermediate_size": 10**9}, "gpt_neox.layers.0.mlp.dense_h_to_4h.weight", [64, 32],
     [10**9, 32]),
    ("phi3", {"intermediate_size": 128}, "model.layers.0.mlp.gate_up_proj.weight", [128, 32], [256, 32]),
    ("gemma2", {"vocab_size": 10**9}, "model.embed_tokens.weight", [203, 32], [10**9, 32]),
])
def test_a_size_the_weights_do_not_have_is_refused_naming_the_tensor_and_both_shapes(tmp_path, model_type, changes,
                                                                                     tensor, stored, built):
    folder = copy_with_config(Path(saved_family(model_type, tmp_path / "saved")), tmp_path / "lying", **changes)
    message = refusal(folder)
    if stored == built:  # the heads do not change this tensor's shape: the first one they do change is named
        assert "does not match its weights: model.layers.0.self_attn." in message, message
    else:
        assert f"does not match its weights: {tensor} is {stored} in the weights but {built} by the config" in message


def test_a_config_no_model_can_be_built_from_is_refused_in_one_line(tiny_dir, tmp_path):
    folder = copy_with_config(tiny_dir, tmp_path / "lying", hidden_act="no-such-activation")
    assert "describes no causal LM transformers can build: " in refusal(folder)


def test_a_weight_the_config_calls_for_but_the_folder_lacks_is_refused(tiny_dir, tmp_path):
    """transformers would fill it with random values and carry on."""
    biased = copy_with_config(tiny_dir, tmp_path / "biased", attention_bias=True)
    assert f"The weights of the {WHERE} lack model.layers.0.self_attn.q_proj.bias ([64]), which its config calls " \
           "for" in refusal(biased)
    untied = copy_with_config(tiny_dir, tmp_path / "untied", tie_word_embeddings=False)
    assert "lack lm_head.weight ([203, 64])" in refusal(untied)


def test_pre_quantized_weights_are_left_to_the_quantizer(tiny_dir, tmp_path):
    """Packed weights have shapes of their own, which only transformers' quantizer maps onto the
    model: their shapes are not compared (their layer count still is)."""
    quantized = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    packed = copy_with_config(tiny_dir, tmp_path / "packed", intermediate_size=256, quantization_config=quantized)
    assert check(packed).model.layers[0].mlp.gate_proj.weight.shape == (256, 64)
    deep = copy_with_config(tiny_dir, tmp_path / "deep", num_hidden_layers=3, quantization_config=quantized)
    assert "says 3 layers (num_hidden_layers) but its weights hold 2" in refusal(deep)


def test_a_tied_head_may_be_stored_under_either_name(tiny_dir, tmp_path):
    folder = tmp_path / "head-only"
    shutil.copytree(tiny_dir, folder)
    tensors = load_file(folder / SINGLE_FILE)
    tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, folder / SINGLE_FILE, metadata={"format": "pt"})
    check(folder)


def test_the_shards_are_the_files_of_the_index_inside_the_folder(tmp_path):
    sharded = tmp_path / "sharded"
    tiny_llama().save_pretrained(sharded, max_shard_size="100KB")
    index = json.loads((sharded / SHARD_INDEX).read_text())
    first = min(index["weight_map"].values())

    def with_index(name: str, weight_map: dict | None) -> Path:
        folder = tmp_path / name
        shutil.copytree(sharded, folder)
        (folder / SHARD_INDEX).write_text(json.dumps({} if weight_map is None else {"weight_map": weight_map}))
        return folder

    outside = with_index("outside", {**index["weight_map"], "model.norm.weight": "../outside.safetensors"})
    assert "names '../outside.safetensors', which is not a file of" in refusal(outside)
    missing = with_index("missing", index["weight_map"])
    (missing / first).unlink()
    assert f"names '{first}', which is not a file of" in refusal(missing)
    assert "cannot be read: 'weight_map'" in refusal(with_index("no-map", None))
    neither = tmp_path / "neither"
    shutil.copytree(sharded, neither)
    (neither / SHARD_INDEX).unlink()
    assert f"holds neither {SINGLE_FILE} nor {SHARD_INDEX}" in refusal(neither)


def test_a_config_that_is_no_json_object_is_refused(tiny_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_dir, folder)
    (folder / "config.json").write_text('{"model_type": "llama",')
    assert "The config.json of" in refusal(folder) and "cannot be read" in refusal(folder)
    (folder / "config.json").write_text("[1, 2]")
    assert "holds a list, not a JSON object" in refusal(folder)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "foo", "auto_map": {"AutoModelForCausalLM": "modeling_foo.FooForCausalLM"}},
     (f"The {WHERE} needs custom code (its config names auto_map and model_type 'foo'), which this tool never "
      "runs; use a model of a supported family: Llama")),
    ({"model_type": "foo"}, f"The {WHERE} has model_type 'foo', which transformers does not know"),
])
def test_a_model_type_transformers_does_not_know_is_refused_without_advising_remote_code(no_build, tiny_dir,
                                                                                       tmp_path, changes, message):
    text = refusal(copy_with_config(tiny_dir, tmp_path / "custom", **changes))
    assert text.startswith(message) and "trust_remote_code" not in text


def test_a_known_type_with_an_auto_map_loads_the_library_class(tiny_dir, tmp_path):
    """Older Phi-3 configs name auto_map beside a model type transformers has: no custom code runs."""
    folder = copy_with_config(tiny_dir, tmp_path / "mapped", auto_map={"AutoModelForCausalLM": "modeling_x.X"})
    assert type(load_model(str(folder)).model).__name__ == "LlamaForCausalLM"
