"""The sequential pruning walk: layer by layer, calibration activations flow through the layers
already pruned, and each prunable part of a layer (spap_core.models.adapters.parts: its attention
heads with a head sparsity, then its MLP channels) goes through the same steps: capture (the
statistics of its output projection's input), decide (the method), reconstruct and recover (the
optional weight updates), shrink. The layer's last part also propagates: its pruned output, added
to the residual stream, becomes the next layer's input; an earlier part's pruned output is
recomputed by the next part's capture, so the MLP's statistics are those of the pruned attention's
output. Only one layer's activations live at a time. The family's adapter says where the parts
are; the method says what it needs."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn
from transformers import Cache, PreTrainedModel

from spap_core.errors import NumericalError, PruningCancelled, SpapInputError
from spap_core.methods.allocation import Allocation, dense_channel_scores
from spap_core.methods.altmin import alternating_minimization
from spap_core.methods.base import MethodStep, Recovery
from spap_core.methods.baselines import baseline_scores
from spap_core.methods.registry import PruneSettings, head_settings
from spap_core.methods.sensitivity import channel_fisher
from spap_core.models.adapters import MlpChannels, ModelAdapter, PrunablePart
from spap_core.models.adapters.projections import projection_shape, projection_weight
from spap_core.models.loading import LoadedModel
from spap_core.models.offload import OffloadStore, is_dispatched, materialized, move_to
from spap_core.models.shrink import finalize_config, shrink_part
from spap_core.problem.layout import HeadLayout
from spap_core.problem.objective import LayerDecision, LayerProblem, prune_count
from spap_core.problem.statistics import GramAccumulator
from spap_core.system.memory import release_freed_memory

LayerCallback = Callable[[int, int], None]
StepCallback = Callable[[MethodStep], None]


@dataclass
class LayerRecord:
    """What the app and reports need of one pruned layer."""

    layer: int
    width: int
    keep: np.ndarray
    scores: dict[str, np.ndarray]  # every baseline's metric plus the run's own (spap_first/spap_last)
    objective: float | None
    dense_objective: float  # ½‖Y‖²: the error of pruning everything, a scale for `objective`
    # ‖W_down[:,i]‖ before ("dense") and after ("final": 0 for a pruned channel) the method, so a
    # page can show how the kept columns compensate; empty for a run saved before they were kept.
    output_column_norms: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def relative_error(self) -> float:
        """objective ÷ ½‖Y‖²: 0 = the layer reproduces its dense output, 1 = as bad as no MLP."""
        if self.objective is None or self.dense_objective <= 0:
            return float("nan")
        return self.objective / self.dense_objective


@dataclass
class HeadPruning:
    """The heads side of a run: the layout every layer keeps, and per layer what the method decided
    (a LayerRecord over heads: width = heads, keep = kept heads) and, for SPAP, its trace."""

    layout: HeadLayout
    head_dim: int
    layers: list[LayerRecord] = field(default_factory=list)
    trace: list[MethodStep] = field(default_factory=list)


@dataclass
class PruneResult:
    model: PreTrainedModel | None  # None for a run read back from disk: its weights are not kept there
    settings: PruneSettings
    layers: list[LayerRecord]
    trace: list[MethodStep]  # the method's own step records (SPAP: one per ρ iteration)
    timings: dict[str, float]
    params_before: int
    params_after: int
    calibration_tokens: int
    heads: HeadPruning | None = None  # None: the attention was not pruned

    @property
    def mean_layer_error(self) -> float:
        """Mean over layers of objective ÷ ½‖Y‖²: every layer counts alike, so it agrees with a
        per-layer chart (the headline the app shows)."""
        errors = [layer.relative_error for layer in self.layers if not np.isnan(layer.relative_error)]
        return float(np.mean(errors)) if errors else float("nan")

    @property
    def relative_error(self) -> float:
        """Σ layer objective ÷ Σ ½‖Y‖² (pooled): 0 = every layer reproduces its dense output, 1 = as
        bad as dropping the MLP altogether. Layers with large outputs dominate it (in SmolLM2 three
        layers do), which is why the app leads with `mean_layer_error`; the benchmarks' tables use this."""
        dense = sum(layer.dense_objective for layer in self.layers)
        achieved = sum(layer.objective or 0.0 for layer in self.layers)
        return achieved / dense if dense > 0 else float("nan")


def check_prunable(loaded: LoadedModel, settings: PruneSettings) -> None:
    """The refusals that the model's config decides for these settings (a bias the family cannot
    store, corrected targets it cannot take, a sparsity that prunes nothing or everything of a
    layer, a method or an allocation that backpropagates through a model offloaded with a device
    map): the walk and plan_run share them, before any forward pass."""
    family, method, options = loaded.family, settings.implementation, settings.options
    layers = family.decoder_layers(loaded.model)
    if settings.adds_output_bias and not family.mlp_channels.stores_output_bias:
        raise SpapInputError(
            f"'{settings.method}' adds a down_proj bias, which model type '{family.model_type}' cannot "
            "store; run it through run_experiment (which picks the no-bias variant) or turn bias compensation off "
            "(--no-bias)."
        )
    if method.target_correction(options) > 0 and not family.mlp_output_is_residual(layers[0]):
        raise SpapInputError(
            f"Error-correcting targets need the MLP output to enter the residual stream directly, which "
            f"is not the case for model type '{family.model_type}'; set the target correction to 0."
        )
    if settings.allocation_strategy.gradient_windows(settings.allocation_options) and is_dispatched(loaded.model):
        raise SpapInputError(f"The {settings.allocation.capitalize()} allocation backpropagates through the whole "
                             "model, which an offloaded model cannot hold; choose the 'global' allocation (or "
                             "'uniform') for it.")
    if method.gradient_windows(options) and is_dispatched(loaded.model):
        raise SpapInputError(f"Method '{settings.method}' backpropagates through the whole model, which an offloaded "
                             "model cannot hold; load it without --device-map, or choose another method.")
    head_layout(loaded, settings)
    for layer in layers:
        prune_count(family.mlp_channels.width(layer), settings.sparsity)


def head_layout(loaded: LoadedModel, settings: PruneSettings) -> HeadLayout | None:
    """The heads every layer keeps (None: heads untouched), after the refusals of a head sparsity
    that this family, method or run cannot use."""
    if settings.head_sparsity == 0:
        return None
    heads_part = loaded.family.attention_heads
    heads, kv_heads, head_dim = heads_part.shape(loaded.model)
    refusal = settings.implementation.head_refusal(settings.options)
    if refusal is not None:
        raise SpapInputError(f"Attention heads with {settings.method}: {refusal}.")
    if settings.implementation.target_correction(settings.options) > 0:
        raise SpapInputError("Error-correcting targets (β > 0) are built for the MLP's output; set the target "
                             "correction to 0 to prune attention heads.")
    if is_dispatched(loaded.model):
        raise SpapInputError("Attention heads of an offloaded model (a device map) are not pruned; load it without "
                             "--device-map, or set the head sparsity to 0.")
    return HeadLayout.for_sparsity(heads, kv_heads, settings.head_sparsity,
                                   lambda layout: heads_part.takes(layout.kept, layout.kv_kept, head_dim))


def parameter_count(model: nn.Module) -> int:
    """The model's parameters, each tied weight counted once: accelerate's hooks replace an
    offloaded weight by a tensor of its own, so a tied head would otherwise count twice."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {}) if _ties_weights(model) else set()
    return sum(p.numel() for name, p in model.named_parameters() if name not in tied)


def _ties_weights(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False))


# ---------------------------------------------------------------------------------- the walk


def prune_model(
    loaded: LoadedModel,
    calibration: torch.Tensor,
    settings: PruneSettings,
    *,
    seed: int = 0,
    batch_size: int = 4,
    inplace: bool = False,
    on_layer: LayerCallback | None = None,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> PruneResult:
    """Prune `loaded.model` (a deep copy unless inplace) with the given settings on calibration
    token windows [N, L]. on_layer(i, L) fires after each layer; on_step per step the method
    reports (SPAP: per ρ iteration); setting `cancel` stops the run within one step (PruningCancelled)."""
    check_prunable(loaded, settings)  # refusals first, before the copy
    if not inplace and is_dispatched(loaded.model):
        raise SpapInputError("A model placed with a device map (offloaded layers) is pruned in place; a copy "
                             "would need the memory the map avoids.")
    model = loaded.model if inplace else copy.deepcopy(loaded.model)
    layout = head_layout(loaded, settings)
    heads = None if layout is None else HeadPruning(layout, loaded.family.attention_heads.shape(loaded.model)[2])
    walk = _Walk(loaded.family, settings, seed, cancel, on_step, heads)
    layers = loaded.family.decoder_layers(model)
    params_before = parameter_count(model)
    store = OffloadStore(loaded.offload_folder)
    with torch.no_grad():
        streams, n_prune = walk.start(model, layers, calibration, batch_size, loaded.device)
        for index, layer in enumerate(layers):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled(f"cancelled before layer {index}")
            with materialized(layer, f"layer{index}", store, loaded.device) as layer_device:
                streams = walk.layer(index, layer, streams.to(layer_device), n_prune[index])
            if on_layer is not None:
                on_layer(index + 1, len(layers))
    finalize_config(model, loaded.family)
    return PruneResult(model=model, settings=settings, layers=walk.records, trace=walk.trace, timings=walk.timings,
                       params_before=params_before, params_after=parameter_count(model),
                       calibration_tokens=int(calibration.numel()), heads=heads)


@dataclass
class _Streams:
    """The calibration chunks entering the next layer on the pruned model (`hidden`) and, for
    corrected targets, on the dense model (`dense`), with the positional and keyword arguments each
    layer is called with (rotary embeddings, masks)."""

    hidden: list[torch.Tensor]
    dense: list[torch.Tensor]
    layer_arguments: list[tuple[tuple, dict]]

    def to(self, device: torch.device) -> _Streams:
        return _Streams([c.to(device) for c in self.hidden], [c.to(device) for c in self.dense],
                        self.layer_arguments)


@dataclass
class _Capture:
    """One part's capture: its statistics and what the later steps need per calibration chunk."""

    stats: GramAccumulator | None  # None once it became the part's problem
    activations: list[torch.Tensor]  # Z, the output projection's input (only for a propagating part)
    residual_bases: list[torch.Tensor]  # the layer's output with the part contributing nothing (idem)
    mlp_inputs: list[torch.Tensor]  # only for a recovery step
    targets: list[torch.Tensor]  # only for corrected targets


@dataclass
class _PartStep:
    """One prunable part's share of every layer: the settings its method runs with (the heads'
    drop an output bias their class cannot store), the corrected targets and recovery it takes
    (the MLP channels' only: both are built for the MLP's output and input projections), the layout
    its kept units must form (heads), whether its pruned output is propagated (the layer's last
    part), where its records and trace go, and the timing every phase of it adds to (None: each
    phase its own)."""

    part: PrunablePart
    settings: PruneSettings
    records: list[LayerRecord]
    trace: list[MethodStep]
    correction: float = 0.0
    recovery: Recovery | None = None
    layout: HeadLayout | None = None
    propagates: bool = False
    # Per layer, the units' importances the method measured on the dense model (None: it measures none).
    importances: list[torch.Tensor] | None = None
    timing: str | None = None
    activations: str = "calibration"  # how a refusal of non-finite statistics names them


class _Walk:
    """The per-layer steps of one pruning run, with their timings, records and trace."""

    def __init__(self, family: ModelAdapter, settings: PruneSettings, seed: int, cancel: threading.Event | None,
                 on_step: StepCallback | None, heads: HeadPruning | None = None) -> None:
        self.family, self.settings, self.seed, self.cancel, self.on_step = family, settings, seed, cancel, on_step
        self.correction = settings.implementation.target_correction(settings.options)
        self.allocation: Allocation = settings.allocation_strategy
        self.timings = {"capture": 0.0, "solve": 0.0, "altmin": 0.0, "propagate": 0.0}
        self.records: list[LayerRecord] = []
        self.trace: list[MethodStep] = []
        self.steps: list[_PartStep] = []
        if heads is not None:
            self.timings["heads"] = 0.0
            self.steps.append(_PartStep(family.attention_heads, head_settings(settings, family), heads.layers,
                                        heads.trace, layout=heads.layout, timing="heads",
                                        activations="attention"))
        self.steps.append(_PartStep(family.mlp_channels, settings, self.records, self.trace,
                                    correction=self.correction, recovery=settings.recovery, propagates=True))

    @contextlib.contextmanager
    def _timed(self, phase: str, step: _PartStep | None = None) -> Iterator[None]:
        """Time a phase of a layer, then give what it freed back to the system (half a millisecond):
        a phase's temporaries (the Gram's solves, the recovery's activations) left in glibc's heap
        would otherwise add to the next phase's, and the peak of a --low-memory run is the sum."""
        started = time.perf_counter()
        yield
        self.timings[phase if step is None or step.timing is None else step.timing] += time.perf_counter() - started
        release_freed_memory()

    def _step_keeper(self, trace: list[MethodStep]) -> StepCallback:
        def keep(step: MethodStep) -> None:
            trace.append(step)
            if self.on_step is not None:
                self.on_step(step)
        return keep

    def start(self, model: nn.Module, layers: nn.ModuleList, calibration: torch.Tensor, batch_size: int,
              device: torch.device) -> tuple[_Streams, list[int]]:
        """The inputs of layer 0 and λ per layer once the allocation has spread the budget; a
        method that measures its units on the dense model measures them here, into each part step."""
        with self._timed("capture"):
            chunks = [c.to(device) for c in calibration.split(batch_size)]
            hidden, arguments = _layer_inputs_and_arguments(self.family.decoder(model), layers, chunks)
            dense = _DenseModel(model, self.family, layers, hidden, arguments, calibration, self.cancel)
            n_prune = self.allocation.counts([self.family.mlp_channels.width(layer) for layer in layers],
                                             self.settings.sparsity, dense, self.settings.allocation_options)
            method = self.settings.implementation
            # before any layer is pruned: what the method measures is the dense model's
            if method.gradient_windows(self.settings.options):
                measured = method.unit_importances(model, layers, [step.part for step in self.steps], calibration,
                                                   self.settings.options, self.cancel)
                for step, importances in zip(self.steps, measured):
                    step.importances = importances
        return _Streams(hidden, list(hidden) if self.correction > 0 else [], arguments), n_prune

    def layer(self, index: int, layer: nn.Module, streams: _Streams, n_prune: int) -> _Streams:
        """Every part's steps, in order, for one (materialised) layer; `n_prune` is the MLP's λ
        (the heads' follows from their layout)."""
        args, kwargs = move_to(streams.layer_arguments[index], streams.hidden[0].device)
        for step in self.steps:
            count = n_prune if step.layout is None else step.layout.removed
            streams = self._prune_part(step, index, layer, streams, count, args, kwargs)
        return streams

    def _prune_part(self, step: _PartStep, index: int, layer: nn.Module, streams: _Streams, n_prune: int,
                    args: tuple, kwargs: dict) -> _Streams:
        """capture → decide → reconstruct → recover → shrink (→ propagate) for one part of the layer."""
        settings = step.settings
        with self._timed("capture", step):
            if step.correction > 0:  # the dense model's own output of this layer, on the dense stream
                streams.dense = [_call_layer(layer, chunk, args, kwargs) for chunk in streams.dense]
            capture = self._capture(step, layer, streams, args, kwargs)
        with self._timed("solve", step):
            problem = self._problem(step, index, layer, capture, n_prune)
            decision = settings.implementation.decide(problem, settings.options, index,
                                                      on_step=self._step_keeper(step.trace), cancel=self.cancel)
            if settings.reconstruction is not None:
                decision = settings.reconstruction.apply(problem, decision)
        if step.recovery is not None:
            with self._timed("altmin", step):
                decision = self._recover(index, layer, capture, decision, step)
        with self._timed("propagate", step):
            step.records.append(_layer_record(index, problem, decision))
            shrink_part(step.part, layer, problem.kept_units(decision.keep.cpu()), decision)
            if step.propagates:
                to_residual = self.family.mlp_output_to_residual(layer)
                outputs = _pruned_outputs(step.part, layer, decision, capture, self.family.mlp_channels)
                # (OPT's layer flattens the tokens before its MLP: outputs come back in the stream's shape)
                streams.hidden = [base + to_residual(output.reshape(base.shape))
                                  for base, output in zip(capture.residual_bases, outputs)]
        return streams

    def _capture(self, step: _PartStep, layer: nn.Module, streams: _Streams, args: tuple, kwargs: dict) -> _Capture:
        """Run the layer on every chunk with the part's output projection recording its input Z
        instead of computing (so the dense output is never computed unless targets differ from
        W₀Z): the statistics, and for a propagating part the residual stream every variant of its
        output is added to; any other part's recorder ends the layer's forward there."""
        part = step.part
        stats = GramAccumulator()
        capture = _Capture(stats, [], [], [], [])
        to_residual = self.family.mlp_output_to_residual(layer)
        native_bias = part.weights(layer).output_bias
        recorded_input = self.family.mlp_channels.input_projections(layer)[0] if step.recovery is not None else None
        with _units_recorded(part, layer, step.propagates, recorded_input) as recorded:
            zero_contribution = to_residual(recorded.zero_output()) if step.propagates else None
            for chunk_index, chunk in enumerate(streams.hidden):
                base = None
                try:
                    output = _call_layer(layer, chunk, args, kwargs)
                    if zero_contribution is not None:
                        base = output - zero_contribution
                except _StopForward:
                    pass
                z = _recorded(recorded.activations, part.description)
                target = None
                if step.correction > 0:  # W₀Z, plus part of the error the pruned stream has accumulated
                    assert base is not None  # a part with corrected targets propagates
                    full = recorded.output_projection(z)
                    stream = base + to_residual(full.reshape(base.shape))
                    target = full + step.correction * (streams.dense[chunk_index] - stream).reshape(full.shape)
                    if native_bias is not None:  # the problem's targets leave out the family's own bias
                        target = target - native_bias
                    capture.targets.append(target)
                if recorded_input is not None:
                    capture.mlp_inputs.append(_recorded(recorded.part_input, "first MLP input projection"))
                stats.add(z, target)
                if base is not None:
                    capture.activations.append(z)
                    capture.residual_bases.append(base)
        return capture

    def _problem(self, step: _PartStep, index: int, layer: nn.Module, capture: _Capture, n_prune: int) -> LayerProblem:
        assert capture.stats is not None  # each capture becomes one problem
        problem = capture.stats.problem(step.part.weights(layer).output, n_prune,
                                        group_size=step.part.unit_columns(layer), layout=step.layout)
        if not _all_finite(problem.gram, problem.cross):
            raise NumericalError(
                f"Pruning stopped: the {step.activations} activations of layer {index} contain NaN or inf "
                "(the model itself overflows on this text; try float32 or another calibration text).")
        capture.stats = None  # the Gram lives on in the problem; the accumulator's copy can go
        if step.importances is not None:
            problem.dense_importance = step.importances[index]
        return problem

    def _recover(self, index: int, layer: nn.Module, capture: _Capture, decision: LayerDecision,
                 step: _PartStep) -> LayerDecision:
        """Alternating minimization of the kept MLP weights (the recovery refits the MLP's input
        projections through its function). Without corrected targets it fits the dense output
        W₀Z, computed once here for the tokens it samples and for its refit."""
        assert step.recovery is not None  # only a step with a recovery recovers
        mlp = self.family.mlp_channels
        dense = mlp.weights(layer)
        if step.correction > 0:
            targets = torch.cat(capture.targets)
        else:
            targets = mlp.output_projection(layer)(torch.cat(capture.activations))
            if dense.output_bias is not None:
                targets = targets - dense.output_bias
        with torch.enable_grad():
            return alternating_minimization(
                decision, torch.cat(capture.mlp_inputs), targets, dense, mlp.function(layer),
                step.recovery.altmin, step.recovery.refit, seed=self.seed + index, cancel=self.cancel)


# ---------------------------------------------------------------------------------- the steps' parts


class _StopForward(Exception):
    pass


def _pass_through(hidden_states: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
    return hidden_states


def _without_cache(value):
    return None if isinstance(value, Cache) else value


def _layer_inputs_and_arguments(decoder: nn.Module, layers: nn.ModuleList, chunks: list[torch.Tensor]):
    """Hidden states entering layer 0 for every chunk, and the positional and keyword arguments
    (rotary embeddings, masks) each layer is called with. Those depend on positions only, so they
    are recorded once on a single window and broadcast over any batch size."""
    arguments: list[tuple[tuple, dict]] = [((), {}) for _ in layers]

    def record(index):
        def hook(_module, args, kwargs):
            arguments[index] = (tuple(_without_cache(a) for a in args[1:]),
                                {k: _without_cache(v) for k, v in kwargs.items() if k != "hidden_states"})
        return hook

    def stop_after_last(_module, _args, _kwargs):
        raise _StopForward

    # The layers themselves are not needed for this pass: each returns its input unchanged, and
    # the pass stops once the last layer has shown its arguments (no lm_head, no attention).
    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_pre_hook(stop_after_last, with_kwargs=True))
    own_forwards = [layer.__dict__.get("forward") for layer in layers]  # e.g. an accelerate wrapper
    for layer in layers:
        layer.forward = _pass_through
    try:
        decoder(input_ids=chunks[0][:1], use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        for layer, own_forward in zip(layers, own_forwards):
            if own_forward is None:
                del layer.forward
            else:
                layer.forward = own_forward
    for _, kwargs in arguments:
        for key in ("past_key_values", "past_key_value", "cache", "layer_past"):
            if key in kwargs:
                kwargs[key] = None
        kwargs["use_cache"] = False

    inputs: list[torch.Tensor] = []

    def grab(_module, args, kwargs):
        inputs.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for chunk in chunks:
            try:
                decoder(input_ids=chunk, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return inputs, arguments


@dataclass
class _DenseModel:
    """The model before the walk prunes it, with the inputs of its first layer: what an allocation
    strategy measures (spap_core.methods.allocation.DenseMeasurements), each only when asked for."""

    model: nn.Module
    family: ModelAdapter
    layers: nn.ModuleList
    hidden: list[torch.Tensor]
    arguments: list[tuple[tuple, dict]]
    calibration: torch.Tensor
    cancel: threading.Event | None

    def channel_scores(self) -> list[np.ndarray]:
        """Every channel's score, from one pass of the calibration windows through the layers;
        offloaded layers run through their own hooks."""
        def run_layer(layer: nn.Module, index: int, chunks: list[torch.Tensor]):
            args, kwargs = self.arguments[index]
            outputs = [_call_layer(layer, chunk, args, kwargs) for chunk in chunks]
            return outputs, projection_weight(self.family.mlp_channels.output_projection(layer))

        outputs = [self.family.mlp_channels.output_projection(layer) for layer in self.layers]
        return dense_channel_scores(self.layers, outputs, self.hidden, run_layer)

    def channel_fisher(self) -> list[np.ndarray]:
        outputs = [self.family.mlp_channels.output_projection(layer) for layer in self.layers]
        return channel_fisher(self.model, outputs, self.calibration, self.cancel)


DenseLayerVisit = Callable[[int, nn.Module, GramAccumulator, GramAccumulator], None]


def dense_layer_statistics(loaded: LoadedModel, calibration: torch.Tensor, visit: DenseLayerVisit,
                           batch_size: int = 4) -> None:
    """Layer by layer on the dense model, in one forward pass of the calibration windows: the
    statistics of the inputs of the attention's and of the MLP's output projection, handed to
    `visit(index, layer, attention, mlp)` and then dropped, so one layer's Grams live at a time
    (what spap_core.pipeline.split weighs a parameter budget's split with)."""
    family, model = loaded.family, loaded.model
    layers = family.decoder_layers(model)
    with torch.no_grad():
        hidden, arguments = _layer_inputs_and_arguments(
            family.decoder(model), layers, [c.to(loaded.device) for c in calibration.split(batch_size)])
        for index, layer in enumerate(layers):
            args, kwargs = arguments[index]
            stats = (GramAccumulator(), GramAccumulator())
            projections = [part.output_projection(layer) for part in (family.attention_heads, family.mlp_channels)]
            handles = [projection.register_forward_pre_hook(lambda _module, inputs, own=own: own.add(inputs[0]))
                       for projection, own in zip(projections, stats)]
            try:
                hidden = [_call_layer(layer, chunk, args, kwargs) for chunk in hidden]
            finally:
                for handle in handles:
                    handle.remove()
            visit(index, layer, *stats)


def _all_finite(*tensors: torch.Tensor) -> bool:
    """A NaN or ±inf entry makes the sum non-finite; one reduction, where isfinite() would
    allocate a boolean copy of the n² Gram."""
    return all(torch.isfinite(tensor.sum()) for tensor in tensors)


def _call_layer(layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _recorded(value: torch.Tensor | None, module: str) -> torch.Tensor:
    """What a recorder took from the layer's forward call, refused when there is none: the forward
    never called `module`, so the layer is not what the family's adapter describes."""
    if value is None:
        raise SpapInputError(f"The decoder layer's forward did not call its {module}, which the capture records; "
                             "this model cannot be pruned here.")
    return value


class _UnitRecorder(nn.Module):
    """Stands in for a part's output projection while a layer is captured: records its input (the
    units' activations Z). For a propagating part it returns zeros, so the dense output projection
    is not computed at all and the layer's output is its residual base; otherwise the layer's
    forward stops there. With `part_input` it also records that module's input (the MLP's input,
    for a recovery step)."""

    def __init__(self, output_projection: nn.Module, propagates: bool, part_input: nn.Module | None) -> None:
        super().__init__()
        self.output_projection = output_projection
        self.out_features = projection_shape(output_projection)[0]
        self.propagates = propagates
        self.activations: torch.Tensor | None = None  # of the latest call
        self.part_input: torch.Tensor | None = None
        self._handle = None if part_input is None else part_input.register_forward_pre_hook(self._record_input)

    def _record_input(self, _module: nn.Module, args: tuple) -> None:
        self.part_input = args[0]

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        self.activations = activations
        if not self.propagates:
            raise _StopForward
        return activations.new_zeros(*activations.shape[:-1], self.out_features)

    def zero_output(self) -> torch.Tensor:
        weight = cast(torch.Tensor, self.output_projection.weight)
        return torch.zeros(1, self.out_features, dtype=weight.dtype, device=weight.device)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.remove()


@contextlib.contextmanager
def _units_recorded(part: PrunablePart, layer: nn.Module, propagates: bool,
                    part_input: nn.Module | None) -> Iterator[_UnitRecorder]:
    original = part.output_projection(layer)
    recorder = _UnitRecorder(original, propagates, part_input)
    part.set_output_projection(layer, recorder)
    try:
        yield recorder
    finally:
        part.set_output_projection(layer, original)
        recorder.release()


def _layer_record(index: int, problem: LayerProblem, decision: LayerDecision) -> LayerRecord:
    """Per unit (channel or head): kept ones, scores, and the output projection's norms."""
    final = torch.zeros(problem.dense_output.shape[0], problem.width, dtype=torch.float32)
    final[:, decision.keep.cpu()] = decision.output_weight.float().cpu()
    return LayerRecord(
        layer=index, width=problem.units, keep=problem.kept_units(decision.keep.cpu()).numpy(),
        scores={**baseline_scores(problem), **decision.scores},
        objective=decision.objective, dense_objective=0.5 * problem.target_energy,
        output_column_norms={"dense": problem.unit_norms(problem.dense_output.float()).cpu().numpy(),
                           "final": problem.unit_norms(final).numpy()},
    )


def _pruned_outputs(part: PrunablePart, layer: nn.Module, decision: LayerDecision, capture: _Capture,
                    mlp: MlpChannels) -> list[torch.Tensor]:
    """The shrunk part's output on each calibration chunk. Its units' activations are the dense
    ones at the kept columns while the projections producing them are unchanged, or the ones the
    MLP's recovery computed for its last refit (or recomputes from its new input rows); either way
    only the (small) output projection needs computing."""
    output = part.output_projection(layer)
    activations = capture.activations
    if decision.kept_intermediates is not None:
        sizes = [z[..., 0].numel() for z in activations]
        kept = [h.reshape(*z.shape[:-1], -1) for h, z in zip(decision.kept_intermediates.split(sizes), activations)]
    elif decision.input_weights is not None:
        return [output(mlp.activations(layer, x)) for x in capture.mlp_inputs]
    else:
        kept = [z[..., decision.keep.to(z.device)] for z in activations]
    return [output(h) for h in kept]
