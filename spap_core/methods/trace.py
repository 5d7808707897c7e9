"""A run's trace laid out as tables and arrays, whatever method reported it: one row per step (its
`MethodStep.record_row`) and each per-unit array of the steps stacked as [layer, iteration, unit].
The run records on disk (spap_core.storage.runs) and the app's charts (spap_service.analysis) read
a trace through these, so neither needs to know a method's step fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spap_core.methods.base import MethodStep

EMPTY_STACK = np.zeros((0, 0, 0), dtype=np.float32)
EMPTY_UNITS = np.zeros(0, dtype=np.float32)
WIDTHS = "trace_widths"  # the name `trace_arrays` gives the traced layers' widths


def trace_rows(trace: Sequence[MethodStep]) -> list[dict[str, Any]]:
    """One row per step, in the trace's order."""
    return [step.record_row() for step in trace]


def trace_widths(trace: Sequence[MethodStep], step_type: type[MethodStep]) -> np.ndarray:
    """How many units (channels or heads) each traced layer's steps carry, in layer order: a model
    saved with per-layer widths gives each layer its own (empty for methods without a trace or
    without per-unit arrays)."""
    widths: dict[int, int] = {}
    if step_type.array_names:
        for step in trace:
            widths.setdefault(step.layer, len(step.unit_arrays()[step_type.array_names[0]]))
    return np.array([widths[layer] for layer in sorted(widths)], dtype=np.int64)


def stacked_array(trace: Sequence[MethodStep], name: str) -> np.ndarray:
    """The per-unit array `name` of every step (one its step type declares) as [layer, iteration,
    unit], as wide as the widest layer: a narrower layer's units are followed by NaN (its width is
    `trace_widths`). Empty for methods without a trace, or when a step does not carry the array."""
    values = [step.unit_arrays()[name] for step in trace]
    if not trace or any(len(step_values) == 0 for step_values in values):
        return EMPTY_STACK
    layers = sorted({s.layer for s in trace})
    iterations = max(s.iteration for s in trace)
    out = np.full((len(layers), iterations, max(len(step_values) for step_values in values)), np.nan,
                  dtype=np.float32)
    for step, step_values in zip(trace, values, strict=True):
        out[layers.index(step.layer), step.iteration - 1, :len(step_values)] = step_values
    return out


def trace_arrays(trace: Sequence[MethodStep], step_type: type[MethodStep]) -> dict[str, np.ndarray]:
    """What a run record stores of a trace besides its rows: its stacked arrays and, under WIDTHS,
    each traced layer's width (nothing for a step type without per-unit arrays)."""
    if not step_type.array_names:
        return {}
    return {**{name: stacked_array(trace, name) for name in step_type.array_names},
            WIDTHS: trace_widths(trace, step_type)}


def steps_from_record(step_type: type[MethodStep], rows: list[dict[str, str]], arrays: dict[str, np.ndarray],
                      pruned: list[int]) -> list[MethodStep]:
    """The trace again from its rows (as text) and stored arrays (`trace_arrays`: the first array
    the step type names must be there, the others may be absent; a record without WIDTHS holds one
    width for every layer), each step's arrays cut to its layer's own width; `pruned[layer]` is how
    many units that layer's record says were pruned."""
    names = step_type.array_names
    stacks = {name: arrays[name] if index == 0 else arrays.get(name, EMPTY_STACK) for index, name in enumerate(names)}
    first = stacks[names[0]] if names else EMPTY_STACK
    widths = arrays.get(WIDTHS, np.full(len(first), first.shape[-1]))
    layer_numbers = sorted({int(row["layer"]) for row in rows})
    trace = []
    for row in rows:
        layer, iteration = int(row["layer"]), int(row["iteration"]) - 1
        position = layer_numbers.index(layer)
        step_arrays = {name: stack[position, iteration, :int(widths[position])] if stack.size else EMPTY_UNITS
                       for name, stack in stacks.items()}
        trace.append(step_type.from_record(row, step_arrays, pruned[layer]))
    return trace
