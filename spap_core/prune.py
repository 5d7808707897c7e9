"""The sequential pruning walk: layer by layer, calibration activations flow through the layers
already pruned, each layer's statistics are accumulated, a method decides, the layer is shrunk,
and its pruned output becomes the next layer's input. Only one layer's activations live at a time."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from spap_core.errors import PruningCancelled, SpapInputError
from spap_core.methods.registry import PruneSettings, decide_layer
from spap_core.methods.altmin import alternating_minimization
from spap_core.methods.baselines import baseline_scores
from spap_core.methods.problem import prune_count
from spap_core.methods.spap import SpapStep
from spap_core.models import LoadedModel
from spap_core.shrink import finalize_config, shrink_mlp, supports_down_bias
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


@dataclass
class PruneResult:
    model: nn.Module
    settings: PruneSettings
    layers: list[LayerRecord]
    trace: list[SpapStep]
    timings: dict[str, float]
    params_before: int
    params_after: int
    calibration_tokens: int


class _StopForward(Exception):
    pass


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_inputs_and_kwargs(model: nn.Module, layers: nn.ModuleList, chunks: list[torch.Tensor]):
    """Hidden states entering layer 0 for every chunk, and the keyword arguments (rotary
    embeddings, masks) each layer is called with. Those depend on positions only, so they are
    recorded once on a single window and broadcast over any batch size."""
    layer_kwargs: list[dict] = [{} for _ in layers]

    def record(index):
        def hook(_module, _args, kwargs):
            layer_kwargs[index] = {k: v for k, v in kwargs.items() if k not in {"hidden_states"}}
        return hook

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.get_decoder()(input_ids=chunks[0][:1], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
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


def _call_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _pruned_mlp_output(mlp: nn.Module, decision, inputs: torch.Tensor, intermediate: torch.Tensor) -> torch.Tensor:
    """The shrunk MLP's output. While gate/up are unchanged, its intermediate activations are the
    dense ones at the kept channels, so only the (small) down projection needs computing."""
    if decision.gate_weight is not None or decision.up_weight is not None:
        return mlp(inputs)
    return mlp.down_proj(intermediate[..., decision.keep.to(intermediate.device)])


def prune_model(
    loaded: LoadedModel,
    calibration: torch.Tensor,
    settings: PruneSettings,
    *,
    seed: int = 0,
    batch_size: int = 8,
    inplace: bool = False,
    on_layer: LayerCallback | None = None,
    on_step: Callable[[SpapStep], None] | None = None,
    cancel: threading.Event | None = None,
) -> PruneResult:
    """Prune `loaded.model` (a deep copy unless inplace) with the given settings on calibration
    token windows [N, L]. on_layer(i, L) fires after each layer; on_step per SPAP ρ iteration;
    setting `cancel` stops the run within one ρ iteration (PruningCancelled)."""
    model = loaded.model if inplace else copy.deepcopy(loaded.model)
    family = loaded.family
    layers = family.decoder_layers(model)
    device = next(model.parameters()).device
    uses_bias = settings.method == "flap" or (settings.method == "spap" and settings.refit.bias)
    if uses_bias and not supports_down_bias(model):
        raise SpapInputError(
            f"'{settings.method}' adds a down_proj bias, which model type '{family.model_type}' cannot "
            "store; turn bias compensation off (--no-bias) or choose another method."
        )
    if settings.target_correction > 0 and not family.mlp_output_is_residual(layers[0]):
        raise SpapInputError(
            f"Error-correcting targets need the MLP output to enter the residual stream directly, which "
            f"is not the case for model type '{family.model_type}'; set the target correction to 0."
        )
    n_prune = [prune_count(family.mlp(layer).down_proj.in_features, settings.sparsity) for layer in layers]
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
        correcting = settings.method == "spap" and settings.target_correction > 0
        dense_hidden = list(hidden) if correcting else []
        timings["capture"] += time.perf_counter() - started
        for index, layer in enumerate(layers):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled(f"cancelled before layer {index}")
            mlp = family.mlp(layer)
            started = time.perf_counter()
            stats = GramAccumulator()
            captured: dict[str, torch.Tensor] = {}

            def capture_mlp(_module, args, output):
                captured["x"], captured["y"] = args[0], output

            def capture_z(_module, args):
                captured["z"] = args[0]

            if correcting:  # the dense model's own output of this layer, on the dense stream
                dense_hidden = [_call_layer(layer, chunk, layer_kwargs[index]) for chunk in dense_hidden]
            handles = [mlp.register_forward_hook(capture_mlp), mlp.down_proj.register_forward_pre_hook(capture_z)]
            mlp_inputs, intermediates, mlp_outputs, targets, dense_outputs = [], [], [], [], []
            try:
                for chunk_index, chunk in enumerate(hidden):
                    out = _call_layer(layer, chunk, layer_kwargs[index])
                    target = captured["y"]
                    if correcting:  # also undo part of the error the pruned stream has accumulated
                        target = target + settings.target_correction * (dense_hidden[chunk_index] - out)
                    stats.add(captured["z"], target)
                    dense_outputs.append(out)
                    mlp_inputs.append(captured["x"])
                    intermediates.append(captured["z"])
                    mlp_outputs.append(captured["y"])
                    targets.append(target)
            finally:
                for handle in handles:
                    handle.remove()
            timings["capture"] += time.perf_counter() - started

            started = time.perf_counter()
            problem = stats.problem(mlp.down_proj.weight, n_prune[index])
            del stats
            decision = decide_layer(problem, settings, index, on_step=keep_step, cancel=cancel)
            timings["solve"] += time.perf_counter() - started

            if settings.method == "spap" and settings.altmin.rounds > 0:
                started = time.perf_counter()
                with torch.enable_grad():
                    decision = alternating_minimization(
                        decision, torch.cat(mlp_inputs), torch.cat(targets),
                        mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, mlp.act_fn,
                        settings.altmin, settings.refit, seed=seed + index, cancel=cancel,
                    )
                timings["altmin"] += time.perf_counter() - started

            started = time.perf_counter()
            records.append(LayerRecord(
                layer=index, width=problem.width, keep=decision.keep.cpu().numpy(),
                scores={**baseline_scores(problem), **decision.scores},
                objective=decision.objective, dense_objective=0.5 * problem.target_energy,
            ))
            shrink_mlp(mlp, decision)
            to_residual = family.mlp_output_to_residual(layer)
            hidden = [
                out + to_residual(_pruned_mlp_output(mlp, decision, x, z)) - to_residual(y)
                for out, x, z, y in zip(dense_outputs, mlp_inputs, intermediates, mlp_outputs)
            ]
            timings["propagate"] += time.perf_counter() - started
            if on_layer is not None:
                on_layer(index + 1, len(layers))
    finalize_config(model, family)
    return PruneResult(
        model=model, settings=settings, layers=records, trace=trace, timings=timings,
        params_before=params_before, params_after=parameter_count(model),
        calibration_tokens=int(calibration.numel()),
    )
