"""How sure a perplexity or a comparison is, in the words and numbers every page and table uses:
"42.72 [41.90, 43.57]", the seeds' range beside it, and a ratio with its interval and verdict
(the intervals themselves: spap_core.evaluation.intervals)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from spap_core.evaluation.intervals import PairedComparison

NO_INTERVAL = "no interval"  # a perplexity saved without its window losses, or measured on one window


def number(value: float, digits: int = 2) -> str:
    """A perplexity or a bound as a table shows it: 42.72, 17,690, inf."""
    if not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return f"{value:,.0f}" if value >= 10_000 else f"{value:,.{digits}f}"


def interval_text(interval: Sequence[float] | None) -> str:
    """A perplexity's 95% interval as a table cell: '[41.90, 43.57]', or 'no interval' for none."""
    return NO_INTERVAL if interval is None else f"[{number(interval[0])}, {number(interval[1])}]"


def perplexity_text(perplexity: float, ci95: Sequence[float] | None, seed_range: Sequence[float] | None = None,
                    seeds: int = 1) -> str:
    """'42.72 [41.90, 43.57]' (the 95% interval), '42.72 (no interval)' without one, and with more than
    one calibration seed the seeds' range after it: '42.72 [41.10, 44.40]; 3 seeds 42.10 to 43.30'."""
    text = f"{number(perplexity)} " + (interval_text(ci95) if ci95 is not None else f"({NO_INTERVAL})")
    if seed_range is not None and seeds > 1:
        text += f"; {seeds} seeds {number(seed_range[0])} to {number(seed_range[1])}"
    return text


def ratio_interval(ratio: float | None, ci95: Sequence[float] | None) -> str:
    """A ratio of perplexities with its 95% interval as a table cell: '0.946 [0.833, 1.074]',
    '0.946 (no interval)', or '–' without a ratio (None or NaN)."""
    if ratio is None or math.isnan(ratio):
        return "–"
    if ci95 is None or math.isnan(ci95[0]):
        return f"{ratio:.3f} ({NO_INTERVAL})"
    return f"{ratio:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"


def ratio_text(comparison: PairedComparison) -> str:
    """A comparison in one line: 'ratio 0.946 [0.833, 1.074]: not distinguishable on these 2,040 tokens',
    or its verdict alone when it has no ratio."""
    if comparison.ratio is None:
        return comparison.verdict
    return f"ratio {ratio_interval(comparison.ratio, comparison.ci95)}: {comparison.verdict}"
