"""One parameter budget for a whole run: remove a share of the decoder layers' parameters, split
between MLP channels and attention heads by a measured criterion, the layer objectives. Every layer
keeps one head layout (spap_core.problem.layout), so a split is a layout (or none) and the MLP
sparsity that then fills the budget exactly (counted from the shapes). Each candidate split is
scored on the dense model's statistics (one forward pass): in every layer, the least-squares error
½‖ΔY‖² that FLAP's selection leaves after SPAP's refit, of the attention at that layout plus of the
MLP at that sparsity. Both errors are energies of what the layer adds to the residual stream, so they
add up; the split with the smallest sum is chosen.

FLAP's own rule (its "AL-AM" structure: fluctuation scores standardised within each kind over all
layers, lowest units removed first) was tried first: on SmolLM2 at 20% it removed 71% of the heads,
which the one-layout constraint turns into 6 of 9 heads in every layer, and perplexity went
40 → 484 (docs/spap-design.md). The run itself is an ordinary run at the chosen sparsities, recorded
as such, so it reproduces without the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spap_core.errors import SpapInputError
from spap_core.methods.baselines import flap_scores
from spap_core.models.adapters.projections import projection_shape, projection_weight
from spap_core.models.loading import LoadedModel
from spap_core.pipeline.walk import dense_layer_statistics
from spap_core.problem.layout import HeadLayout
from spap_core.problem.objective import RefitSettings, lowest, refit
from spap_core.problem.statistics import GramAccumulator


@dataclass(frozen=True)
class UnitCosts:
    """Parameters of one unit of a layer: an MLP channel (its input rows and output column), a
    query head (its query rows and output columns) and a KV group (its key and value rows)."""

    channel: int
    head: int
    kv_group: int
    layer: int  # every parameter of the decoder layer, norms included
    width: int
    heads: int
    kv_heads: int
    head_dim: int

    @staticmethod
    def of(loaded: LoadedModel) -> UnitCosts:
        family = loaded.family
        layer = family.decoder_layers(loaded.model)[0]
        mlp, attention = family.mlp_channels, family.attention_heads
        inputs = mlp.input_projections(layer)
        width = mlp.width(layer)
        channel = (sum(projection_shape(m)[0] * (projection_shape(m)[1] + (m.bias is not None)) for m in inputs)
                   // width + projection_shape(mlp.output_projection(layer))[0])
        head = kv_group = heads = kv_heads = head_dim = 0
        if family.head_refusal is None:
            heads, kv_heads, head_dim = attention.shape(loaded.model)
            weights = attention.weights(layer)
            rows = [weight.shape[1] + (bias is not None) for weight, bias in
                    zip((weights.query, weights.key, weights.value), weights.biases)]  # one parameter row each
            head = head_dim * (rows[0] + weights.output.shape[0])
            kv_group = head_dim * (rows[1] + rows[2])
        return UnitCosts(channel=channel, head=head, kv_group=kv_group,
                         layer=sum(p.numel() for p in layer.parameters()), width=width, heads=heads,
                         kv_heads=kv_heads, head_dim=head_dim)

    def heads_removed(self, layout: HeadLayout | None) -> int:
        """Parameters one layer loses to `layout`."""
        if layout is None:
            return 0
        return layout.removed * self.head + (layout.kv_heads - layout.kv_kept) * self.kv_group


@dataclass(frozen=True)
class BudgetSplit:
    """The two sparsities a parameter budget comes to, and what decided them."""

    budget: float  # the share of the decoder layers' parameters to remove
    sparsity: float  # of the MLP channels, in every layer
    layout: HeadLayout | None  # None: heads untouched
    removed: int  # parameters the split removes from the decoder layers (from the shapes)
    total: int  # parameters of the decoder layers
    # Σ over layers of the attention's and the MLP's error for each candidate, by heads removed per
    # layer (0: none); empty when the heads were fixed by the caller
    objectives: dict[int, float] = field(default_factory=dict)

    @property
    def head_sparsity(self) -> float:
        return 0.0 if self.layout is None else self.layout.removed / self.layout.heads

    def describe(self) -> str:
        heads = "heads untouched" if self.layout is None else (
            f"{self.layout.removed} of {self.layout.heads} heads per layer ({self.layout.describe()})")
        weighed = "" if not self.objectives else "; summed layer errors by heads removed per layer: " + ", ".join(
            f"{removed}: {value:.4g}" for removed, value in sorted(self.objectives.items()))
        return (f"parameter budget {self.budget:.0%} of the decoder layers: MLP sparsity {self.sparsity:.1%}, {heads}, "
                f"{self.removed / self.total:.1%} of {self.total:,} parameters{weighed}")


def split_budget(loaded: LoadedModel, calibration: torch.Tensor, budget: float, head_sparsity: float | None = None,
                 batch_size: int = 4) -> BudgetSplit:
    """The MLP sparsity and head layout that remove `budget` of the decoder layers' parameters: with
    `head_sparsity` given the heads are fixed (0: untouched) and the MLP fills the rest, else the
    candidate with the smallest summed layer errors on `calibration` (one dense forward pass)."""
    costs, layers, total = _counts(loaded)
    candidates = budget_candidates(loaded, budget, head_sparsity)

    def channels(layout: HeadLayout | None) -> int:
        return _channels_removed(costs, layers, total, budget, layout)

    objectives = {}
    if len(candidates) > 1:
        objectives = _summed_layer_errors(loaded, calibration, candidates, channels, batch_size)
        chosen = min(candidates, key=lambda c: objectives[0 if c is None else c.removed])
    else:
        chosen = candidates[0]
    removed = layers * (channels(chosen) * costs.channel + costs.heads_removed(chosen))
    return BudgetSplit(budget=budget, sparsity=channels(chosen) / costs.width, layout=chosen, removed=removed,
                       total=total, objectives=objectives)


def budget_candidates(loaded: LoadedModel, budget: float,
                      head_sparsity: float | None = None) -> list[HeadLayout | None]:
    """The head layouts (None: heads untouched) among which a split of `budget` chooses, from the
    model's shapes alone: what lets a run refuse a budget it cannot meet before any forward pass."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0.0 < budget < 1.0:
        raise SpapInputError(f"The parameter budget must be a share strictly between 0 and 1 (got {budget!r}).")
    costs, layers, total = _counts(loaded)
    candidates: list[HeadLayout | None]
    if head_sparsity is not None or not costs.heads:
        candidates = [_layout(loaded, costs, head_sparsity or 0.0)]
    else:
        candidates = [None, *HeadLayout.every(costs.heads, costs.kv_heads, _allowed(loaded, costs))]
        # between layouts removing as many heads, the one that keeps more KV groups (as for_sparsity)
        candidates = list({(0 if c is None else c.removed): c for c in sorted(
            candidates, key=lambda c: 0 if c is None else -c.kv_kept)}.values())
    candidates = [c for c in candidates if 1 <= _channels_removed(costs, layers, total, budget, c) < costs.width]
    if not candidates:
        raise SpapInputError(f"A parameter budget of {budget:.0%} cannot be met with 1 to {costs.width - 1} "
                             "MLP channels removed per layer at the head sparsity asked for; "
                             "choose another budget or head sparsity.")
    return candidates


def _counts(loaded: LoadedModel) -> tuple[UnitCosts, int, int]:
    """The model's unit costs, its decoder layers and their parameters."""
    costs = UnitCosts.of(loaded)
    layers = len(loaded.family.decoder_layers(loaded.model))
    return costs, layers, costs.layer * layers


def _channels_removed(costs: UnitCosts, layers: int, total: int, budget: float, layout: HeadLayout | None) -> int:
    """MLP channels removed per layer so that, with `layout`, the run removes `budget` of `total`."""
    return round((budget * total - layers * costs.heads_removed(layout)) / (layers * costs.channel))


def _summed_layer_errors(loaded: LoadedModel, calibration: torch.Tensor, candidates: list[HeadLayout | None],
                         channels, batch_size: int) -> dict[int, float]:
    """For each candidate (by heads removed per layer), Σ over layers of the refit error of FLAP's
    selection: of the heads at its layout, plus of the MLP at the sparsity that fills the budget."""
    family = loaded.family
    head_refit = RefitSettings(bias=family.attention_heads.stores_output_bias)
    mlp_refit = RefitSettings(bias=family.mlp_channels.stores_output_bias)
    totals = {0 if c is None else c.removed: 0.0 for c in candidates}

    def visit(_index: int, layer: nn.Module, attention: GramAccumulator, mlp: GramAccumulator) -> None:
        output = family.mlp_channels.output_projection(layer)
        for candidate in candidates:
            problem = mlp.problem(projection_weight(output), channels(candidate))
            keep = problem.keep_columns(lowest(problem, flap_scores(problem)))
            error = refit(problem, keep, mlp_refit).known_objective
            if candidate is not None:
                heads_part = family.attention_heads
                heads = attention.problem(projection_weight(heads_part.output_projection(layer)), candidate.removed,
                                          group_size=heads_part.unit_columns(layer), layout=candidate)
                kept_heads = heads.keep_columns(lowest(heads, flap_scores(heads)))
                error += refit(heads, kept_heads, head_refit).known_objective
            totals[0 if candidate is None else candidate.removed] += error

    dense_layer_statistics(loaded, calibration, visit, batch_size)
    return totals


def _allowed(loaded: LoadedModel, costs: UnitCosts):
    return lambda layout: loaded.family.attention_heads.takes(layout.kept, layout.kv_kept, costs.head_dim)


def _layout(loaded: LoadedModel, costs: UnitCosts, share: float) -> HeadLayout | None:
    """The layout a run at head sparsity `share` keeps (None: heads untouched)."""
    if share == 0:
        return None
    if loaded.family.head_refusal is not None:
        loaded.family.attention_heads.shape(loaded.model)  # raises with the family's reason
    return HeadLayout.for_sparsity(costs.heads, costs.kv_heads, share, _allowed(loaded, costs))
