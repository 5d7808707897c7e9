"""Which sets of attention heads a pruned layer can keep, so that the family's transformers class
still loads and runs it.

Under grouped-query attention every key/value head serves `heads ÷ kv_heads` consecutive query
heads, and transformers builds every layer's attention from two config numbers
(num_attention_heads, num_key_value_heads) and repeats each KV head num_attention_heads ÷
num_key_value_heads times. So a pruned model loads with plain `from_pretrained`, and runs faster,
only if every layer keeps the same number of KV groups with the same number of query heads in each.
A `HeadLayout` is that pair; a method still chooses, layer by layer, *which* KV groups and which
query heads within them. (Padding to the widest layer, the route per-layer MLP widths take, would
keep the layout valid too, but a padded head still costs its full QKᵀ and attention-value products
in the vanilla load, which is the speed-up heads are pruned for.)

The choice itself is a greedy walk down a priority list (lowest score first, or the order a solver
removes heads in): a head is taken unless its removal would make the layout unreachable. Query
heads go within their group while the group keeps more than `per_group_kept`; a group may fall
below that only while fewer than `kv_heads − kv_kept` groups have, and then all of it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from spap_core.errors import SpapInputError


@dataclass(frozen=True)
class HeadLayout:
    """`kv_kept` KV groups of `per_group_kept` query heads each, out of `kv_heads` groups of
    `heads ÷ kv_heads` (the same in every layer)."""

    heads: int
    kv_heads: int
    kv_kept: int
    per_group_kept: int

    def __post_init__(self) -> None:
        if self.kv_heads < 1 or self.heads % self.kv_heads:
            raise SpapInputError(f"{self.heads} query heads cannot be split into {self.kv_heads} equal KV groups.")
        if not (1 <= self.kv_kept <= self.kv_heads and 1 <= self.per_group_kept <= self.group_size):
            raise SpapInputError(f"A layout keeps 1–{self.kv_heads} KV groups of 1–{self.group_size} query heads "
                                 f"(got {self.kv_kept} × {self.per_group_kept}).")

    @property
    def group_size(self) -> int:
        """Query heads per KV head in the dense model."""
        return self.heads // self.kv_heads

    @property
    def kept(self) -> int:
        return self.kv_kept * self.per_group_kept

    @property
    def removed(self) -> int:
        return self.heads - self.kept

    def kv_group(self, head: int) -> int:
        return head // self.group_size

    @staticmethod
    def every(heads: int, kv_heads: int,
              allowed: Callable[[HeadLayout], bool] = lambda _layout: True) -> list[HeadLayout]:
        """Every layout that removes at least one head and that `allowed` accepts."""
        group = heads // kv_heads
        return [layout for layout in (HeadLayout(heads, kv_heads, groups, per_group)
                                      for groups in range(1, kv_heads + 1) for per_group in range(1, group + 1)
                                      if groups * per_group < heads) if allowed(layout)]

    @staticmethod
    def for_sparsity(heads: int, kv_heads: int, sparsity: float,
                     allowed: Callable[[HeadLayout], bool] = lambda _layout: True) -> HeadLayout:
        """The layout whose share of removed heads is nearest `sparsity`, at least one head removed
        and one kept, among those `allowed` (the family's config class may refuse some counts:
        Llama's and Gemma's want the hidden size divisible by the head count); between layouts
        removing as many heads, the one that keeps more KV groups (query heads go within their
        groups first, whole groups only beyond that)."""
        if not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
            raise SpapInputError(f"Head sparsity must be strictly between 0 and 1 (got {sparsity!r}).")
        group = heads // kv_heads if kv_heads and heads % kv_heads == 0 else 0
        if heads < 2 or group < 1:
            raise SpapInputError(f"A layer of {heads} query heads over {kv_heads} KV heads has no head to remove "
                                 "while keeping one.")
        target = sparsity * heads
        candidates = HeadLayout.every(heads, kv_heads, allowed)
        if not candidates:
            raise SpapInputError(f"No smaller head count of {heads} query heads over {kv_heads} KV heads "
                                 "is accepted by "
                                 "the model's config class; prune its MLP channels only (head sparsity 0).")
        return min(candidates, key=lambda layout: (abs(layout.removed - target), -layout.kv_kept, layout.removed))

    def removal(self, priority: Iterable[int], count: int, already: Iterable[int] = ()) -> list[int]:
        """The first `count` heads of `priority` (not in `already`) whose removal keeps this layout
        reachable, given that the heads in `already` are gone. `count` + len(already) must not
        exceed `removed`; then the walk always finds them (there is always an eligible head while
        fewer than `removed` are gone)."""
        gone = set(already)
        if count + len(gone) > self.removed:
            raise ValueError(f"{count} more heads after {len(gone)} exceed this layout's {self.removed}")
        kept = [self.group_size] * self.kv_heads
        for head in gone:
            kept[self.kv_group(head)] -= 1
        chosen: list[int] = []
        pending = [head for head in priority if head not in gone]
        while len(chosen) < count:
            broken = sum(1 for k in kept if k < self.per_group_kept)
            for position, head in enumerate(pending):
                group = kept[self.kv_group(head)]
                if group > self.per_group_kept or group < self.per_group_kept or broken < self.kv_heads - self.kv_kept:
                    chosen.append(pending.pop(position))
                    kept[self.kv_group(head)] -= 1
                    break
            else:  # unreachable when count is within the layout (see the docstring)
                raise RuntimeError("no head can be removed without breaking the layout")
        return chosen

    def describe(self) -> str:
        """'6 of 9 heads: 3 KV groups × 2 query heads'."""
        grouping = (f"{self.kv_kept} KV group{'s' * (self.kv_kept != 1)} × {self.per_group_kept} query "
                    f"head{'s' * (self.per_group_kept != 1)}") if self.group_size > 1 else "no grouping"
        return f"{self.kept} of {self.heads} heads kept: {grouping}"
