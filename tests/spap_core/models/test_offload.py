"""Models bigger than memory: a model placed by accelerate with its decoder layers on disk (or
spread over CPU and disk) is pruned one layer at a time and gives exactly what the same prune of
the model held in memory gives, saves through the offload hooks, and reloads in plain
transformers. The device maps here force disk offload on the CPU."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
from conftest import tiny_tokenizer, word_text
from transformers import AutoModelForCausalLM

from spap_core.cli import main
from spap_core.data.texts import TextSource, calibration_windows, evaluation_windows
from spap_core.errors import SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import Placement, load_model
from spap_core.models.offload import is_dispatched
from spap_core.models.shrink import save_pruned
from spap_core.pipeline.experiment import run_experiment
from spap_core.pipeline.walk import prune_model


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory):
    """A tiny Llama with four decoder layers, saved as safetensors (what disk offload reads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=203, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("four_layers")
    LlamaForCausalLM(config).eval().save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def windows():
    tokenizer = tiny_tokenizer()
    calibration = calibration_windows(tokenizer, TextSource(word_text(4000, seed=1), "calib"), 8, 32)
    evaluation = evaluation_windows(tokenizer, TextSource(word_text(2000, seed=2), "eval"), 32, 6)
    return calibration, evaluation


def _prune(loaded, windows, method):
    calibration, evaluation = windows
    return run_experiment(loaded, calibration, evaluation, PruneSettings(method=method, sparsity=0.4),
                          inplace=True, batch_size=2)


def _logits(model, evaluation):
    with torch.no_grad():
        return model(input_ids=evaluation[:2]).logits


@pytest.mark.parametrize("method", ["spap", "flap", "fasp"])
def test_a_disk_offloaded_model_prunes_exactly_like_the_model_in_memory(four_layer_dir, windows, method, tmp_path):
    in_memory = _prune(load_model(str(four_layer_dir), device="cpu"), windows, method)
    offloaded_model = load_model(str(four_layer_dir), device="cpu", placement=Placement("disk"))
    assert offloaded_model.offload_folder is not None
    offloaded = _prune(offloaded_model, windows, method)

    assert offloaded.dense.perplexity == pytest.approx(in_memory.dense.perplexity, rel=1e-5)
    assert offloaded.pruned.perplexity == pytest.approx(in_memory.pruned.perplexity, rel=1e-5)
    assert offloaded.result.params_after == in_memory.result.params_after < in_memory.result.params_before
    # the pruned layers went back to disk: their weights are on the meta device behind a hook
    layers = offloaded_model.family.decoder_layers(offloaded_model.model)
    assert all(layer.mlp.down_proj.weight.device.type == "meta" for layer in layers)
    assert all(layer.mlp.down_proj.in_features == in_memory.result.layers[0].keep.size for layer in layers)

    save_pruned(offloaded_model.model, offloaded_model.tokenizer, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    evaluation = windows[1]
    assert torch.allclose(_logits(reloaded, evaluation), _logits(in_memory.result.model, evaluation), atol=1e-4)


def test_a_map_mixing_memory_and_disk_prunes_every_layer(four_layer_dir, windows, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                  "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu", "model.layers.3": "disk"}
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(device_map))
    reference = _prune(load_model(str(four_layer_dir), device="cpu"), windows, "spap")
    loaded = load_model(str(four_layer_dir), device="cpu",
                        placement=Placement.parse(str(map_file), None, str(tmp_path / "offload")))
    assert is_dispatched(loaded.model)
    mixed = _prune(loaded, windows, "spap")
    assert mixed.pruned.perplexity == pytest.approx(reference.pruned.perplexity, rel=1e-5)
    assert len(list((tmp_path / "offload").glob("layer*.pruned-*"))) == 2  # the disk layers' pruned weights
    del loaded, mixed
    gc.collect()
    assert not list((tmp_path / "offload").glob("layer*.pruned-*"))  # gone with the model


def test_an_offloaded_model_is_only_pruned_in_place(four_layer_dir, windows):
    loaded = load_model(str(four_layer_dir), device="cpu", placement=Placement("disk"))
    with pytest.raises(SpapInputError, match="pruned in place"):
        prune_model(loaded, windows[0], PruneSettings(), inplace=False)


def test_an_offloaded_model_refuses_the_fisher_allocation_and_names_the_one_it_can_take(four_layer_dir, windows):
    loaded = load_model(str(four_layer_dir), device="cpu", placement=Placement("disk"))
    with pytest.raises(SpapInputError, match="offloaded.*'global'"):
        prune_model(loaded, windows[0], PruneSettings(allocation="fisher"), inplace=True)


@pytest.mark.parametrize(("device_map", "max_memory", "message"), [
    ({"model.layers.0.mlp": "disk"}, None, "splitting decoder layer 'model.layers.0'"),
    ("auto", {"cpu": "1KiB"}, "less than one decoder layer"),
])
def test_placements_the_walk_cannot_follow_are_refused_before_any_weight_loads(four_layer_dir, device_map,
                                                                               max_memory, message, monkeypatch):
    def no_load(*_args, **_kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(SpapInputError, match=message):
        load_model(str(four_layer_dir), device="cpu", placement=Placement(device_map, max_memory))


@pytest.mark.parametrize(("flags", "message"), [
    (["--device-map", "nowhere"], "neither one of auto"),
    (["--low-memory", "--device-map", "auto"], "--low-memory means --device-map disk"),
    (["--max-memory", "cpu=1GiB"], "only apply with --device-map"),
    (["--device-map", "auto", "--max-memory", "cpu"], "look like 0=20GiB"),
])
def test_bad_placement_flags_are_one_line_before_the_model_loads(four_layer_dir, flags, message, capsys):
    assert main(["prune", "--model", str(four_layer_dir), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_cli_low_memory_mode_prunes_saves_and_reports_like_the_default(four_layer_dir, text_files, tmp_path,
                                                                          capsys):
    common = ["prune", "--model", str(four_layer_dir), "--device", "cpu", "--calib-file", str(text_files["calib"]),
              "--eval-file", str(text_files["eval"]), "--nsamples", "4", "--seqlen", "32", "--eval-len", "32",
              "--eval-windows", "4", "--json"]
    assert main(common) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*common, "--low-memory", "--out", str(tmp_path / "out")]) == 0
    low = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isclose(low["ppl"], default["ppl"], rel_tol=1e-5)
    assert low["params_after"] == default["params_after"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in reloaded.parameters()) == default["params_after"]


def _prune_with_map(four_layer_dir, text_files, tmp_path, device_map, *extra) -> list[str]:
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(device_map))
    return ["prune", "--model", str(four_layer_dir), "--calib-file", str(text_files["calib"]),
            "--eval-file", str(text_files["eval"]), "--nsamples", "4", "--seqlen", "32", "--eval-len", "32",
            "--eval-windows", "2", "-K", "2", "--device-map", str(map_file), "--json", *extra]


@pytest.mark.parametrize("device_map", [
    {"": "cpu"},  # one device: transformers loads it without dispatching (no hf_device_map)
    {"model": "cpu"},  # the tied head needs no entry of its own
    {"": "disk"},  # the whole model offloaded: split into its modules, each layer on its own
    {"model.embed_tokens": "disk", "model.layers": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
     "lm_head": "disk"},  # the tied embedding and head on disk: accelerate unties them
])
def test_any_map_accelerate_accepts_prunes_saves_and_counts_like_the_model_in_memory(
        four_layer_dir, text_files, tmp_path, capsys, device_map):
    plain = _prune_with_map(four_layer_dir, text_files, tmp_path, device_map)
    plain = plain[:plain.index("--device-map")] + plain[plain.index("--device-map") + 2:]
    assert main(plain) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "pruned"
    assert main(_prune_with_map(four_layer_dir, text_files, tmp_path, device_map, "--out", str(out))) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert math.isclose(record["ppl"], expected["ppl"], rel_tol=1e-5)
    assert (record["params_before"], record["params_after"]) == (expected["params_before"], expected["params_after"])
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == record["params_after"]


@pytest.mark.parametrize(("device_map", "message"), [
    ({}, "The device map is empty"),
    ({"nonexistent": "cpu"}, "names 'nonexistent', which is not a module of this model"),
    ({"model": "cpu"} | {"model.layers.1": "disk"}, "places both 'model' and 'model.layers.1'"),
    ({"": "cpu", "model.layers.1": "disk"}, 'places both "" (the whole model) and'),
    ({"model.embed_tokens": "cpu", "lm_head": "cpu"}, "places no device for model.layers.0"),
    ({"": "meta"}, 'gives "" (the whole model) the device "meta"'),
    ({"": True}, "the device true; a device is a GPU index"),
    ({"": -1}, "the device -1; a device is a GPU index"),
    ({"": None}, "the device null"),
    ({"": "cuda:0"}, "no GPU is visible") if not torch.cuda.is_available() else ({"": "cuda:99"}, "does not exist"),
    ({"": "cpu", "--offload-folder": "x"}, "--max-memory and --offload-folder have nothing to place"),
    ({"": "cpu"}, "the device map puts the whole model on cpu, but --device asks for cuda")
    if torch.cuda.is_available() else ({"": 0}, "no GPU is visible"),
])
def test_a_map_the_walk_cannot_follow_is_one_line_before_any_weight_loads(four_layer_dir, text_files, tmp_path,
                                                                          capsys, monkeypatch, device_map, message):
    def no_load(*_args, **_kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    extra = ["--device", "cuda"] if "--device asks" in message else []
    if "--offload-folder" in device_map:  # a flag in the table's row, not an entry of the map
        extra += ["--offload-folder", str(tmp_path / device_map["--offload-folder"])]
        device_map = {name: device for name, device in device_map.items() if name != "--offload-folder"}
    assert main(_prune_with_map(four_layer_dir, text_files, tmp_path, device_map, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.lower() in err[0].lower(), err


@pytest.mark.parametrize(("content", "message"), [
    (b"[1, 2]", "must be a JSON object from module names to devices"),
    (b"{not json", "is not a JSON file"),
    (b"\xff\xfe{}", "is not a JSON file"),
])
def test_a_device_map_file_that_is_no_map_is_one_line(four_layer_dir, tmp_path, capsys, content, message):
    map_file = tmp_path / "map.json"
    map_file.write_bytes(content)
    assert main(["prune", "--model", str(four_layer_dir), "--device-map", str(map_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_padded_save_an_offloaded_model_cannot_make_is_refused_before_any_work(four_layer_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    import spap_core.cli as cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    assert main(["prune", "--model", str(four_layer_dir), "--low-memory", "--allocation", "global",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an offloaded model cannot be" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU gives accelerate's 'auto' somewhere else to put layers")
def test_an_auto_map_that_keeps_everything_on_the_cpu_loads_a_plain_model(four_layer_dir):
    """accelerate's 'auto' on a machine without a GPU places the whole model on the CPU and
    dispatches nothing: the load still succeeds and nothing is offloaded to disk."""
    loaded = load_model(str(four_layer_dir), device="cpu", placement=Placement.parse("auto", None, None))
    assert loaded.offload_folder is None and next(loaded.model.parameters()).device.type == "cpu"
