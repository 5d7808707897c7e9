"""Tables the charts are drawn from, computed from a run's records (plain numpy/pandas, no
streamlit), so the pages stay about layout and the tests can check the numbers directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedModel

from spap_core.evaluation.latency import Timing
from spap_core.methods.base import MethodStep
from spap_core.methods.reconstruction import Reconstruction
from spap_core.methods.registry import PruneSettings
from spap_core.methods.trace import EMPTY_STACK, stacked_array, trace_rows
from spap_core.models.adapters import ModelAdapter
from spap_core.pipeline.parameters import changed
from spap_core.pipeline.walk import LayerRecord, PruneResult
from spap_service.comparisons import SCAN_REFERENCE, perplexity_cell
from spap_service.runs import RunRequest
from spap_service.series import course, peaks, trend

SPAP_PRUNED = "SPAP (actual pruned set)"


def parameter_split(model: PreTrainedModel, family: ModelAdapter) -> dict[str, int]:
    """Parameters by role: attention, MLP (as the family's adapter places them), embeddings (token
    and position embeddings and the head; a tied head counted once), norms and the rest."""
    layers = family.decoder_layers(model)
    role = {id(p): "MLP" for layer in layers for module in family.mlp_channels.modules(layer)
            for p in module.parameters()}
    role.update({id(p): "attention" for layer in layers for p in family.attention(layer).parameters()})
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)] + [model.get_output_embeddings()]
    role.update({id(p): "embeddings" for module in embeddings if module is not None for p in module.parameters()})
    split = {"attention": 0, "MLP": 0, "embeddings": 0, "norms and other": 0}
    for parameter in model.parameters():  # yields a tied weight once
        split[role.get(id(parameter), "norms and other")] += parameter.numel()
    return split


def mlp_widths(model: nn.Module, family: ModelAdapter) -> list[int]:
    return [family.mlp_channels.width(layer) for layer in family.decoder_layers(model)]


def run_label(request: RunRequest, reference: RunRequest) -> str:
    """What made a run, in one line: its method and sparsity, then every setting that differs from
    `reference` (the app's defaults), the calibration size and the seed included."""
    settings, data = request.settings, request.data
    parts = changed(settings, reference.settings, omit={"sparsity"})
    if (data.nsamples, data.seqlen) != (reference.data.nsamples, reference.data.seqlen):
        parts.append(f"calibration {data.nsamples} × {data.seqlen}")
    if request.seed != reference.seed:
        parts.append(f"seed {request.seed}")
    return f"{settings.method} at {settings.sparsity:.0%} · " + (", ".join(parts) if parts else "default settings")


def time_breakdown(record: dict, settings: PruneSettings) -> dict[str, float]:
    """Where a run's time went, in seconds: the pruning walk's phases that ran, then the two
    perplexity evaluations. The walk keeps a timer for alternating minimization in every run, so a
    run without it (no recovery in its settings) would show an empty bar for a step it never took;
    that bar is left out."""
    phases = {phase: seconds for phase, seconds in record["timings"].items()
              if phase != "altmin" or settings.recovery is not None}
    return {**{f"prune: {phase}": seconds for phase, seconds in phases.items()},
            "pruned perplexity": record["eval_seconds"], "dense perplexity": record["dense_eval_seconds"]}


def with_subtitle(title: str, subtitle: str) -> str:
    """A chart title with the run it shows underneath, in the smaller type plotly uses for <sup>."""
    return f"{title}<br><sup>{subtitle}</sup>"


def trace_table(result: PruneResult) -> pd.DataFrame:
    """One row per step the method reported (SPAP: per layer and ρ iteration, with ρ, objective,
    violation and how binary s is); empty for a method that reports none."""
    return pd.DataFrame(trace_rows(result.trace))


def _unit_array(result: PruneResult, trace: Sequence[MethodStep], name: str) -> np.ndarray:
    """The trace's per-unit array `name` as [layer, iteration, unit] (spap_core.methods.trace),
    empty when the run's method reports no such array."""
    if name not in result.settings.implementation.step_type.array_names:
        return EMPTY_STACK
    return stacked_array(trace, name)


def layer_table(result: PruneResult) -> pd.DataFrame:
    """One row per layer: width, channels kept and the layer's relative reconstruction error."""
    return pd.DataFrame([
        {"layer": r.layer, "width": r.width, "kept": len(r.keep), "pruned": r.width - len(r.keep),
         "objective": r.objective, "dense_objective": r.dense_objective, "relative_error": r.relative_error}
        for r in result.layers
    ])


def soft_masks(result: PruneResult) -> np.ndarray:
    """[layer, iteration, channel] soft masks of a SPAP run (empty for baselines)."""
    return _unit_array(result, result.trace, "soft_masks")


def column_norms(result: PruneResult) -> np.ndarray:
    """[layer, iteration, channel] ‖W[:,i]‖ along the penalty path (empty if the run did not keep them)."""
    return _unit_array(result, result.trace, "column_norms")


def readout_masks(result: PruneResult) -> np.ndarray:
    """[layer, channel] the binary mask each layer was read out to (1 = pruned): the run's own
    decision, so the 'read-out' frame shows what was pruned, not a recomputation. As wide as the
    widest layer, NaN past a narrower layer's own width (a model pruned before, with per-layer
    widths), as the soft masks are (spap_core.methods.trace.stacked_array)."""
    masks = np.full((len(result.layers), max(record.width for record in result.layers)), np.nan, dtype=np.float32)
    for index, record in enumerate(result.layers):
        masks[index, :record.width] = 1.0
        masks[index, record.keep] = 0.0
    return masks


def span(values: list[int]) -> str:
    """'12' when every value is 12, '10–14' when they differ (per-layer widths)."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def mask_story(result: PruneResult, masks: np.ndarray) -> str:
    """What the soft mask did in this run, in words computed from its own settings and values:
    the start, the marking schedule, the values s ended with, and whether it ended binary."""
    penalty = result.settings.options.penalty  # a run with a trace is a SPAP run
    n_iterations = masks.shape[1]
    widths = [record.width for record in result.layers]
    n_prunes = [record.width - len(record.keep) for record in result.layers]
    shares = sorted({f"{n_prune / width:.3g}" for n_prune, width in zip(n_prunes, widths)}, key=float)
    lam = span(n_prunes)
    start = ("s⁽⁰⁾ = 0 (nothing marked)" if penalty.start == "zero"
             else f"s⁽⁰⁾ = λ/n = {' to '.join(shares[::max(1, len(shares) - 1)])} everywhere")
    if penalty.schedule == "ramp":
        marking = f"iteration k marks the ⌈λk/K⌉ lowest-scored channels (λ = {lam} at k = K = {n_iterations})"
    else:
        marking = f"every iteration marks the λ = {lam} lowest-scored channels"
    final = masks[:, -1, :]
    finite = final[np.isfinite(final)]  # past a narrower layer's width there is no channel
    values = np.unique(np.round(finite, 3))
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", …" if len(values) > 8 else "")
    binary = bool(np.all((finite < 1e-3) | (finite > 1 - 1e-3)))
    if binary:
        ending = "At the last iteration s is binary, so the read-out simply takes it."
    else:
        below = [int(np.sum(np.sort(layer[:width])[::-1][:n_prune] < 1 - 1e-3))
                 for layer, width, n_prune in zip(final, widths, n_prunes)]
        short = (f"no channel's s reaches 1 (the largest is {finite.max():.3g})" if below == n_prunes else
                 f"on average {np.mean(below):.0f} of the λ = {lam} channels with the largest s sit below 1")
        ending = (f"At the last iteration s is not binary: its values are {shown}, and {short}. The binary mask is "
                  "read out as the λ largest s (the 'read-out' frame).")
    return (f"Start: {start}. Each ρ iteration moves s a step α = {penalty.momentum:g} towards the marked channels; "
            f"{marking}. {ending} The values s takes depend only on α and the schedule; the data decides which "
            "channel gets which value, through the scores ‖W[:,i]‖·‖Zᵢ‖ᵗ of the penalised W.")


MASK_COLOUR_SCALE = "Viridis"  # the soft-mask heatmaps' colours, s = 0 … 1
MASK_COLOUR_NAMES = ("dark purple", "yellow")  # what a student calls that scale's two ends, s = 0 and s = 1


def mask_picture(frames: np.ndarray, layer: int, width: int, layer_removed: int | None = None) -> str:
    """The mask heatmap in one plain sentence, counted from the frames it draws: `frames` is
    [ρ step + 1, drawn channel], s after every step, then the binary read-out as the last row
    (NaN past a narrower layer's width). A channel counts as pushed once its s is above 0. When
    the heatmap draws a sample of the channels, the counts are the sample's, and `layer_removed`
    (the whole layer's) is said beside them so neither is taken for the other."""
    steps, readout = frames[:-1], frames[-1]
    drawn = int(np.sum(np.isfinite(readout)))
    pushed = [int(np.sum(row > 1e-6)) for row in steps]  # NaN compares False: not drawn, not counted
    removed = int(np.sum(readout > 0.5))
    left_alone, pushed_out = MASK_COLOUR_NAMES
    channels = f"its {width} channels" if drawn == width else f"{drawn} of its {width} channels, evenly spaced"
    if len(pushed) == 1:
        course = f"{pushed[0]} are being pushed after its single step"
    else:
        course = f"{pushed[0]} are being pushed after step 1, {pushed[-1]} after step {len(pushed)}"
    return (f"Each row is one ρ step of layer {layer} ({channels}): the more {pushed_out} a channel, the harder it "
            f"is being pushed out ({left_alone}: left alone); {course}, and the bottom row is what gets removed: "
            f"{removed} {'channels' if drawn == width else 'of the drawn channels'}, in {pushed_out}"
            + (f" ({layer_removed} of the layer's {width})." if drawn < width and layer_removed is not None else "."))


def scores_picture(record: LayerRecord, cut_side: str) -> str:
    """The score distributions in one plain sentence: what the red line splits and how far the
    set the run removed matches the nearest metric's. `cut_side` is where the lowest scores lie
    from the threshold line in the chart drawn ('left of' a vertical line, 'below' a horizontal
    one)."""
    count = record.width - len(record.keep)
    sets = pruned_sets(record)
    removed = sets.pop(SPAP_PRUNED)
    nearest = max(sets, key=lambda metric: len(sets[metric] & removed))  # first in the walk's order on a tie
    return (f"Each colour is one way to score the {record.width} channels of layer {record.layer} (low = cheap to "
            f"remove): the {count} {cut_side} the red dashed line are the ones that score would remove, and the "
            f"{len(removed)} this run removed match {nearest}'s on {len(sets[nearest] & removed)} of them.")


def overlap_scope(layer: int | None, n_layers: int) -> str:
    """What an overlap matrix is taken over, as its caption names it: one layer, or the mean."""
    return f"layer {layer}" if layer is not None else f"the mean over {n_layers} layers"


def overlap_story(overlap: pd.DataFrame, scope: str) -> str | None:
    """How SPAP's removed channels overlap its own first and last rankings, quoting the overlap
    matrix drawn beside it (the same numbers, to the chart's two decimals, over the same `scope`);
    None for a run without SPAP's rankings."""
    if "spap_first" not in overlap.index:
        return None
    first, last = overlap.loc["spap_first", SPAP_PRUNED], overlap.loc["spap_last", SPAP_PRUNED]
    verdict = ("The penalty path mostly confirms the ranking it started from." if first >= 0.8 else
               "The penalty path moved well away from the ranking it started from.")
    return (f"In {scope}, the channels SPAP removed overlap those its first ranking scored lowest by {first:.2f} "
            f"and those its last ranking scored lowest by {last:.2f} (Jaccard, as in the chart). {verdict}")


def scan_picture(table: pd.DataFrame, label: str, share: bool = False) -> str:
    """A sensitivity scan in one plain sentence, from its table: one pruning run per value, where the
    layer error and the perplexity went as the value grew, and then what the verdicts against the
    default value allow (scan_verdicts). A `share` (a sparsity) is written in percent, as its axis
    reads."""
    ordered = table.sort_values("value")
    written = [f"{value:.0%}" if share else f"{value:g}" for value in ordered["value"]]
    low, high = written[0], written[-1]
    steps = [f"at {value}" for value in written]
    return (f"Each point is one whole pruning run with \"{label}\" set to the value under it: from {low} to "
            f"{high}, the mean layer error {course(ordered['mean_layer_error'].to_numpy(), steps=steps)} and the "
            f"perplexity {course(ordered['perplexity'].to_numpy(), steps=steps)} (the dense model's: "
            f"{float(ordered['dense_perplexity'].iloc[0]):.3g}). "
            + scan_verdicts(ordered.assign(written=written)))


def scan_verdicts(ordered: pd.DataFrame) -> str:
    """Each value's perplexity against the default value's, in one sentence from the scan's verdict
    columns (spap_service.comparisons.verdict_columns; `written` is each value as the sentence
    writes it): where it is lower, higher, not distinguishable (on what), or has no verdict; and,
    when every value is not distinguishable from the default, that the perplexity's changes are
    within the noise."""
    default = ordered[ordered["default"]].iloc[0]
    others = ordered[~ordered["default"]]
    verdicts = others[f"verdict_vs_{SCAN_REFERENCE}"]
    by_kind = {kind: others[verdicts.str.startswith(kind)]["written"].tolist()
               for kind in ("lower than", "higher than", "not distinguishable")}
    parts = [f"{kind.split()[0]} at {', '.join(values)}" for kind, values in by_kind.items() if values and
             kind != "not distinguishable"]
    if by_kind["not distinguishable"]:
        on_what = verdicts[verdicts.str.startswith("not distinguishable")].iloc[0].removeprefix("not distinguishable ")
        parts.append(f"not distinguishable at {', '.join(by_kind['not distinguishable'])} {on_what}")
    parts += [f"{verdict} at {value}" for value, verdict in zip(others["written"], verdicts)
              if not verdict.startswith(("lower than", "higher than", "not distinguishable"))]
    sentence = (f"Against the default value, {default['written']} (perplexity {perplexity_cell(default)}), the "
                f"perplexity is {'; '.join(parts)}.")
    if len(by_kind["not distinguishable"]) == len(others):
        sentence += " Its changes across this scan are within the noise of the evaluation and the calibration."
    return sentence


def zeroshot_picture(table: pd.DataFrame) -> str:
    """A zero-shot comparison in one plain sentence, from its table: how many answers each model
    got right on average, over the tasks (the mean row) or on the one task measured."""
    accuracy = table[table["metric"] == "acc"]
    mean = accuracy[accuracy["task"] == "mean"]
    row = (mean if len(mean) else accuracy).iloc[0]
    tasks = accuracy[accuracy["task"] != "mean"]["task"].tolist()
    where = f"on average over {len(tasks)} tasks" if len(mean) else f"on {row['task']}"
    return (f"Each pair of bars is one task: {where}, the dense model picks the right answer {row['dense']:.0%} "
            f"of the time and the pruned one {row['pruned']:.0%} ({row['change'] * 100:+.1f} points).")


def parameter_picture(split: dict[str, int], widths: list[int]) -> str:
    """The parameter split and the MLP widths in one plain sentence: the share pruning can touch."""
    total = sum(split.values())
    return (f"The MLPs hold {split['MLP'] / total:.0%} of the model's {total / 1e6:.1f} M parameters, and pruning "
            f"removes channels from them: each of its {len(widths)} layers has {span(widths)} to choose from.")


def violation_sentence(violations: np.ndarray) -> str:
    """The violation's course over the ρ iterations of one layer, and why, from the data: with one
    iteration there is no course to speak of."""
    if len(violations) == 1:
        return (f"The violation after the single ρ iteration (K = 1) is {float(violations[0]):.3g}: s took one step "
                "towards the marked channels and ρ acted once.")
    direction = "peaks" if peaks(violations) else trend(violations)
    why = {"rises": "s grows on the marked channels faster than ρ shrinks their columns",
           "falls": "ρ shrinks the marked channels' columns faster than s grows on them",
           "peaks": "first s grows on the marked channels faster than ρ shrinks their columns, then ρ wins",
           "stays": "s and ρ balance"}[direction]
    return f"The violation {course(violations)}: it weighs each ‖W[:,i]‖² by sᵢ, and {why}."


def first_marked(masks: np.ndarray) -> np.ndarray:
    """[layer, channel] the ρ iteration (1-based) at which s first became positive; 0 = never."""
    positive = masks > 1e-6
    first = positive.argmax(axis=1) + 1
    return np.where(positive.any(axis=1), first, 0)


def changed_mind_counts(masks: np.ndarray, readouts: np.ndarray) -> np.ndarray:
    """Per layer: channels that were marked at some iteration but were kept in the end."""
    return ((masks > 1e-6).any(axis=1) & (readouts < 0.5)).sum(axis=1)


def marked_share_of_final(masks: np.ndarray, readouts: np.ndarray) -> np.ndarray:
    """[layer, iteration]: the share of the finally pruned channels already marked (s > 0)."""
    pruned = readouts > 0.5
    return ((masks > 1e-6) & pruned[:, None, :]).sum(axis=2) / np.maximum(pruned.sum(axis=1, keepdims=True), 1)


def norm_paths(result: PruneResult, layer: int) -> pd.DataFrame | None:
    """Median ‖W[:,i]‖ ÷ ‖W₀[:,i]‖ per ρ iteration for groups of channels of one layer: the finally
    pruned ones by the iteration they were first marked, the channels marked but kept, and the
    channels never marked. None when the run did not record column norms."""
    norms = column_norms(result)
    record = result.layers[layer]
    dense = record.output_column_norms.get("dense")
    if norms.size == 0 or dense is None:
        return None
    masks = soft_masks(result)[layer][:, :record.width]  # the layer's own channels, not the padding
    readouts = readout_masks(result)[layer][:record.width]
    first = first_marked(masks[None])[0]
    relative = norms[layer][:, :record.width] / np.maximum(dense, 1e-12)  # [iteration, channel]
    rhos = [row["rho"] for row in trace_rows(result.trace) if row["layer"] == record.layer]
    groups: dict[str, list[int]] = {}
    for channel in range(record.width):
        if readouts[channel] > 0.5:
            groups.setdefault(f"pruned, marked from k = {first[channel]}", []).append(channel)
        elif first[channel] > 0:
            groups.setdefault("marked, then kept", []).append(channel)
        else:
            groups.setdefault("never marked (kept)", []).append(channel)
    rows = [{"group": name, "channels": len(members), "iteration": k + 1, "rho": rhos[k],
             "relative_norm": float(np.median(relative[k, members])), "s": float(np.median(masks[k, members]))}
            for name, members in sorted(groups.items()) for k in range(relative.shape[0])]
    return pd.DataFrame(rows)


def final_norms(record: LayerRecord) -> pd.DataFrame | None:
    """‖W[:,i]‖ ÷ ‖W₀[:,i]‖ after the read-out and refit (0 for pruned channels), per channel."""
    dense, final = record.output_column_norms.get("dense"), record.output_column_norms.get("final")
    if dense is None or final is None:
        return None
    pruned = pruned_channels(record)
    return pd.DataFrame({"channel": np.arange(record.width), "relative_norm": final / np.maximum(dense, 1e-12),
                         "status": ["pruned" if c in pruned else "kept" for c in range(record.width)]})


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
    for metric in record.scores:  # every baseline's metric and the run's own, as the walk recorded them
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
            for metric in record.scores}
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


def readable_range(values: np.ndarray, min_relative_span: float = 0.05) -> tuple[list[float], str]:
    """A y-axis range at least `min_relative_span` of the values' mean wide, and a note of their
    spread: a 0.5 % change drawn across the whole axis would look like a cliff."""
    values = np.asarray(values, dtype=np.float64)
    low, high, centre = float(values.min()), float(values.max()), float(values.mean())
    spread = (high - low) / abs(centre) if centre else float("inf")
    half = max(high - low, min_relative_span * abs(centre)) / 2 * 1.1
    middle = (high + low) / 2
    return [middle - half, middle + half], f"spread {spread:.1%} of the mean"


def speedup_verdict(what: str, dense: Timing, pruned: Timing, unit: str, lower_is_faster: bool) -> tuple[bool, str]:
    """Whether a measured speed-up means anything: only when the fastest-to-slowest ranges of the
    two models do not overlap. Returns (conclusive, a sentence saying so with the ranges)."""
    ranges = (f"dense {dense.low:.4g}–{dense.high:.4g} {unit}, pruned {pruned.low:.4g}–{pruned.high:.4g} {unit}, "
              f"{dense.repeats} repeats each")
    overlap = dense.low <= pruned.high and pruned.low <= dense.high
    if overlap:
        return False, (f"{what}: inconclusive — the two models' ranges overlap ({ranges}), so this measurement cannot "
                       "tell which one is faster.")
    pruned_faster = (pruned.high < dense.low) if lower_is_faster else (pruned.low > dense.high)
    return True, (f"{what}: the pruned model is {'faster' if pruned_faster else 'slower'} in every repeat "
                  f"({ranges}).")


def weight_update_note(reconstruction: Reconstruction | None) -> str:
    """What a sweep's points do after their selection, for the caption of settings kept fixed."""
    if reconstruction is None:
        return ("the penalty, refit and alternating-minimization settings apply to SPAP's points; each baseline "
                "has its own rule")
    refit = reconstruction.refit_settings
    towards = "the dense weights" if refit.prior == "dense" else "zero"
    note = (f"the penalty settings apply to SPAP's points; then every method's kept channels get SPAP's default "
            f"refit (δ = {refit.ridge:g} h̄ towards {towards}{', with a bias' if refit.bias else ', no bias'})")
    return note + (" and its default alternating minimization" if reconstruction.altmin
                   else ", without alternating minimization")


def head_soft_masks(result: PruneResult) -> np.ndarray:
    """[layer, iteration, head] soft masks of the heads (empty without heads or without a trace)."""
    if result.heads is None:
        return np.zeros((0, 0, 0), dtype=np.float32)
    return _unit_array(result, result.heads.trace, "soft_masks")


def head_label(head: int, kv_group: int) -> str:
    """How charts name a head: 'h4 · KV 1'."""
    return f"h{head} · KV {kv_group}"


def head_table(result: PruneResult) -> pd.DataFrame:
    """One row per (layer, head) of a run that pruned heads: its KV group, whether it was pruned,
    the ρ iteration at which SPAP first marked it (0 = never; absent for methods without a trace)
    and every score the walk recorded for it."""
    heads = result.heads
    if heads is None:
        raise ValueError("the run did not prune attention heads")
    masks = head_soft_masks(result)
    marked = first_marked(masks) if masks.size else None
    rows = []
    for index, record in enumerate(heads.layers):
        kept = set(record.keep.tolist())
        for head in range(record.width):
            group = heads.layout.kv_group(head)
            row = {"layer": record.layer, "head": head, "kv_group": group, "label": head_label(head, group),
                   "status": "kept" if head in kept else "pruned"}
            if marked is not None:
                row["first_marked"] = int(marked[index, head])
            row.update({metric: float(np.asarray(scores)[head]) for metric, scores in record.scores.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def head_story(result: PruneResult, table: pd.DataFrame) -> str:
    """What happened to the heads, in numbers from the run: the layout, how many KV groups went
    whole, and (with a trace) the heads marked along the path but kept."""
    if result.heads is None:
        raise ValueError("the run did not prune attention heads")
    layout = result.heads.layout
    n_layers = table["layer"].nunique()
    story = (f"Every layer keeps {layout.kept} of its {layout.heads} heads ({layout.describe()}): "
             f"{layout.removed * n_layers} heads removed over {n_layers} layers")
    if layout.kv_kept < layout.kv_heads:
        story += f", {layout.kv_heads - layout.kv_kept} whole KV group{'s' * (layout.kv_heads - layout.kv_kept > 1)} " \
                 "per layer with their key and value projections"
    story += "."
    if "first_marked" in table:
        changed_mind = int(((table["first_marked"] > 0) & (table["status"] == "kept")).sum())
        story += (f" {changed_mind} head{'s' * (changed_mind != 1)} over all layers "
                  f"{'was' if changed_mind == 1 else 'were'} "
                  "marked at some ρ iteration and kept in the end.")
    return story
