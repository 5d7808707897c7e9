"""Run records on disk: results.json (settings, metrics, provenance), a per-iteration trace
summary as CSV and the soft masks as a compressed array, next to the saved pruned model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from spap_core.methods.spap import SpapStep
from spap_core.prune import PruneResult

TRACE_COLUMNS = ("layer", "iteration", "rho", "objective", "violation", "mask_mean", "mask_binary_fraction")


def trace_rows(trace: list[SpapStep]) -> list[dict]:
    """One row per (layer, ρ iteration); `mask_binary_fraction` = share of s within 1e-3 of 0 or 1."""
    return [
        {
            "layer": step.layer, "iteration": step.iteration, "rho": step.rho,
            "objective": step.objective, "violation": step.violation,
            "mask_mean": float(step.soft_mask.mean()),
            "mask_binary_fraction": float(np.mean((step.soft_mask < 1e-3) | (step.soft_mask > 1 - 1e-3))),
        }
        for step in trace
    ]


def soft_mask_array(trace: list[SpapStep]) -> np.ndarray:
    """Soft masks as [layer, iteration, channel] (empty for methods without a trace)."""
    if not trace:
        return np.zeros((0, 0, 0), dtype=np.float32)
    layers = sorted({s.layer for s in trace})
    iterations = max(s.iteration for s in trace)
    out = np.zeros((len(layers), iterations, len(trace[0].soft_mask)), dtype=np.float32)
    for step in trace:
        out[layers.index(step.layer), step.iteration - 1] = step.soft_mask
    return out


def write_run(directory: str | Path, record: dict, result: PruneResult) -> Path:
    """Write results.json, trace.csv and trace_masks.npz into `directory`."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(record, indent=2, default=float))
    with open(path / "trace.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRACE_COLUMNS)
        writer.writeheader()
        writer.writerows(trace_rows(result.trace))
    kept = {f"keep_layer{layer.layer}": layer.keep for layer in result.layers}
    np.savez_compressed(path / "trace_masks.npz", soft_masks=soft_mask_array(result.trace), **kept)
    return path
