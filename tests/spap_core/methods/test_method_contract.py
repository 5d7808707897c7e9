"""The contract a pruning method and a model family plug in through: a method registered beside
the built-in ones, with its own step type, parameter group and solve cost, and a family adapter
registered under a model type of its own, prune a model end to end. The run is pruned, saved and
read back with the method's steps as its own type, the saved model gives the same logits, the
time estimate counts the method's declared cost and the parameter groups take its group; the
allocation strategies answer the walk from their own declarations."""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_llama, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from spap_core.errors import SpapInputError
from spap_core.methods.allocation import ALLOCATION_STRATEGIES, Allocation, DenseMeasurements, allocation_strategy
from spap_core.methods.base import MethodStep, PruningMethod
from spap_core.methods.baselines import magnitude, magnitude_scores
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.methods.sensitivity import FISHER_WINDOWS
from spap_core.methods.taylor import TaylorSettings
from spap_core.models import adapters
from spap_core.models.adapters import LlamaAdapter, model_adapter
from spap_core.models.loading import LoadedModel
from spap_core.models.shrink import load_pruned, save_pruned
from spap_core.pipeline.experiment import run_experiment
from spap_core.pipeline.parameters import GROUPS, parameter_groups
from spap_core.pipeline.walk import prune_model
from spap_core.problem.objective import LayerDecision, LayerProblem, prune_count
from spap_core.schema import Parameter
from spap_core.storage.runs import ARRAYS_FILE, HEADS_PREFIX, read_run, write_run
from spap_service.data import DataSpec, TextChoice
from spap_service.estimates import ModelSpeed, run_seconds
from spap_service.runs import RunRequest

CALIBRATION = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
EVALUATION = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))


@dataclass
class ShareStep(MethodStep):
    """One step of the toy method: the share of the layer's units it has looked at, and their scores."""

    share: float
    scores: np.ndarray

    columns: ClassVar[tuple[str, ...]] = ("layer", "iteration", "share")
    array_names: ClassVar[tuple[str, ...]] = ("share_scores",)

    def record_row(self) -> dict[str, Any]:
        return {"layer": self.layer, "iteration": self.iteration, "share": self.share}

    def unit_arrays(self) -> dict[str, np.ndarray]:
        return {"share_scores": self.scores}

    @classmethod
    def from_record(cls, row: dict[str, str], arrays: dict[str, np.ndarray], pruned: int) -> ShareStep:
        return cls(layer=int(row["layer"]), iteration=int(row["iteration"]), share=float(row["share"]),
                   scores=arrays["share_scores"])


@dataclass(frozen=True)
class ShareSettings:
    looks: int = 3


class ShareMethod(PruningMethod):
    """Magnitude pruning that reports `looks` steps per layer, with a cost and a group of its own."""

    name = "share-toy"
    description = "magnitude, looked at in steps"
    settings_type = ShareSettings
    step_type = ShareStep
    solve_factorisations = 7.5
    groups = {"share": "Share looks"}
    parameters = (Parameter("looks", "looks", "Looks", "Steps per layer.", int, "share", ("--looks",),
                            path="looks", low=1, high=10, step=1),)

    def trace_length(self, settings: ShareSettings) -> int:
        return settings.looks

    def decide(self, problem: LayerProblem, settings: ShareSettings, layer: int,
               on_step: Callable[[Any], None] | None = None,
               cancel: threading.Event | None = None) -> LayerDecision:
        scores = magnitude_scores(problem).float().cpu().numpy()
        for look in range(1, settings.looks + 1):
            if on_step is not None:
                on_step(ShareStep(layer=layer, iteration=look, share=look / settings.looks, scores=scores * look))
        return magnitude(problem)


class ToyConfig(LlamaConfig):
    model_type = "spap-toy-family"


class ToyForCausalLM(LlamaForCausalLM):
    config_class = ToyConfig


class ToyAdapter(LlamaAdapter):
    model_types = ("spap-toy-family",)
    families = "Toy"


@pytest.fixture()
def toy_method(monkeypatch) -> ShareMethod:
    method = ShareMethod()
    monkeypatch.setitem(METHODS, method.name, method)
    return method


@pytest.fixture()
def toy_family(monkeypatch) -> LoadedModel:
    """A tiny model of a model type transformers and the adapters learn here (both undone after the test)."""
    monkeypatch.setattr(CONFIG_MAPPING, "_extra_content", dict(CONFIG_MAPPING._extra_content))
    monkeypatch.setattr(MODEL_FOR_CAUSAL_LM_MAPPING, "_extra_content", dict(MODEL_FOR_CAUSAL_LM_MAPPING._extra_content))
    AutoConfig.register(ToyConfig.model_type, ToyConfig)
    AutoModelForCausalLM.register(ToyConfig, ToyForCausalLM)
    monkeypatch.setattr(adapters, "ADAPTERS", (*adapters.ADAPTERS, ToyAdapter))
    dense = tiny_llama()
    shape = {key: value for key, value in dense.config.to_dict().items() if key != "model_type"}
    model = ToyForCausalLM(ToyConfig.from_dict(shape))
    model.load_state_dict(dense.state_dict())
    model.eval()
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), source="toy", description="tiny toy family",
                       family=model_adapter(model))


def test_a_registered_method_and_family_prune_save_and_read_back_end_to_end(toy_method, toy_family, tmp_path):
    assert isinstance(toy_family.family, ToyAdapter)
    settings = PruneSettings(method=toy_method.name, sparsity=0.25, options=ShareSettings(looks=2))
    experiment = run_experiment(toy_family, CALIBRATION, EVALUATION, settings)
    result = experiment.result
    assert len(result.trace) == 2 * len(result.layers)
    assert all(type(step) is ShareStep for step in result.trace)

    folder = write_run(tmp_path / "run", experiment.record(toy_family), result)
    with open(folder / "trace.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames or ()) == ShareStep.columns
    with np.load(folder / ARRAYS_FILE) as arrays:
        assert arrays["share_scores"].shape == (len(result.layers), 2, result.layers[0].width)
        assert "soft_masks" not in arrays
    record, stored = read_run(folder)
    assert record["method"] == toy_method.name and stored.settings == result.settings
    assert [type(step) for step in stored.trace] == [ShareStep] * len(result.trace)
    for original, back in zip(result.trace, stored.trace, strict=True):
        assert (back.layer, back.iteration, back.share) == (original.layer, original.iteration, original.share)
        np.testing.assert_array_equal(back.scores, original.scores)

    assert result.model is not None
    save_pruned(result.model, toy_family.tokenizer, tmp_path / "model")
    reloaded = load_pruned(tmp_path / "model", torch.float32, torch.device("cpu"))
    assert isinstance(model_adapter(reloaded), ToyAdapter)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(EVALUATION).logits, result.model(EVALUATION).logits)


def test_a_method_without_steps_reads_back_an_empty_trace_whatever_columns_its_record_holds(tiny, tmp_path):
    """A baseline's trace is empty: its record reads back the same whether its trace file holds
    only the step columns every method has or a wider header with empty arrays beside it."""
    result = prune_model(tiny, CALIBRATION, PruneSettings(method="flap", sparsity=0.25, head_sparsity=0.5))
    record = {"method": "flap", "sparsity": 0.25, "settings": asdict(result.settings), "timings": result.timings,
              "params_before": result.params_before, "params_after": result.params_after,
              "calibration_tokens": result.calibration_tokens, "ppl": 12.5, "ppl_dense": 11.0, "eval_tokens": 64,
              "eval_windows": 2, "eval_len": 32}
    assert result.heads is not None
    record["heads"] = {"layout": asdict(result.heads.layout), "head_dim": result.heads.head_dim}
    folder = write_run(tmp_path / "run", record, result)
    assert (folder / "trace.csv").read_text().splitlines() == ["layer,iteration"]
    _, stored = read_run(folder)
    wider = "layer,iteration,rho,objective,violation,marked,n_prune,mask_mean,readout_gap\n"
    for prefix in ("", HEADS_PREFIX):
        (folder / f"{prefix}trace.csv").write_text(wider)
    with np.load(folder / ARRAYS_FILE) as arrays:
        kept = dict(arrays)
    empty = {"soft_masks": np.zeros((0, 0, 0), np.float32), "column_norms": np.zeros((0, 0, 0), np.float32),
             "trace_widths": np.zeros(0, np.int64)}
    np.savez_compressed(folder / ARRAYS_FILE, **kept, **empty, **{HEADS_PREFIX + k: v for k, v in empty.items()})
    _, wide = read_run(folder)
    assert stored.trace == wide.trace == [] and stored.heads is not None and wide.heads is not None
    assert stored.heads.trace == wide.heads.trace == []
    for first, second in zip(stored.layers, wide.layers, strict=True):
        np.testing.assert_array_equal(first.keep, second.keep)


def test_spap_writes_its_trace_in_the_columns_and_arrays_its_records_have_always_held(tiny, tmp_path):
    result = prune_model(tiny, CALIBRATION, PruneSettings(sparsity=0.25))
    record = {"method": "spap", "sparsity": 0.25, "settings": asdict(result.settings), "timings": result.timings,
              "params_before": result.params_before, "params_after": result.params_after,
              "calibration_tokens": result.calibration_tokens, "ppl": 12.5, "ppl_dense": 11.0, "eval_tokens": 64,
              "eval_windows": 2, "eval_len": 32}
    folder = write_run(tmp_path / "run", record, result)
    assert (folder / "trace.csv").read_text().splitlines()[0] == \
        "layer,iteration,rho,objective,violation,marked,n_prune,mask_mean,readout_gap"
    with np.load(folder / ARRAYS_FILE) as arrays:
        assert list(arrays)[:3] == ["soft_masks", "column_norms", "trace_widths"]


def test_the_estimate_counts_the_solves_the_method_declares(toy_method):
    speed = ModelSpeed(tokens_per_s=1000.0, step_s=0.01, factorisation_s=0.05, layers=10)
    text = TextChoice(kind="file", path="x.txt")
    data = DataSpec(calibration=text, evaluation=text, nsamples=8, seqlen=250, eval_windows=4, eval_len=250,
                    batch_size=4)

    def solves(method: str) -> float:
        request = RunRequest(settings=PruneSettings(method=method), seed=0, data=data)
        return run_seconds(speed, request) - run_seconds(ModelSpeed(1000.0, 0.01, 0.0, 10), request)

    assert solves(toy_method.name) == pytest.approx(7.5 * 10 * 0.05)
    for baseline in ("magnitude", "wanda-sp", "flap", "fasp", "obs", "taylor"):  # FLAP's measured cost, for each
        assert solves(baseline) == pytest.approx(1.05 * 10 * 0.05)


def test_every_registered_method_declares_its_solve_cost_and_step_type():
    """The app estimates every run before it starts: a method registered without its cost would
    fail there, so the registry's methods all declare one (a positive number of factorisations)."""
    for method in METHODS.values():
        assert method.solve_factorisations > 0, method.name
        assert issubclass(method.step_type, MethodStep), method.name


def test_the_parameter_groups_are_the_runs_then_each_methods_own_then_the_allocations_then_the_datas():
    assert list(GROUPS) == ["run", "penalty", "selection", "refit", "altmin", "flap", "obs", "taylor", "allocation",
                            "recovery", "calibration", "evaluation", "latency"]
    with_toy = parameter_groups([*METHODS.values(), ShareMethod()])
    assert list(with_toy)[-6:] == ["share", "allocation", "recovery", "calibration", "evaluation", "latency"]
    assert with_toy["share"] == "Share looks"


@dataclass(frozen=True)
class FrontLoadedSettings:
    factor: float = 2.0


class FrontLoadedAllocation(Allocation):
    """The first layer prunes `factor` times the run's share, the others the share itself."""

    name = "front-loaded"
    description = "the first layer prunes a multiple of the share"
    settings_type = FrontLoadedSettings

    def counts(self, widths: list[int], sparsity: float, dense: DenseMeasurements,
               settings: FrontLoadedSettings) -> list[int]:
        return [prune_count(width, settings.factor * sparsity if index == 0 else sparsity)
                for index, width in enumerate(widths)]


def test_the_walk_prunes_each_layer_as_many_units_as_the_allocation_says_with_its_settings(tiny, monkeypatch):
    strategy = FrontLoadedAllocation()
    monkeypatch.setitem(ALLOCATION_STRATEGIES, strategy.name, strategy)
    settings = PruneSettings(method="magnitude", sparsity=0.25, allocation=strategy.name)
    assert settings.allocation_options == FrontLoadedSettings()
    pruned = [layer.width - len(layer.keep) for layer in prune_model(tiny, CALIBRATION, settings).layers]
    assert pruned == [64, 32]  # 128 channels a layer: half of the first, a quarter of the second
    thrice = replace(settings, allocation_options=FrontLoadedSettings(factor=3.0))
    assert [layer.width - len(layer.keep) for layer in prune_model(tiny, CALIBRATION, thrice).layers] == [96, 32]


def test_each_allocation_and_method_declares_the_windows_it_backpropagates_through():
    backward = {name: strategy.gradient_windows(strategy.default_settings())
                for name, strategy in ALLOCATION_STRATEGIES.items()}
    assert {name: windows for name, windows in backward.items() if windows} == {"fisher": FISHER_WINDOWS}
    measuring = {name: method.gradient_windows(method.default_settings()) for name, method in METHODS.items()}
    assert {name: windows for name, windows in measuring.items() if windows} == {"taylor": FISHER_WINDOWS}
    assert METHODS["taylor"].gradient_windows(TaylorSettings(windows=3)) == 3
    with pytest.raises(SpapInputError, match="Unknown allocation 'owl'"):
        allocation_strategy("owl")
    with pytest.raises(SpapInputError, match="at least 10%"):
        allocation_strategy("fisher").check(0.95)
    allocation_strategy("global").check(0.95)
    assert PruneSettings(allocation="global").allocation_strategy is ALLOCATION_STRATEGIES["global"]


def test_the_run_records_and_the_charts_read_traces_without_naming_a_method():
    """Run records and the app's trace tables go through the step type's contract, so neither
    imports a method's module for its step fields."""
    for path in ("spap_core/storage/runs.py", "spap_service/analysis.py", "spap_core/methods/trace.py"):
        source = (REPO / path).read_text()
        assert "methods.spap" not in source and "SpapStep" not in source, path
