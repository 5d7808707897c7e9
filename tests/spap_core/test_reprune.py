"""Every model this tool saves can be pruned again: whatever the first run did (uniform widths,
per-layer widths from the Fisher allocation, attention heads, a parameter budget), a second
`prune --out` by every method saves a model that plain transformers reloads with the logits of the
pruned model in memory, and a run record whose trace reads back layer for layer at each layer's own
width (the trace arrays are padded to the widest layer on disk)."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from conftest import VOCAB_WORDS
from transformers import AutoModelForCausalLM

import spap_core.cli
import spap_core.runner.execute
from spap_core.cli import main
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models.loading import load_model
from spap_core.pipeline.walk import prune_model
from spap_core.storage.runs import ARRAYS_FILE, HEADS_PREFIX, read_run, write_run

EVALUATION = torch.randint(3, len(VOCAB_WORDS) + 3, (2, 16), generator=torch.Generator().manual_seed(5))
# The first run of each kind of saved model; a parameter budget sets the sparsities itself.
FIRST_RUNS = {
    "uniform widths": ["--sparsity", "0.25"],
    "per-layer widths": ["--sparsity", "0.25", "--allocation", "fisher"],
    "heads pruned": ["--sparsity", "0.25", "--head-sparsity", "0.5"],
    "parameter budget": ["--param-sparsity", "0.3"],
}
CHEAP_OPTIONS = {"spap": ["-K", "3", "--altmin-steps", "4"]}


def prune_args(model, files, out, *settings) -> list[str]:
    return ["prune", "--model", str(model), "--calib-file", str(files["calib"]), "--nsamples", "4", "--seqlen", "32",
            "--seed", "0", "--eval-file", str(files["eval"]), "--eval-len", "32", "--eval-windows", "2", "--json",
            "--out", str(out), *settings]


def method_args(method: str) -> list[str]:
    return ["--method", method, *CHEAP_OPTIONS.get(method, [])]


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=EVALUATION).logits


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def first_saves(tiny_dir, text_files, tmp_path_factory) -> dict:
    """Each kind of saved model, pruned once by SPAP and saved by `prune --out`."""
    folder = tmp_path_factory.mktemp("first")
    saves = {}
    for kind, settings in FIRST_RUNS.items():
        out = folder / kind.replace(" ", "-")
        assert main(prune_args(tiny_dir, text_files, out, *method_args("spap"), *settings)) == 0
        saves[kind] = out
    config = {kind: json.loads((out / "config.json").read_text()) for kind, out in saves.items()}
    assert len(set(config["per-layer widths"]["spap_layer_widths"])) > 1  # the case this file is about
    assert config["heads pruned"]["num_attention_heads"] < 4
    return saves


@pytest.fixture()
def saved_logits(monkeypatch) -> list[torch.Tensor]:
    """The logits of every model the CLI saves, taken from the model in memory as it is saved."""
    taken = []
    save_pruned = spap_core.runner.execute.save_pruned

    def save_and_take(model, tokenizer, directory):
        taken.append(logits(model))
        return save_pruned(model, tokenizer, directory)

    monkeypatch.setattr(spap_core.runner.execute, "save_pruned", save_and_take)
    return taken


def check_second_save(out, report: dict, in_memory: torch.Tensor) -> None:
    """Plain transformers gives the in-memory logits (a per-layer model is saved padded, which adds
    nothing); spap_core's loader gives back each layer's width and the reported parameter count;
    the run record's trace reads back at each layer's own width."""
    vanilla = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(vanilla), in_memory, rtol=1e-5, atol=1e-6)
    reloaded = load_model(str(out), device="cpu")
    family = reloaded.family
    widths = [family.mlp_channels.width(layer) for layer in family.decoder_layers(reloaded.model)]
    assert widths == report["layer_widths"]
    assert parameters(reloaded.model) == report["params_after"] < report["params_before"]
    _, stored = read_run(out)
    parts = [(stored.layers, stored.trace)]
    if stored.heads is not None:
        parts.append((stored.heads.layers, stored.heads.trace))
    for layers, trace in parts:
        for step in trace:
            assert len(step.soft_mask) == len(step.column_norms) == layers[step.layer].width
            assert np.isfinite(step.soft_mask).all() and np.isfinite(step.column_norms).all()


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", FIRST_RUNS)
def test_every_saved_model_is_pruned_again_by_every_method_and_saved_loadable(
        kind, method, first_saves, text_files, saved_logits, tmp_path, capsys):
    out = tmp_path / "again"
    code = main(prune_args(first_saves[kind], text_files, out, *method_args(method), "--sparsity", "0.25"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    check_second_save(out, json.loads(captured.out.strip().splitlines()[-1]), saved_logits[-1])


@pytest.mark.parametrize("second", [
    ["--sparsity", "0.25", "--allocation", "fisher", "--head-sparsity", "0.5", *method_args("spap")],
    ["--param-sparsity", "0.3", *method_args("obs")],
], ids=["spap-fisher-heads", "obs-parameter-budget"])
@pytest.mark.parametrize("kind", FIRST_RUNS)
def test_every_saved_model_is_pruned_again_at_per_layer_widths_or_a_parameter_budget(
        kind, second, first_saves, text_files, saved_logits, tmp_path, capsys):
    out = tmp_path / "again"
    code = main(prune_args(first_saves[kind], text_files, out, *second))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    check_second_save(out, json.loads(captured.out.strip().splitlines()[-1]), saved_logits[-1])


def _record(result) -> dict:
    return {"method": result.settings.method, "sparsity": result.settings.sparsity, "settings": asdict(result.settings),
            "timings": result.timings, "params_before": result.params_before, "params_after": result.params_after,
            "calibration_tokens": result.calibration_tokens, "ppl": 12.5, "ppl_dense": 11.0, "eval_tokens": 64,
            "eval_windows": 2, "eval_len": 32,
            "heads": None if result.heads is None else {"layout": asdict(result.heads.layout),
                                                         "head_dim": result.heads.head_dim}}


def test_a_run_on_per_layer_widths_reads_back_each_layers_own_soft_masks(tiny, tmp_path):
    """The trace of a run whose layers differ in width is stored padded to the widest layer with
    NaN, with each layer's width beside it, and read back exactly as it was recorded."""
    calibration = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    first = prune_model(tiny, calibration, PruneSettings(sparsity=0.25, allocation="fisher"))
    assert len({layer.width - len(layer.keep) for layer in first.layers}) > 1
    result = prune_model(replace(tiny, model=first.model), calibration, PruneSettings(sparsity=0.25, head_sparsity=0.5))
    widths = [layer.width for layer in result.layers]
    assert len(set(widths)) > 1

    folder = write_run(tmp_path / "run", _record(result), result)
    with np.load(folder / ARRAYS_FILE) as arrays:
        assert arrays["soft_masks"].shape[-1] == max(widths)
        assert arrays["trace_widths"].tolist() == widths
        assert np.isnan(arrays["soft_masks"][int(np.argmin(widths)), :, min(widths):]).all()
        assert arrays[HEADS_PREFIX + "trace_widths"].tolist() == [layer.width for layer in result.heads.layers]
    _, stored = read_run(folder)
    for original, back in zip(result.trace + result.heads.trace, stored.trace + stored.heads.trace, strict=True):
        assert (back.layer, back.iteration) == (original.layer, original.iteration)
        np.testing.assert_array_equal(back.soft_mask, original.soft_mask)
        np.testing.assert_array_equal(back.column_norms, original.column_norms)


def test_a_run_folder_without_trace_widths_reads_back_at_its_one_width(tiny, tmp_path):
    """Folders written before the widths were kept hold one width for every layer: they read back
    as they always did."""
    calibration = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny, calibration, PruneSettings(sparsity=0.25))
    folder = write_run(tmp_path / "run", _record(result), result)
    with np.load(folder / ARRAYS_FILE) as arrays:
        older = {key: value for key, value in arrays.items() if key != "trace_widths"}
    np.savez_compressed(folder / ARRAYS_FILE, **older)
    _, stored = read_run(folder)
    for original, back in zip(result.trace, stored.trace, strict=True):
        np.testing.assert_array_equal(back.soft_mask, original.soft_mask)
        np.testing.assert_array_equal(back.column_norms, original.column_norms)


APP_PAGES = ["mask_evolution", "scores", "dense_vs_pruned", "latency", "compare_runs", "how_spap_works", "run_spap"]


def test_the_app_prunes_a_model_with_per_layer_widths_and_every_page_shows_it(first_saves, app_files):
    """A model saved with per-layer widths, loaded in the app and pruned by SPAP: Mask evolution
    draws each layer at its own width (the trace is padded to the widest) and no page fails."""
    from app_harness import array, click, finish_job, keep, open_page, shown, start_app, titled

    from pages._state import ModelChoice

    folder = first_saves["per-layer widths"]
    at = start_app()
    keep(at, "model_choice", ModelChoice(source=str(folder)))
    open_page(at, "run_spap")
    at.slider(key="K").set_value(3)
    click(at, "Run SPAP")
    finish_job(at, "run")
    widths = [record.width for record in at.session_state["latest_run"].result.layers]
    assert len(set(widths)) > 1
    for page in APP_PAGES:
        open_page(at, page)
    open_page(at, "mask_evolution")
    assert any(f"× {min(widths)}–{max(widths)} channels" in shown(caption.value) for caption in at.caption)
    for layer, record in enumerate(at.session_state["latest_run"].result.layers):
        at.slider(key="mask_layer").set_value(layer).run()
        readout = array(titled(at, f"Layer {layer}: s over ρ iterations")["data"][0]["z"])[-1]
        assert len(readout) == record.width and readout.sum() == record.width - len(record.keep)
