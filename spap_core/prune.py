"""The sequential pruning walk: layer by layer, calibration activations flow through the layers
already pruned, each layer's statistics are accumulated, a method decides, the layer is shrunk,
and its pruned output becomes the next layer's input. Only one layer's activations live at a time."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from spap_core.allocation import FISHER, GLOBAL, dense_channel_scores, fisher_counts, global_counts
from spap_core.errors import NumericalError, PruningCancelled, SpapInputError
from spap_core.methods.altmin import alternating_minimization
from spap_core.methods.baselines import baseline_scores
from spap_core.methods.problem import LayerDecision, LayerProblem, prune_count
from spap_core.methods.registry import PruneSettings
from spap_core.methods.spap import SpapStep
from spap_core.models import LoadedModel
from spap_core.offload import OffloadStore, is_dispatched, materialized, move_to, real_weight
from spap_core.sensitivity import channel_fisher
from spap_core.shrink import finalize_config, shrink_mlp
from spap_core.stats import GramAccumulator

LayerCallback = Callable[[int, int], None]


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
    down_column_norms: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def relative_error(self) -> float:
        """objective ÷ ½‖Y‖²: 0 = the layer reproduces its dense output, 1 = as bad as no MLP."""
        if self.objective is None or self.dense_objective <= 0:
            return float("nan")
        return self.objective / self.dense_objective


@dataclass
class PruneResult:
    model: nn.Module | None  # None for a run read back from disk: its weights are not kept there
    settings: PruneSettings
    layers: list[LayerRecord]
    trace: list[SpapStep]
    timings: dict[str, float]
    params_before: int
    params_after: int
    calibration_tokens: int

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


def _down_column_norms(problem: LayerProblem, decision: LayerDecision) -> dict[str, np.ndarray]:
    final = torch.zeros(problem.width, dtype=torch.float32)
    final[decision.keep.cpu()] = decision.down_weight.float().norm(dim=0).cpu()
    return {"dense": problem.dense_down.float().norm(dim=0).cpu().numpy(), "final": final.numpy()}


def prune_counts(loaded: LoadedModel, settings: PruneSettings) -> list[int]:
    """λ for every layer, after the refusals that the model's config decides for these settings
    (a bias the family cannot store, corrected targets it cannot take, a sparsity that prunes
    nothing or everything, a Fisher allocation an offloaded model cannot backpropagate through):
    the walk and plan_run share them, before any forward pass."""
    family, method, options = loaded.family, settings.implementation, settings.options
    layers = family.decoder_layers(loaded.model)
    if settings.adds_down_bias and not family.stores_down_bias:
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
    if settings.allocation == FISHER and is_dispatched(loaded.model):
        raise SpapInputError("The Fisher allocation backpropagates through the whole model, which an offloaded "
                             "model cannot hold; choose the 'global' allocation (or 'uniform') for it.")
    return [prune_count(family.mlp(layer).down_proj.in_features, settings.sparsity) for layer in layers]


class _StopForward(Exception):
    pass


def parameter_count(model: nn.Module) -> int:
    """The model's parameters, each tied weight counted once: accelerate's hooks replace an
    offloaded weight by a tensor of its own, so a tied head would otherwise count twice."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {}) if _ties_weights(model) else set()
    return sum(p.numel() for name, p in model.named_parameters() if name not in tied)


def _ties_weights(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False))


def _pass_through(hidden_states: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
    return hidden_states


def _layer_inputs_and_kwargs(model: nn.Module, layers: nn.ModuleList, chunks: list[torch.Tensor]):
    """Hidden states entering layer 0 for every chunk, and the keyword arguments (rotary
    embeddings, masks) each layer is called with. Those depend on positions only, so they are
    recorded once on a single window and broadcast over any batch size."""
    layer_kwargs: list[dict] = [{} for _ in layers]

    def record(index):
        def hook(_module, _args, kwargs):
            layer_kwargs[index] = {k: v for k, v in kwargs.items() if k not in {"hidden_states"}}
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
        model.get_decoder()(input_ids=chunks[0][:1], use_cache=False)
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
    for kwargs in layer_kwargs:
        for key in ("past_key_values", "past_key_value", "cache"):
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
                model.get_decoder()(input_ids=chunk, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return inputs, layer_kwargs


def _dense_channel_scores(family, layers: nn.ModuleList, hidden: list[torch.Tensor],
                          layer_kwargs: list[dict]) -> list[np.ndarray]:
    """Every channel's score on the dense model (spap_core.allocation), from one pass of the
    calibration windows through the layers; offloaded layers run through their own hooks."""
    def run_layer(layer: nn.Module, index: int, chunks: list[torch.Tensor]):
        outputs = [_call_layer(layer, chunk, layer_kwargs[index]) for chunk in chunks]
        return outputs, real_weight(family.mlp(layer).down_proj)

    return dense_channel_scores(layers, [family.mlp(layer) for layer in layers], hidden, run_layer)


def _all_finite(*tensors: torch.Tensor) -> bool:
    """A NaN or ±inf entry makes the sum non-finite; one reduction, where isfinite() would
    allocate a boolean copy of the n² Gram."""
    return all(torch.isfinite(tensor.sum()) for tensor in tensors)


def _call_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class _DownProjectionRecorder(nn.Module):
    """Stands in for down_proj while a layer is captured: records its input (the intermediate
    activations Z) and returns zeros, so the dense down projection is not computed at all."""

    def __init__(self, down_proj: nn.Linear, mlp: nn.Module) -> None:
        super().__init__()
        self.down_proj = down_proj
        self.intermediate: torch.Tensor | None = None  # of the latest call
        self.mlp_input: torch.Tensor | None = None
        self._handle = mlp.register_forward_pre_hook(self._record_mlp_input)

    def _record_mlp_input(self, _module: nn.Module, args: tuple) -> None:
        self.mlp_input = args[0]

    def forward(self, intermediate: torch.Tensor) -> torch.Tensor:
        self.intermediate = intermediate
        return intermediate.new_zeros(*intermediate.shape[:-1], self.down_proj.out_features)

    def zero_output(self) -> torch.Tensor:
        weight = self.down_proj.weight
        return torch.zeros(1, self.down_proj.out_features, dtype=weight.dtype, device=weight.device)

    def release(self) -> None:
        self._handle.remove()


@contextlib.contextmanager
def _down_projection_recorded(mlp: nn.Module):
    original = mlp.down_proj
    recorder = _DownProjectionRecorder(original, mlp)
    mlp.down_proj = recorder
    try:
        yield recorder
    finally:
        mlp.down_proj = original
        recorder.release()


def _pruned_mlp_outputs(mlp: nn.Module, decision: LayerDecision, inputs: list[torch.Tensor],
                        intermediates: list[torch.Tensor]) -> list[torch.Tensor]:
    """The shrunk MLP's output on each calibration chunk. Its intermediate activations are the
    dense ones at the kept channels while gate/up are unchanged, or the ones the recovery computed
    for its last refit; either way only the (small) down projection needs computing."""
    if decision.kept_intermediates is not None:
        sizes = [z[..., 0].numel() for z in intermediates]
        kept = [h.reshape(*z.shape[:-1], -1)
                for h, z in zip(decision.kept_intermediates.split(sizes), intermediates)]
    elif decision.gate_weight is not None or decision.up_weight is not None:
        return [mlp(x) for x in inputs]
    else:
        kept = [z[..., decision.keep.to(z.device)] for z in intermediates]
    return [mlp.down_proj(h) for h in kept]


def prune_model(
    loaded: LoadedModel,
    calibration: torch.Tensor,
    settings: PruneSettings,
    *,
    seed: int = 0,
    batch_size: int = 4,
    inplace: bool = False,
    on_layer: LayerCallback | None = None,
    on_step: Callable[[SpapStep], None] | None = None,
    cancel: threading.Event | None = None,
) -> PruneResult:
    """Prune `loaded.model` (a deep copy unless inplace) with the given settings on calibration
    token windows [N, L]. on_layer(i, L) fires after each layer; on_step per SPAP ρ iteration;
    setting `cancel` stops the run within one ρ iteration (PruningCancelled)."""
    n_prune = prune_counts(loaded, settings)  # refusals first, before the copy
    method, options = settings.implementation, settings.options
    correction, recovery = method.target_correction(options), settings.recovery
    if not inplace and is_dispatched(loaded.model):
        raise SpapInputError("A model placed with a device map (offloaded layers) is pruned in place; a copy "
                             "would need the memory the map avoids.")
    model = loaded.model if inplace else copy.deepcopy(loaded.model)
    family = loaded.family
    layers = family.decoder_layers(model)
    device = loaded.device
    store = OffloadStore(loaded.offload_folder)
    params_before = parameter_count(model)
    timings = {"capture": 0.0, "solve": 0.0, "altmin": 0.0, "propagate": 0.0}
    records: list[LayerRecord] = []
    trace: list[SpapStep] = []

    def keep_step(step: SpapStep) -> None:
        trace.append(step)
        if on_step is not None:
            on_step(step)

    with torch.no_grad():
        started = time.perf_counter()
        chunks = [c.to(device) for c in calibration.split(batch_size)]
        hidden, layer_kwargs = _layer_inputs_and_kwargs(model, layers, chunks)
        if settings.allocation == GLOBAL:
            n_prune = global_counts(_dense_channel_scores(family, layers, hidden, layer_kwargs), settings.sparsity)
        elif settings.allocation == FISHER:
            sensitivity = channel_fisher(model, [family.mlp(layer).down_proj for layer in layers], calibration, cancel)
            n_prune = fisher_counts(sensitivity, settings.sparsity)
        correcting = correction > 0
        dense_hidden = list(hidden) if correcting else []
        timings["capture"] += time.perf_counter() - started
        for index, layer in enumerate(layers):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled(f"cancelled before layer {index}")
            with materialized(layer, f"layer{index}", store, device) as layer_device:
                hidden = [chunk.to(layer_device) for chunk in hidden]
                dense_hidden = [chunk.to(layer_device) for chunk in dense_hidden]
                kwargs = move_to(layer_kwargs[index], layer_device)
                mlp = family.mlp(layer)
                started = time.perf_counter()
                stats = GramAccumulator()
                to_residual = family.mlp_output_to_residual(layer)
                if correcting:  # the dense model's own output of this layer, on the dense stream
                    dense_hidden = [_call_layer(layer, chunk, kwargs) for chunk in dense_hidden]
                # Explicit targets are only needed when they differ from W₀Z; otherwise the
                # statistics follow from the Gram alone and the dense down projection is never run
                # during the capture.
                mlp_inputs, intermediates, targets, residual_bases = [], [], [], []
                with _down_projection_recorded(mlp) as recorded:
                    zero_contribution = to_residual(recorded.zero_output())
                    for chunk_index, chunk in enumerate(hidden):
                        # The layer's output with its MLP contributing nothing: the residual stream
                        # every variant of this MLP's output is added to.
                        base = _call_layer(layer, chunk, kwargs) - zero_contribution
                        z = recorded.intermediate
                        target = None
                        if correcting:  # W₀Z, plus part of the error the pruned stream has accumulated
                            target = recorded.down_proj(z)
                            target = target + correction * (dense_hidden[chunk_index] - (base + to_residual(target)))
                            targets.append(target)
                        if recovery is not None:
                            mlp_inputs.append(recorded.mlp_input)
                        stats.add(z, target)
                        intermediates.append(z)
                        residual_bases.append(base)
                timings["capture"] += time.perf_counter() - started

                started = time.perf_counter()
                problem = stats.problem(mlp.down_proj.weight, n_prune[index])
                if not _all_finite(problem.gram, problem.cross):
                    raise NumericalError(
                        f"Pruning stopped: the calibration activations of layer {index} contain NaN or inf "
                        "(the model itself overflows on this text; try float32 or another calibration text).")
                del stats
                decision = method.decide(problem, options, index, on_step=keep_step, cancel=cancel)
                if settings.reconstruction is not None:
                    decision = settings.reconstruction.apply(problem, decision)
                timings["solve"] += time.perf_counter() - started

                if recovery is not None:
                    started = time.perf_counter()
                    # Without corrected targets the recovery fits the dense output W₀Z, computed
                    # once here for the tokens it samples and for its refit.
                    recovery_targets = torch.cat(targets) if correcting else mlp.down_proj(torch.cat(intermediates))
                    with torch.enable_grad():
                        decision = alternating_minimization(
                            decision, torch.cat(mlp_inputs), recovery_targets,
                            mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, mlp.act_fn,
                            recovery.altmin, recovery.refit, seed=seed + index, cancel=cancel,
                        )
                    timings["altmin"] += time.perf_counter() - started

                started = time.perf_counter()
                records.append(LayerRecord(
                    layer=index, width=problem.width, keep=decision.keep.cpu().numpy(),
                    scores={**baseline_scores(problem), **decision.scores},
                    objective=decision.objective, dense_objective=0.5 * problem.target_energy,
                    down_column_norms=_down_column_norms(problem, decision),
                ))
                shrink_mlp(mlp, decision)
                hidden = [base + to_residual(output) for base, output in
                          zip(residual_bases, _pruned_mlp_outputs(mlp, decision, mlp_inputs, intermediates))]
                timings["propagate"] += time.perf_counter() - started
            if on_layer is not None:
                on_layer(index + 1, len(layers))
    finalize_config(model, family)
    return PruneResult(
        model=model, settings=settings, layers=records, trace=trace, timings=timings,
        params_before=params_before, params_after=parameter_count(model),
        calibration_tokens=int(calibration.numel()),
    )
