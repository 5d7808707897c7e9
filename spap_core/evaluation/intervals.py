"""A 95% interval on a perplexity from the mean losses of its evaluation windows.

The interval is Student's t-interval on the windows' mean negative log-likelihoods, mapped through
exp: exp(m ± t_{0.975, W−1} · s / √W), m and s the mean and sample standard deviation of the W
window means. The windows are the unit of independence: tokens within a window share their context,
so their losses are correlated and a per-token interval would be too narrow, while the windows are
disjoint stretches of text. Every window predicts the same number of tokens, so the mean of the
window means is the token mean, and exp(m) is the perplexity itself, inside its interval. A
t-interval is cheap (no resampling, a fraction of a millisecond against the evaluation's forward
passes), deterministic (no seed, so a run reads the same interval every time it is opened) and
keeps its coverage at the 8 windows of a quick run, where a percentile bootstrap's falls to about
89% (docs/spap-design.md, "Intervals on perplexity").

What it does not see: which calibration tokens the pruning drew. Another calibration seed gives
another pruned model, whose perplexity can move by more than this interval's width.

Two perplexities measured on the same windows are compared pairwise (paired_comparison): the same
t-interval on the windows' differences of mean losses gives the ratio of the perplexities with its
interval, far narrower than the two perplexities' own intervals, since a window that is hard for one
model is hard for the other and the difference cancels that shared difficulty.

A run repeated over S calibration seeds (the same evaluation windows, S pruned models) has an S × W
matrix of window losses. Its perplexity is exp of the matrix's mean, and its interval adds the two
sources of noise in variance: var(window means over seeds)/W + var(seed means over windows)/S, with
Welch–Satterthwaite degrees of freedom (rounded down) for the t quantile (combined_half_width). The
seed-by-window interaction enters both terms, so the interval is, if anything, a little wide. With
one seed the seed term is 0 and the interval is the window interval above. A comparison takes its
seed term from the per-seed differences when both sides ran the same seeds (each seed's two
calibrations are the same tokens), else from each side's own seed means."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
BISECTION_STEPS = 200  # halves the bracket to below a float's resolution well before the last step


def perplexity_interval(window_nll: Sequence[float]) -> tuple[float, float] | None:
    """The 95% interval (low, high) on the perplexity exp(mean of `window_nll`), the windows' mean
    losses in nats per predicted token; None with fewer than 2 windows, where no spread can be
    measured. A bound beyond a float's range is inf."""
    return seeded_perplexity([window_nll]).ci95 if window_nll else None


@dataclass(frozen=True)
class SeededPerplexity:
    """A perplexity over S calibration seeds and W evaluation windows."""

    perplexity: float  # exp of the mean loss over every seed and window
    ci95: tuple[float, float] | None  # windows and seeds combined (combined_half_width); None with < 2 windows
    seed_range: tuple[float, float] | None  # the lowest and highest one-seed perplexity; None with one seed
    seeds: int


def seeded_perplexity(window_nll_by_seed: Sequence[Sequence[float]]) -> SeededPerplexity:
    """The perplexity of S runs on the same W windows (one row of window losses per calibration
    seed), its 95% interval with both the windows' and the seeds' noise, and the seeds' spread."""
    rows = _matrix(window_nll_by_seed)
    mean = _mean([_mean(row) for row in rows])
    half_width = combined_half_width(_column_means(rows), [[_mean(row) for row in rows]])
    interval = None if half_width is None else (perplexity_of(mean - half_width), perplexity_of(mean + half_width))
    by_seed = [perplexity_of(_mean(row)) for row in rows]
    spread = (min(by_seed), max(by_seed)) if len(rows) > 1 else None
    return SeededPerplexity(perplexity_of(mean), interval, spread, len(rows))


def combined_half_width(window_values: Sequence[float], seed_groups: Sequence[Sequence[float]]) -> float | None:
    """The 95% half-width on a mean loss (or mean difference) measured on W windows and repeated over
    calibration seeds: √(var(window_values)/W + Σ var(group)/n) times t at Welch–Satterthwaite's
    degrees of freedom, rounded down. `window_values` are the W per-window values averaged over the
    seeds; each of `seed_groups` holds one value per seed (averaged over the windows), and a group
    of one seed adds nothing (its spread is not measured). None with fewer than 2 windows."""
    count = len(window_values)
    if count < 2:
        return None
    parts = [(_variance(window_values) / count, count - 1)]
    parts += [(_variance(group) / len(group), len(group) - 1) for group in seed_groups if len(group) > 1]
    total = math.fsum(variance for variance, _ in parts)
    if total == 0:
        return 0.0  # identical losses: a zero spread is a zero half-width, never a division
    degrees = total ** 2 / math.fsum(variance ** 2 / freedom for variance, freedom in parts)
    return t_quantile_975(max(1, math.floor(degrees + 1e-9))) * math.sqrt(total)


@dataclass(frozen=True)
class PairedComparison:
    """Perplexity A against perplexity B on the same evaluation windows."""

    ratio: float | None  # ppl_a / ppl_b; None when a side keeps no window losses
    ci95: tuple[float, float] | None  # the ratio's 95% interval; None when no pairwise interval can be measured
    verdict: str  # "A is lower", "B is lower", "not distinguishable on these N tokens", or why there is none
    tokens: int  # predicted tokens the pairs cover (windows × tokens per window); 0 when not paired
    seeds: tuple[int, int] = (1, 1)  # calibration seeds of A and of B
    seed_spread: tuple[float, float] | None = None  # the lowest and highest one-seed ratio, when seeds pair up

    @property
    def distinguishable(self) -> bool:
        return self.verdict in ("A is lower", "B is lower")


def paired_comparison(window_nll_a: Sequence[float], window_nll_b: Sequence[float],
                      tokens_per_window: int) -> PairedComparison:
    """Perplexities A and B compared window by window: with d the windows' differences of mean losses
    (A − B), the ratio ppl_a/ppl_b is exp(mean d) and its 95% interval exp(mean d ± t·sd(d)/√W). A is
    lower (or B) only when the interval excludes 1; else the two are not distinguishable on the
    W × `tokens_per_window` tokens. With different window counts, or fewer than 2 windows, there is
    no interval, and the verdict says why. Identical losses give a ratio of exactly 1 and the
    interval (1, 1)."""
    return seeded_comparison([window_nll_a] if len(window_nll_a) else [],
                             [window_nll_b] if len(window_nll_b) else [], tokens_per_window)


def seeded_comparison(window_nll_by_seed_a: Sequence[Sequence[float]], window_nll_by_seed_b: Sequence[Sequence[float]],
                      tokens_per_window: int, seeds_pair: bool = False) -> PairedComparison:
    """Perplexities A and B, each over its calibration seeds (one row of window losses per seed, every
    row on the same windows), compared window by window: the ratio is exp(mean loss of A − mean loss
    of B), its interval combined_half_width's on the windows' differences (averaged over each side's
    seeds) and on the seeds' spread: the per-seed differences when `seeds_pair` (both sides ran the
    same seeds, so seed i drew the same calibration tokens on both), else each side's own seed means.
    The verdict names the lower side only when the interval excludes 1."""
    rows_a, rows_b = _matrix(window_nll_by_seed_a), _matrix(window_nll_by_seed_b)
    seeds = (len(rows_a), len(rows_b))
    if not rows_a or not rows_b:
        missing = " and ".join(side for side, rows in (("A", rows_a), ("B", rows_b)) if not rows)
        return PairedComparison(None, None, f"no verdict: {missing} kept no window losses", 0, seeds)
    count_a, count_b = len(rows_a[0]), len(rows_b[0])
    means_a, means_b = [_mean(row) for row in rows_a], [_mean(row) for row in rows_b]
    mean = _mean(means_a) - _mean(means_b)
    ratio = perplexity_of(mean)  # exactly 1.0 for identical losses: every difference is 0.0
    if count_a != count_b:
        why = f"not comparable pairwise: A was evaluated on {_windows(count_a)}, B on {_windows(count_b)}"
        return PairedComparison(ratio, None, why, 0, seeds)
    tokens = count_a * tokens_per_window
    seeds_pair = seeds_pair and seeds[0] == seeds[1]
    by_seed = [a - b for a, b in zip(means_a, means_b, strict=True)] if seeds_pair else []
    spread = (perplexity_of(min(by_seed)), perplexity_of(max(by_seed))) if len(by_seed) > 1 else None
    differences = [a - b for a, b in zip(_column_means(rows_a), _column_means(rows_b), strict=True)]
    half_width = combined_half_width(differences, [by_seed] if seeds_pair else [means_a, means_b])
    if half_width is None:
        return PairedComparison(ratio, None, f"no verdict: {_windows(count_a)} ({tokens:,} tokens), too few to "
                                             "measure the spread (2 needed)", tokens, seeds, spread)
    low, high = perplexity_of(mean - half_width), perplexity_of(mean + half_width)
    if high < 1:
        verdict = "A is lower"
    elif low > 1:
        verdict = "B is lower"
    else:
        verdict = f"not distinguishable on these {tokens:,} tokens" + _seed_words(seeds)
    return PairedComparison(ratio, (low, high), verdict, tokens, seeds, spread)


def named_verdict(comparison: PairedComparison, name_a: str, name_b: str) -> str:
    """The comparison's verdict with its sides named ('the pruned model', 'run B'): "A is lower" reads
    "the pruned model's perplexity is lower than the dense model's", and every other verdict names
    A and B where it mentions them."""
    if comparison.verdict == "A is lower":
        return f"{name_a}'s perplexity is lower than {name_b}'s"
    if comparison.verdict == "B is lower":
        return f"{name_b}'s perplexity is lower than {name_a}'s"
    return re.sub(r"\b[AB]\b", lambda side: name_a if side.group() == "A" else name_b, comparison.verdict)


def _seed_words(seeds: tuple[int, int]) -> str:
    """What the calibration seeds add to a verdict's 'on these N tokens': nothing for one seed each."""
    if seeds == (1, 1):
        return ""
    if seeds[0] == seeds[1]:
        return f" and {seeds[0]} calibration seeds"
    return f", with {seeds[0]} and {seeds[1]} calibration seeds"


# What decides a run's evaluation windows, as its record holds it: the first eval_windows windows of
# eval_len tokens of the evaluation text (spap_core.data.texts.evaluation_windows), cut by the model's
# tokenizer. The seed is not among them: it draws the calibration only, so runs of two calibration
# seeds are compared on the same windows.
EVALUATION_IDENTITY = {"model": "model", "eval_source": "evaluation text", "eval_windows": "window count",
                       "eval_len": "window length"}
# The dense model's loss on each window, where both records keep it, is the check that the windows
# held the same tokens (a file of the same name can change): equal to this tolerance (nats), which
# covers another device's rounding and nothing a different text could give.
DENSE_LOSS_TOLERANCE = 1e-4


def compare_runs(record_a: Mapping[str, Any], record_b: Mapping[str, Any]) -> PairedComparison:
    """Run A's pruned perplexity against run B's, from their records (storage.runs.read_record):
    paired when both were evaluated on the same windows (EVALUATION_IDENTITY, and the dense model's
    loss on each window where both keep it), else the verdict names what differs and there is no
    interval."""
    differing = [what + (" not recorded" if record_a.get(key) is None or record_b.get(key) is None else "")
                 for key, what in EVALUATION_IDENTITY.items()
                 if record_a.get(key) is None or record_a.get(key) != record_b.get(key)]
    dense_a, dense_b = _losses(record_a, "window_nll_dense"), _losses(record_b, "window_nll_dense")
    if not differing and dense_a and dense_b and (len(dense_a) != len(dense_b) or any(
            abs(a - b) > DENSE_LOSS_TOLERANCE for a, b in zip(dense_a, dense_b))):
        differing.append("their tokens: the dense model's loss differs window by window")
    rows_a, rows_b = losses_by_seed(record_a), losses_by_seed(record_b)
    if differing:
        ratio = perplexity_of(_matrix_mean(rows_a) - _matrix_mean(rows_b)) if rows_a and rows_b else None
        return PairedComparison(ratio, None, "not comparable pairwise: different evaluation windows "
                                             f"({', '.join(differing)})", 0, (len(rows_a), len(rows_b)))
    seeds_pair = record_seeds(record_a) == record_seeds(record_b)
    # each window predicts L − 1 tokens
    return seeded_comparison(rows_a, rows_b, record_a["eval_len"] - 1, seeds_pair=seeds_pair)


# A run repeated over calibration seeds keeps, besides its own seed's fields, every seed's window
# losses (the run's own first) and the seeds, in this order.
SEED_KEYS = ("seeds", "window_nll_by_seed")


def seed_fields(seeds: Sequence[int], window_nll_by_seed: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The record fields of a run repeated over `seeds` (the run's own seed first): the seeds, each
    seed's window losses, each seed's perplexity, and the perplexity over all of them with its
    interval (windows and seeds combined) and the seeds' range."""
    combined = seeded_perplexity(window_nll_by_seed)
    return {"seeds": list(seeds), "window_nll_by_seed": [list(row) for row in window_nll_by_seed],
            "ppl_by_seed": [perplexity_of(_mean(row)) for row in window_nll_by_seed],
            "ppl_seeds": combined.perplexity, "ppl_seeds_ci95": None if combined.ci95 is None else list(combined.ci95),
            "ppl_seed_range": None if combined.seed_range is None else list(combined.seed_range)}


def losses_by_seed(record: Mapping[str, Any]) -> list[list[float]]:
    """A record's window losses, one row per calibration seed: every seed's when the run was repeated
    over seeds, else its own (none when it kept none)."""
    rows = record.get("window_nll_by_seed")
    if isinstance(rows, list) and rows and all(isinstance(row, list) and row for row in rows):
        return [list(row) for row in rows]
    own = _losses(record)
    return [own] if own else []


def record_seeds(record: Mapping[str, Any]) -> list[Any]:
    """The calibration seeds a record's window losses come from, in losses_by_seed's order."""
    seeds = record.get("seeds")
    return list(seeds) if isinstance(seeds, list) and seeds else [record.get("seed")]


def _losses(record: Mapping[str, Any], key: str = "window_nll") -> list[float]:
    window_nll = record.get(key)
    return list(window_nll) if isinstance(window_nll, list) else []


def _matrix(window_nll_by_seed: Sequence[Sequence[float]]) -> list[list[float]]:
    """The rows as lists, refused unless every seed has the same windows (same count, at least one)."""
    rows = [list(row) for row in window_nll_by_seed]
    if any(len(row) != len(rows[0]) or not row for row in rows):
        raise ValueError("every calibration seed must be evaluated on the same windows")
    return rows


def _matrix_mean(rows: Sequence[Sequence[float]]) -> float:
    return _mean([_mean(row) for row in rows])


def _column_means(rows: Sequence[Sequence[float]]) -> list[float]:
    """Each window's loss averaged over the seeds."""
    return [_mean(column) for column in zip(*rows, strict=True)]


def _variance(values: Sequence[float]) -> float:
    mean = _mean(values)
    return math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _windows(count: int) -> str:
    return f"{count} window" + ("" if count == 1 else "s")


def perplexity_of(mean_nll: float) -> float:
    """exp of a mean loss in nats: a perplexity, inf beyond a float's range."""
    return math.exp(mean_nll) if mean_nll < 700 else math.inf


@functools.cache
def t_quantile_975(degrees_of_freedom: int) -> float:
    """t_{0.975, ν}: the t such that P(|T| < t) = 0.95 for Student's T with ν degrees of freedom,
    by bisection on the exact central probability (_t_central_probability), so no table and no
    scipy (which the package does not depend on)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {degrees_of_freedom}")
    low, high = 0.0, 2.0
    while _t_central_probability(high, degrees_of_freedom) < CONFIDENCE:
        low, high = high, 2 * high
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if _t_central_probability(middle, degrees_of_freedom) < CONFIDENCE:
            low = middle
        else:
            high = middle
    return high


def _t_central_probability(t: float, degrees_of_freedom: int) -> float:
    """P(|T| < t) for Student's T with an integer ν, by the finite series of Abramowitz & Stegun
    26.7.3 and 26.7.4: with θ = atan(t/√ν), for odd ν
    (2/π)(θ + sin θ (cos θ + (2/3) cos³θ + … + (2·4…(ν−3))/(1·3…(ν−2)) cos^{ν−2}θ)), and for even ν
    sin θ (1 + (1/2) cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3…(ν−3))/(2·4…(ν−2)) cos^{ν−2}θ)."""
    theta = math.atan(t / math.sqrt(degrees_of_freedom))
    cos_squared = math.cos(theta) ** 2
    if degrees_of_freedom % 2 == 0:
        term, series = 1.0, 1.0
        for power in range(2, degrees_of_freedom - 1, 2):  # term for cos^power θ
            term *= (power - 1) / power * cos_squared
            series += term
        return math.sin(theta) * series
    if degrees_of_freedom == 1:
        return 2 / math.pi * theta
    term = series = math.cos(theta)
    for power in range(3, degrees_of_freedom - 1, 2):  # term for cos^power θ
        term *= (power - 1) / power * cos_squared
        series += term
    return 2 / math.pi * (theta + math.sin(theta) * series)
