"""The run API (spap_core.runner): one call prunes, evaluates, saves a record that read_run reads back,
and gives the CLI's result for the CLI's settings; a caller's windows and dense perplexity are used
as given, the progress hooks fire in order, and a cancel stops the run before anything is saved, except
one during the recovery, which ends the run with the pruned model as it was before recovery."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import last_json_line

import spap_core.runner.execute as execute
from spap_core.cli import main
from spap_core.data.texts import calibration_windows, evaluation_windows, text_from_file
from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.evaluation.perplexity import perplexity
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import load_model
from spap_core.models.shrink import load_pruned
from spap_core.recovery.loop import RecoveryCancelled, RecoveryStep
from spap_core.recovery.settings import RecoverySettings
from spap_core.runner.execute import run
from spap_core.runner.progress import RunProgress
from spap_core.runner.spec import (
    MeasuredDense,
    ParameterBudget,
    RunData,
    RunOutput,
    RunSpec,
    RunTexts,
    ZeroShotRequest,
)
from spap_core.storage.runs import read_run

# fields that time the run, which differ between any two runs
TIMINGS = ("prune_seconds", "eval_seconds", "dense_eval_seconds", "timings")


def spec(**changes) -> RunSpec:
    values = {"settings": PruneSettings(method="magnitude", sparsity=0.25), "nsamples": 4, "seqlen": 32, "seed": 0,
              "eval_len": 32, "eval_windows": 2, "batch_size": 4, "inplace": True, **changes}
    return RunSpec(**values)


def texts(files: dict[str, Path]) -> RunTexts:
    return RunTexts(calibration=text_from_file(files["calib"]), evaluation=text_from_file(files["eval"]))


def as_json(record: dict) -> dict:
    """The record as the CLI prints it and results.json holds it."""
    return json.loads(json.dumps(record, default=float))


def without_timings(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in TIMINGS}


class Recorded(RunProgress):
    """Every hook call, by name, in order."""

    def __init__(self, cancel_after_layer: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.notes: list[str] = []
        self.cancel_after_layer = cancel_after_layer

    def note(self, text: str) -> None:
        self.calls.append("note")
        self.notes.append(text)

    def layer(self, done: int, total: int) -> None:
        self.calls.append("layer")
        if self.cancel_after_layer is not None:
            self.cancel_after_layer.set()

    def dense_batch(self, done: int, total: int) -> None:
        self.calls.append("dense_batch")

    def pruned_batch(self, done: int, total: int) -> None:
        self.calls.append("pruned_batch")


def test_one_call_prunes_evaluates_and_saves_a_record_that_reads_back(tiny_dir, text_files, tmp_path):
    out = tmp_path / "pruned"
    loaded = load_model(str(tiny_dir), device="cpu")
    progress = Recorded()
    result = run(loaded, spec(output=RunOutput(out)), texts(text_files), progress=progress)
    assert result.save_error is None
    experiment = result.experiment
    assert experiment.result.params_after < experiment.result.params_before
    assert math.isfinite(experiment.pruned.perplexity) and math.isfinite(experiment.dense.perplexity)
    # the dense perplexity first, every layer, then the pruned perplexity
    assert progress.calls[0] == "dense_batch" and progress.calls[-1] == "pruned_batch" and "layer" in progress.calls
    assert {"model.safetensors", "results.json", "config.json"} <= {path.name for path in out.iterdir()}
    record, stored = read_run(out)
    assert record == as_json(result.record())
    assert record["window_nll"] == list(experiment.pruned.window_nll) and len(record["window_nll"]) == 2
    assert record["ppl_dense_ci95"] == list(experiment.dense.ci95)
    assert record["calib_synthetic"] is False and record["calib_source"] == f"file {text_files['calib']}"
    assert [list(layer.keep) for layer in stored.layers] == [list(layer.keep) for layer in experiment.result.layers]


@pytest.mark.parametrize("settings", [
    ["--method", "magnitude", "--sparsity", "0.25"],
    ["--method", "magnitude", "--param-sparsity", "0.3", "--head-sparsity", "0.5"],
], ids=["sparsity", "parameter budget"])
def test_the_cli_and_the_api_give_the_same_result_for_the_same_settings(tiny_dir, text_files, tmp_path, capsys,
                                                                       settings):
    assert main(["prune", "--model", str(tiny_dir), "--calib-file", str(text_files["calib"]), "--eval-file",
                 str(text_files["eval"]), "--nsamples", "4", "--seqlen", "32", "--eval-len", "32", "--eval-windows",
                 "2", "--json", *settings]) == 0
    printed = last_json_line(capsys.readouterr().out)
    budget = None
    if "--param-sparsity" in settings:
        budget = ParameterBudget(0.3, head_sparsity=0.5)
        asked = PruneSettings(method="magnitude", sparsity=0.3, head_sparsity=0.5)
    else:
        asked = PruneSettings(method="magnitude", sparsity=0.25)
    progress = Recorded()
    result = run(load_model(str(tiny_dir), device="cpu"), spec(settings=asked, budget=budget), texts(text_files),
                 progress=progress)
    from_api = as_json(result.record())
    assert without_timings(from_api) == without_timings(printed)
    assert set(from_api) == set(printed)
    if budget is not None:
        assert result.split is not None and progress.notes[-1] == result.split.describe()
        assert from_api["budget"]["param_sparsity"] == 0.3 and from_api["sparsity"] == result.split.sparsity


def test_a_budget_the_models_shapes_cannot_meet_is_refused_before_any_text_is_read(tiny):
    class Unread(RunTexts):
        def __getattribute__(self, name):
            raise AssertionError(f"the run read its texts ({name}) before refusing the budget")

    with pytest.raises(SpapInputError, match="A parameter budget of 90% cannot be met"):
        run(tiny, spec(settings=PruneSettings(), budget=ParameterBudget(0.9)), Unread(None, None))


def test_a_callers_windows_and_dense_perplexity_are_used_and_recorded(tiny, text_files):
    calibration_text, evaluation_text = text_from_file(text_files["calib"]), text_from_file(text_files["eval"])
    data = RunData(calibration_source=calibration_text, evaluation_source=evaluation_text,
                   calibration=calibration_windows(tiny.tokenizer, calibration_text, 4, 32, 0),
                   evaluation=evaluation_windows(tiny.tokenizer, evaluation_text, 32, 2))
    dense = perplexity(tiny.model, data.evaluation)
    progress = Recorded()
    result = run(tiny, spec(inplace=False), data, dense=MeasuredDense(dense, seconds=1.5, cached=True),
                 progress=progress)
    assert "dense_batch" not in progress.calls  # not measured again
    assert result.experiment.dense is dense and result.experiment.result.model is not tiny.model  # a copy pruned
    record = result.record(owner="me")
    assert record["ppl_dense"] == dense.perplexity and record["dense_eval_seconds"] == 1.5
    assert record["dense_ppl_cached"] is True and record["owner"] == "me"
    assert "calib_synthetic" not in record  # windows given: the run sampled no text


def test_a_cancel_stops_the_run_and_nothing_is_saved(tiny_dir, text_files, tmp_path):
    out = tmp_path / "pruned"
    cancel = threading.Event()
    with pytest.raises(PruningCancelled):
        run(load_model(str(tiny_dir), device="cpu"), spec(output=RunOutput(out)), texts(text_files),
            progress=Recorded(cancel_after_layer=cancel), cancel=cancel)
    assert not out.exists() and not list(tmp_path.iterdir())


LORA = RecoverySettings(mode="lora", steps=5, lr=1e-2, heldout_every=2)


class CancelledInRecovery(Recorded):
    """Sets the cancel once the recovery has done `at_step` steps."""

    def __init__(self, cancel: threading.Event, at_step: int) -> None:
        super().__init__()
        self.cancel, self.at_step = cancel, at_step

    def recovery_step(self, step: RecoveryStep) -> None:
        self.calls.append("recovery_step")
        if step.step == self.at_step:
            self.cancel.set()


def test_a_cancel_during_the_recovery_ends_the_run_with_the_pruned_model_as_it_was_before_it(tiny_dir, text_files,
                                                                                          tmp_path, monkeypatch):
    measured = []  # which model's zero-shot accuracy was asked for
    monkeypatch.setattr(execute, "zeroshot_accuracy", lambda model, *args, **kwargs: measured.append(model) or {
        "task": {"acc": 0.5}})
    loaded = load_model(str(tiny_dir), device="cpu")
    unrecovered = run(loaded, spec(inplace=False), texts(text_files))
    out, cancel = tmp_path / "pruned", threading.Event()
    progress = CancelledInRecovery(cancel, at_step=2)
    result = run(loaded, spec(inplace=False, recovery=LORA, output=RunOutput(out),
                              zeroshot=ZeroShotRequest(("task",))),
                 texts(text_files), progress=progress, cancel=cancel)
    model, expected = result.experiment.result.model.state_dict(), unrecovered.experiment.result.model.state_dict()
    assert model.keys() == expected.keys() and all(torch.equal(model[name], expected[name]) for name in expected)
    record = result.record()
    assert record["ppl"] == unrecovered.record()["ppl"] and record["window_nll"] == unrecovered.record()["window_nll"]
    message = ("Recovery cancelled after 2 of 5 steps: its adapters were dropped, and the pruned model is as it was "
               "before recovery.")
    assert (record["ppl_before_recovery"], record["recovery"]) == (None, None)
    assert record["recovery_cancelled"] == {"settings": asdict(LORA), "steps_done": 2, "message": message}
    # no perplexity after the recovery: the pruned model's batches ran once, before it
    assert progress.calls.count("pruned_batch") == 1 and progress.calls[-1] == "note"
    assert progress.calls.count("recovery_step") == 2
    # the pruned model's zero-shot accuracy is skipped, the dense model's kept
    assert measured == [loaded.model] and record["zeroshot"] == {"dense": {"task": {"acc": 0.5}}, "pruned": None}
    assert progress.notes[-2:] == [message, "The pruned model's zero-shot accuracy was not measured: the run was "
                                            "asked to stop."]
    assert result.save_error is None  # the unrecovered pruned model is saved
    saved, _ = read_run(out)
    assert saved == as_json(record)
    reloaded = load_pruned(out, torch.float32, torch.device("cpu")).state_dict()
    assert all(torch.equal(reloaded[name], expected[name]) for name in expected)


@pytest.mark.parametrize("mode", ["lora", "distill"])
def test_a_cancel_before_the_recovery_of_a_recovering_run_still_discards_it(tiny_dir, text_files, tmp_path, mode):
    """A cancel during the pruning, or during the dense logits a distilling recovery takes before
    it (the cancel set before the run: the first thing that reads it is the dense logits)."""
    out, cancel = tmp_path / "pruned", threading.Event()
    progress = Recorded(cancel_after_layer=cancel)
    if mode == "distill":
        cancel.set()
    with pytest.raises(PruningCancelled) as raised:
        run(load_model(str(tiny_dir), device="cpu"), spec(output=RunOutput(out), recovery=RecoverySettings(
            mode=mode, steps=5)), texts(text_files), progress=progress, cancel=cancel)
    assert not isinstance(raised.value, RecoveryCancelled) and not out.exists()
    assert ("layer" in progress.calls) == (mode == "lora")


def test_a_save_that_fails_keeps_the_result_and_says_why(tiny_dir, text_files, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    result = run(load_model(str(tiny_dir), device="cpu"), spec(output=RunOutput(out)), texts(text_files))
    assert result.save_error and np.isfinite(result.experiment.pruned.perplexity)
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
