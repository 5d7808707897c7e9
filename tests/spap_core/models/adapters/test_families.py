"""Every family the README names, with every method at its default settings (SPAP's alternating
minimization included): prune, save, reload with plain transformers, and get the parameter count
and the logits of the in-memory pruned model. Where a family cannot store an output-projection
bias, the method's no-bias variant is chosen before any work and named; where it has a native one
(OPT's fc2, GPT-2's c_proj, GPT-NeoX's dense_4h_to_h, Phi's fc2) the method's compensation goes
into it. Per-layer widths, disk offload and the CLI on the families added after Llama; a family
the adapter cannot handle is refused by name."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_tokenizer
from family_models import (
    BIAS_METHODS,
    CALIBRATION,
    EVALUATION,
    FAMILIES,
    NATIVE_BIAS_FAMILIES,
    NEW_FAMILIES,
    NO_BIAS_FAMILIES,
    TOKENIZER,
    VOCAB,
    WIDTH,
    family_model,
    loaded_family,
    logits,
    output_biases,
    parameters,
    saved_family,
)
from transformers import AutoModelForCausalLM

from spap_core.errors import SpapInputError
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models.adapters import model_adapter, text_config
from spap_core.models.loading import LoadedModel, Placement, load_model
from spap_core.models.shrink import LAYER_WIDTHS_KEY, save_pruned
from spap_core.pipeline.experiment import run_experiment
from spap_core.pipeline.walk import prune_model


def test_the_family_table_matches_the_adapters():
    """The expectations below are written down per family, not read from the adapter under test:
    check once that each tiny model really is of its family, with its own width field."""
    width_keys = {"opt": "ffn_dim", "gpt2": "n_inner"}
    for model_type in FAMILIES:
        loaded = loaded_family(model_type, TOKENIZER)
        family, config = loaded.family, text_config(loaded.model)
        assert config.model_type == model_type.removesuffix("_sequential")
        assert family.width_key == width_keys.get(model_type, "intermediate_size")
        assert getattr(config, family.width_key) == WIDTH
        assert [family.mlp_channels.width(layer) for layer in family.decoder_layers(loaded.model)] == [WIDTH, WIDTH]
        assert family.mlp_channels.stores_output_bias == (model_type not in NO_BIAS_FAMILIES), model_type
        native = [bias is not None for bias in output_biases(loaded.model)]
        assert native == [model_type in NATIVE_BIAS_FAMILIES] * 2, model_type
    adding = [name for name in METHODS if PruneSettings(method=name).adds_output_bias]
    assert adding == list(BIAS_METHODS)
    assert family_model("gpt_neox").config.use_parallel_residual
    assert not family_model("gpt_neox_sequential").config.use_parallel_residual


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_method_at_its_defaults_prunes_saves_and_reloads_on_every_family(model_type, method, tmp_path):
    """What is saved is what was evaluated: plain transformers reloads it with the reported
    parameter count and the same logits; the no-bias variant is chosen (and said) exactly where
    the family cannot store a bias, and a native output bias carries the method's compensation."""
    loaded = loaded_family(model_type, TOKENIZER)
    dense_biases = output_biases(loaded.model)
    settings = PruneSettings(method=method)  # the defaults: 30% of every layer, the method's own options
    experiment = run_experiment(loaded, CALIBRATION, EVALUATION, settings, batch_size=4)
    pruned, family = experiment.result.model, loaded.family
    kept = WIDTH - round(settings.sparsity * WIDTH)
    assert [family.mlp_channels.width(layer) for layer in family.decoder_layers(pruned)] == [kept, kept]
    assert getattr(text_config(pruned), family.width_key) == kept
    if method in BIAS_METHODS and model_type in NO_BIAS_FAMILIES:
        assert experiment.result.settings == settings.without_output_bias()
        assert not experiment.result.settings.adds_output_bias
        assert len(experiment.adjustments) == 1
        assert f"model type '{model_type}' cannot store a down_proj bias" in experiment.adjustments[0]
    else:
        assert experiment.result.settings == settings and experiment.adjustments == []

    save_pruned(pruned, TOKENIZER, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(pruned)
    assert parameters(reloaded) == experiment.result.params_after < experiment.result.params_before
    reloaded_logits = logits(reloaded)
    torch.testing.assert_close(reloaded_logits, logits(pruned), rtol=1e-5, atol=1e-6)
    nll = torch.nn.functional.cross_entropy(reloaded_logits[:, :-1].reshape(-1, VOCAB).float(),
                                            EVALUATION[:, 1:].reshape(-1))
    assert experiment.pruned.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)  # saved = evaluated

    saved_biases = output_biases(reloaded)
    if model_type in NATIVE_BIAS_FAMILIES:  # the compensation went into the native bias
        for dense, saved in zip(dense_biases, saved_biases):
            moved = float((saved - dense).abs().max())
            if method in BIAS_METHODS:
                assert moved > 1e-4, "the bias compensation is missing from the native bias"
            else:
                assert moved == 0, "a method without compensation changed the native bias"
    else:
        has_bias = method in BIAS_METHODS and model_type not in NO_BIAS_FAMILIES  # Llama through mlp_bias
        assert [bias is not None for bias in saved_biases] == [has_bias, has_bias]


@pytest.mark.parametrize("method", [name for name in METHODS if name not in BIAS_METHODS])
@pytest.mark.parametrize("model_type", NATIVE_BIAS_FAMILIES)
def test_a_native_output_bias_is_kept_as_it_is_by_methods_that_add_none(model_type, method, tmp_path):
    """Magnitude, Wanda-sp and FASP leave the output bias alone: pruning channels must not drop or
    change the family's own bias."""
    loaded = loaded_family(model_type, TOKENIZER)
    result = prune_model(loaded, CALIBRATION, PruneSettings(method=method), batch_size=4)
    save_pruned(result.model, TOKENIZER, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for dense, saved in zip(output_biases(loaded.model), output_biases(reloaded)):
        assert torch.equal(saved, dense)


def _with_layers_unlike(loaded: LoadedModel) -> LoadedModel:
    """Layer 0 with three outlier channels (50× their output scale) and layer 1 at a tenth of its
    output scale, so that both allocations give the two layers different widths: the global one
    keeps outlier channels, the Fisher one prunes where the loss is least sensitive."""
    family = loaded.family
    for layer, scale_columns in zip(family.decoder_layers(loaded.model), (lambda w: w[:, :3].mul_(50),
                                                                          lambda w: w.mul_(0.1))):
        weights = family.mlp_channels.weights(layer)
        output = weights.output.detach().clone()
        scale_columns(output)
        with torch.no_grad():
            family.mlp_channels.set_weights(layer, replace(weights, output=output))
    return loaded


@pytest.mark.parametrize("allocation", ["global", "fisher"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_per_layer_widths_save_padded_reload_in_plain_transformers_and_unpadded_in_load_model(
        model_type, allocation, tmp_path):
    loaded = _with_layers_unlike(loaded_family(model_type, TOKENIZER))
    experiment = run_experiment(loaded, CALIBRATION, EVALUATION,
                                PruneSettings(method="flap", sparsity=0.4, allocation=allocation), batch_size=4)
    result, family = experiment.result, loaded.family
    widths = [len(layer.keep) for layer in result.layers]
    assert widths[0] > widths[1], "the layers should get different widths"
    assert sum(widths) == 2 * (WIDTH - round(0.4 * WIDTH))  # the uniform budget, spread
    assert [family.mlp_channels.width(layer) for layer in family.decoder_layers(result.model)] == widths

    save_pruned(result.model, TOKENIZER, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config[family.width_key] == max(widths) and config[LAYER_WIDTHS_KEY] == widths
    expected = logits(result.model)
    vanilla = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(vanilla), expected, rtol=1e-5, atol=1e-6)
    reloaded = load_model(str(tmp_path), device="cpu")
    assert [family.mlp_channels.width(layer) for layer in family.decoder_layers(reloaded.model)] == widths
    assert parameters(reloaded.model) == result.params_after
    torch.testing.assert_close(logits(reloaded.model), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["spap", "flap"])
@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_a_disk_offloaded_model_prunes_exactly_like_the_model_in_memory(model_type, method, tmp_path, monkeypatch):
    """--low-memory on the new families: every decoder layer on disk, pruned one at a time through
    the offload hooks (SPAP's recovery and FLAP's bias included), saved and reloaded."""
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "cache"))  # the offload folders
    folder = saved_family(model_type, tmp_path / "dense")
    settings = PruneSettings(method=method, sparsity=0.4)
    in_memory = run_experiment(load_model(folder, device="cpu"), CALIBRATION, EVALUATION, settings, inplace=True)
    offloaded_model = load_model(folder, device="cpu", placement=Placement("disk"))
    assert offloaded_model.offload_folder is not None
    offloaded = run_experiment(offloaded_model, CALIBRATION, EVALUATION, settings, inplace=True)

    assert offloaded.adjustments == in_memory.adjustments
    assert offloaded.dense.perplexity == pytest.approx(in_memory.dense.perplexity, rel=1e-6)
    assert offloaded.pruned.perplexity == pytest.approx(in_memory.pruned.perplexity, rel=1e-6)
    assert offloaded.result.params_after == in_memory.result.params_after < in_memory.result.params_before
    family = offloaded_model.family
    layers = family.decoder_layers(offloaded_model.model)
    mlp = family.mlp_channels
    assert all(mlp.output_projection(layer).weight.device.type == "meta" for layer in layers)  # back on disk
    save_pruned(offloaded_model.model, offloaded_model.tokenizer, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert parameters(reloaded) == in_memory.result.params_after
    torch.testing.assert_close(logits(reloaded), logits(in_memory.result.model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_an_offloaded_model_takes_the_global_allocation_but_refuses_fisher_and_a_padded_save(
        model_type, tmp_path, monkeypatch):
    """Per-layer widths with --low-memory: the global allocation prunes as in memory, the Fisher
    one (a backward pass through the whole model) and the padded save are refused in one line."""
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "cache"))
    unlike = _with_layers_unlike(loaded_family(model_type, TOKENIZER)).model
    folder = saved_family(model_type, tmp_path / "dense", unlike)
    settings = PruneSettings(method="flap", sparsity=0.4, allocation="global")
    in_memory = run_experiment(load_model(folder, device="cpu"), CALIBRATION, EVALUATION, settings, inplace=True)
    offloaded_model = load_model(folder, device="cpu", placement=Placement("disk"))
    with pytest.raises(SpapInputError, match="offloaded.*'global'"):
        run_experiment(offloaded_model, CALIBRATION, EVALUATION, PruneSettings(allocation="fisher"), inplace=True)
    offloaded = run_experiment(offloaded_model, CALIBRATION, EVALUATION, settings, inplace=True)
    widths = [len(layer.keep) for layer in offloaded.result.layers]
    assert len(set(widths)) > 1 and widths == [len(layer.keep) for layer in in_memory.result.layers]
    assert offloaded.pruned.perplexity == pytest.approx(in_memory.pruned.perplexity, rel=1e-6)
    with pytest.raises(SpapInputError, match="per-layer MLP widths is saved padded from memory"):
        save_pruned(offloaded_model.model, TOKENIZER, tmp_path / "pruned")


@pytest.mark.parametrize("flags", [[], ["--allocation", "global"], ["--low-memory"]], ids=["uniform", "global",
                                                                                            "low-memory"])
@pytest.mark.parametrize("model_type", ["gpt2", "opt"])
def test_the_cli_prunes_a_model_folder_of_a_new_family_and_saves_what_it_reports(model_type, flags, text_files,
                                                                                 tmp_path, capsys, monkeypatch):
    from spap_core.cli import main

    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "cache"))
    unlike = _with_layers_unlike(loaded_family(model_type, TOKENIZER)).model
    folder = saved_family(model_type, tmp_path / "dense", unlike)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", folder, "--device", "cpu", "--calib-file", str(text_files["calib"]),
                 "--nsamples", "4", "--seqlen", "32", "--eval-file", str(text_files["eval"]), "--eval-len", "32",
                 "--eval-windows", "2", *flags, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "note:" not in captured.err  # nothing to adjust: bias is native
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["settings"]["options"]["refit"]["bias"] is True and record["adjustments"] == []
    assert record["params_after"] < record["params_before"]
    reloaded = load_model(str(out), device="cpu")  # unpadded: the per-layer widths come back
    assert reloaded.family.model_type == model_type
    assert [reloaded.family.mlp_channels.width(layer) for layer in reloaded.family.decoder_layers(reloaded.model)] \
        == record["layer_widths"]
    assert parameters(reloaded.model) == record["params_after"]
    vanilla = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(vanilla), logits(reloaded.model), rtol=1e-5, atol=1e-6)
    if "--allocation" in flags:  # per-layer widths: saved padded to the widest layer
        assert len(set(record["layer_widths"])) > 1
        assert parameters(vanilla) > record["params_after"]
    else:
        assert parameters(vanilla) == record["params_after"]


def test_the_cli_runs_the_no_bias_variant_on_a_family_without_one_and_says_so(tiny, text_files, tmp_path, capsys,
                                                                              monkeypatch):
    import spap_core.cli
    from spap_core.cli import main

    # transformers picks a family's own tokenizer class for a saved folder, so the model comes in
    # through the loader with the tiny word-level tokenizer instead of from a folder
    monkeypatch.setattr(spap_core.cli, "load_model", lambda *args, **kwargs: loaded_family("qwen2", tiny.tokenizer))
    monkeypatch.setattr(spap_core.cli, "model_source", lambda source: ("hub", source))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "qwen2", "--calib-file", str(text_files["calib"]), "--nsamples", "4",
                 "--seqlen", "32", "--eval-file", str(text_files["eval"]), "--eval-len", "32", "--eval-windows", "2",
                 "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert "note: spap runs without its down_proj bias" in captured.err
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["settings"]["options"]["refit"]["bias"] is False and record["adjustments"]
    assert json.loads((out / "results.json").read_text())["adjustments"] == record["adjustments"]
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"


@pytest.mark.parametrize("flags, message", [
    (["--seqlen", "300"], "longer than the model's 256 positions"),
    (["--eval-len", "1000"], "longer than the model's 256 positions"),
    (["--sparsity", "0.001"], "--sparsity must be between 0.05 and 0.95"),
    (["--device", "bogus"], "Unknown device 'bogus'"),
    *([(["--device", "cuda"], "no GPU is visible")] if not torch.cuda.is_available() else
      [(["--device", "cuda:99"], "does not exist")]),
])
def test_refusals_that_the_config_decides_come_before_any_forward_pass(tiny_dir, text_files, flags, message,
                                                                       capsys, monkeypatch):
    import spap_core.pipeline.experiment
    from spap_core.cli import main

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the refusal")

    monkeypatch.setattr(spap_core.pipeline.experiment, "perplexity", no_forward_pass)
    monkeypatch.setattr(spap_core.pipeline.experiment, "prune_model", no_forward_pass)
    argv = ["prune", "--model", str(tiny_dir), "--calib-file", str(text_files["calib"]), "--nsamples", "2",
            "--seqlen", "32", "--eval-file", str(text_files["eval"]), "--eval-len", "32", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_prune_on_float_statistics_and_keep_their_dtype(tiny, dtype, tmp_path):
    from conftest import tiny_llama

    reference = tiny_llama()
    half = LoadedModel(model=tiny_llama().to(dtype), tokenizer=tiny.tokenizer, source="tiny", description="tiny",
                       family=model_adapter(reference))
    full = LoadedModel(model=reference, tokenizer=tiny.tokenizer, source="tiny", description="tiny",
                       family=model_adapter(reference))
    calibration = torch.randint(3, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    evaluation = torch.randint(3, 200, (2, 32), generator=torch.Generator().manual_seed(1))
    half_run = run_experiment(half, calibration, evaluation, PruneSettings(sparsity=0.25), batch_size=4)
    full_run = run_experiment(full, calibration, evaluation, PruneSettings(sparsity=0.25), batch_size=4)
    assert {p.dtype for p in half_run.result.model.parameters()} == {dtype}  # stored in the model's dtype
    kept = [set(layer.keep.tolist()) for layer in half_run.result.layers]
    reference_kept = [set(layer.keep.tolist()) for layer in full_run.result.layers]
    overlap = np.mean([len(a & b) / len(a | b) for a, b in zip(kept, reference_kept)])
    assert overlap > 0.8  # half-precision activations shift a few borderline channels, not the selection
    assert half_run.pruned.perplexity == pytest.approx(full_run.pruned.perplexity, rel=0.02)
    save_pruned(half_run.result.model, tiny.tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert next(reloaded.parameters()).dtype == dtype
    saved = half_run.result.model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in reloaded.state_dict().items())  # bit for bit
    with torch.no_grad():  # the forward passes differ by rounding only (buffers such as rotary frequencies)
        torch.testing.assert_close(reloaded(evaluation).logits.float(),
                                   half_run.result.model(evaluation).logits.float(), rtol=2e-2, atol=2e-2)


def _tiny_bloom():
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=203))


def _post_norm_opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                    vocab_size=203, word_embed_proj_dim=32, do_layer_norm_before=False))


def _llama_with_one_channel():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=1,
                                        num_attention_heads=2, vocab_size=203))


@pytest.mark.parametrize(("build", "message"), [
    (_tiny_bloom, "Model type 'bloom' is not supported: SPAP Explorer prunes the MLP channels of Llama"),
    (_post_norm_opt, "normalises after the residual addition (do_layer_norm_before=False, as opt-350m does)"),
    (_llama_with_one_channel, "layer 0's MLP has 1 intermediate channel; structured pruning needs at least 2"),
])
def test_a_model_that_cannot_be_pruned_says_why_in_one_line(tmp_path, capsys, build, message):
    from spap_core.cli import main

    build().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    capsys.readouterr()
    assert main(["prune", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
