"""Tables the charts are drawn from, computed from a run's records (plain numpy/pandas, no
streamlit), so the pages stay about layout and the tests can check the numbers directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from spap_core.families import GluFamily
from spap_core.prune import LayerRecord, PruneResult
from spap_core.runs import soft_mask_array, trace_rows

SPAP_PRUNED = "SPAP (actual pruned set)"
SCORE_METRICS = ("magnitude", "wanda-sp", "flap", "spap_first", "spap_last")


def parameter_split(model: nn.Module) -> dict[str, int]:
    """Parameters by role: attention, MLP, embeddings (tied input/output counted once), norms."""
    split = {"attention": 0, "MLP": 0, "embeddings": 0, "norms and other": 0}
    for name, parameter in model.named_parameters():  # yields a tied weight once
        if ".mlp." in name:
            split["MLP"] += parameter.numel()
        elif ".self_attn." in name:
            split["attention"] += parameter.numel()
        elif "embed" in name or "lm_head" in name:
            split["embeddings"] += parameter.numel()
        else:
            split["norms and other"] += parameter.numel()
    return split


def mlp_widths(model: nn.Module, family: GluFamily) -> list[int]:
    return [family.mlp(layer).down_proj.in_features for layer in family.decoder_layers(model)]


def trace_table(result: PruneResult) -> pd.DataFrame:
    """One row per (layer, ρ iteration) with ρ, objective, violation and how binary s is."""
    return pd.DataFrame(trace_rows(result.trace))


def layer_table(result: PruneResult) -> pd.DataFrame:
    """One row per layer: width, channels kept and the layer's relative reconstruction error."""
    return pd.DataFrame([
        {"layer": r.layer, "width": r.width, "kept": len(r.keep), "pruned": r.width - len(r.keep),
         "objective": r.objective, "dense_objective": r.dense_objective,
         "relative_error": (r.objective or 0.0) / r.dense_objective if r.dense_objective > 0 else np.nan}
        for r in result.layers
    ])


def soft_masks(result: PruneResult) -> np.ndarray:
    """[layer, iteration, channel] soft masks of a SPAP run (empty for baselines)."""
    return soft_mask_array(result.trace)


def display_channels(final_mask: np.ndarray, max_channels: int, sort_by_mask: bool) -> np.ndarray:
    """Which channels to draw: sorted by final s (pruned channels gather on the right) when asked,
    then at most `max_channels` evenly spaced ones, so a 1536-wide layer stays a light figure."""
    order = np.argsort(final_mask, kind="stable") if sort_by_mask else np.arange(len(final_mask))
    if len(order) <= max_channels:
        return order
    return order[np.linspace(0, len(order) - 1, max_channels).round().astype(int)]


def pruned_channels(record: LayerRecord) -> set[int]:
    return set(range(record.width)) - set(record.keep.tolist())


def lowest_channels(scores: np.ndarray, count: int) -> set[int]:
    """The `count` lowest-scored channels (stable ties, as the methods choose them)."""
    return set(np.argsort(scores, kind="stable")[:count].tolist())


def score_threshold(scores: np.ndarray, count: int) -> float:
    """The λ-th lowest score: channels at or below it are the ones this metric would prune."""
    return float(np.sort(scores)[count - 1])


def normalized_scores(record: LayerRecord) -> pd.DataFrame:
    """Long table (metric, channel, score, score ÷ λ-threshold): dividing each metric by its own
    threshold puts every metric's cut at 1, so differently scaled metrics share one axis."""
    count = record.width - len(record.keep)
    frames = []
    for metric in SCORE_METRICS:
        if metric not in record.scores:
            continue
        scores = np.asarray(record.scores[metric], dtype=np.float64)
        threshold = max(score_threshold(scores, count), 1e-30)
        frames.append(pd.DataFrame({
            "metric": metric, "channel": np.arange(len(scores)), "score": scores,
            "relative_score": np.maximum(scores / threshold, 1e-6),
        }))
    return pd.concat(frames, ignore_index=True)


def pruned_sets(record: LayerRecord) -> dict[str, set[int]]:
    """Each metric's λ lowest channels, plus the set SPAP actually pruned (complement of keep)."""
    count = record.width - len(record.keep)
    sets = {metric: lowest_channels(np.asarray(record.scores[metric]), count)
            for metric in SCORE_METRICS if metric in record.scores}
    sets[SPAP_PRUNED] = pruned_channels(record)
    return sets


def jaccard_matrix(records: list[LayerRecord]) -> pd.DataFrame:
    """Mean over the given layers of |A∩B| / |A∪B| between the pruned sets of every two methods."""
    names = list(pruned_sets(records[0]))
    total = np.zeros((len(names), len(names)))
    for record in records:
        sets = pruned_sets(record)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                union = sets[a] | sets[b]
                total[i, j] += len(sets[a] & sets[b]) / len(union) if union else 1.0
    return pd.DataFrame(total / len(records), index=names, columns=names)
