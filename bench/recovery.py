"""Every method before and after the same recovery budget (spap_core.recovery: LoRA, distillation or
both, on the calibration windows), and the two answers read from the rows: does SPAP's lead survive
the recovery, and how many recovery steps does each method need to reach SPAP without one?

    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/recovery.py --out docs/results/recovery.md --resume

Each (method, sparsity, seed) is one run of the run API with its recovery (common.Protocol.run): the
run evaluates the joined windows of every text before and after the recovery, so both perplexities
of both texts come from the same pruned model, on the same windows, with their window losses for the
intervals and the paired verdicts. The recovery trains on the calibration windows only; its held-out
perplexity, measured every few steps, is on the first HELDOUT_WINDOWS evaluation windows of the
first text (--eval-windows must leave it that many).

The default budget, LoRA for 50 steps of 2 calibration windows with the held-out perplexity every 5
steps, is sized for 2 CPU cores: a step costs about 2 forward passes of its windows (its backward
pass takes only the adapters' gradients; spap_service.estimates counts it so), so at the issue
protocol (32 × 512 calibration tokens) the 50 steps cost about 6 forward passes over the
calibration windows per run and the held-out checks (4 windows every 5 steps) about 1 more: about
130 passes for the grid's 18 runs, besides each run's second evaluation of both texts. The
recovery flags (--recover, --recover-steps, ...) are spap_core.recovery.settings' declarations
with this default.

Rows are written after each run; `--resume` keeps those of an earlier JSON of the same protocol and
recovery budget (another is refused) and measures the (method, sparsity, seed) it lacks.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from common import (
    add_protocol_args,
    load_protocol,
    measure_each,
    protocol_arguments,
    recovery_record,
    rows_of_current_recovery,
)
from plotly.subplots import make_subplots
from seeded import (
    add_seeds_arg,
    comparison,
    comparison_cell,
    earlier_payload,
    interval_cell,
    measure_rows,
    ratio_words,
    seed_list,
    tokens_per_window,
    verdict_group,
)

from spap_core.errors import SpapInputError
from spap_core.evaluation.intervals import perplexity_of, seeded_perplexity
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.pipeline.parameters import recovery_with_values
from spap_core.recovery.loop import HELDOUT_WINDOWS
from spap_core.recovery.settings import (
    DISTILL,
    LORA,
    LORA_DISTILL,
    RECOVERY_MODE,
    RECOVERY_PARAMETERS,
    RecoverySettings,
)

BENCH_METHODS = ["spap", "taylor", "flap", "fasp", "wanda-sp", "obs"]
BENCH_RECOVERY = RecoverySettings(mode=LORA, steps=50, batch=2, heldout_every=5)  # the module says why
RECOVERED, PRUNED = "the recovered model", "the pruned one"  # how a row's after ÷ before verdict names them
PROTOCOL_ARGS = ("model", "eval", "nsamples", "seqlen", "eval_windows", "seed",
                 *(declared.key for declared in RECOVERY_PARAMETERS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=BENCH_METHODS, choices=list(METHODS))
    add_seeds_arg(parser)
    add_protocol_args(parser, sparsities=[0.2, 0.3, 0.4], texts=["wikitext2", "shakespeare"])
    add_recovery_args(parser, BENCH_RECOVERY)
    args = parser.parse_args()
    recovery = recovery_of(parser, args)

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    out = Path(args.out)
    earlier = earlier_payload(out.with_suffix(".json"), vars(args), PROTOCOL_ARGS, protocol.dense_ppl) \
        if args.resume else None
    kept = rows_of_current_recovery(earlier["rows"] if earlier else [],
                                    lambda row: PruneSettings(method=row["method"], sparsity=row["sparsity"]))
    rows = {key(row): row for row in kept}
    points = {}
    for sparsity in args.sparsities:
        for method in args.methods:
            settings = PruneSettings(method=method, sparsity=sparsity)
            points[(method, sparsity)] = ({"method": method, "sparsity": sparsity,
                                           "altmin": recovery_record(settings)}, settings)
    payload = {"description": protocol.description, "recovery": recovery.describe(), "dense": protocol.dense_ppl,
               "tokens_per_window": tokens_per_window(protocol.dense), "heldout_windows": HELDOUT_WINDOWS,
               "args": vars(args)}

    def written(rows: dict) -> None:
        write_outputs(out, {**payload, "rows": table_rows(rows)})

    measure_rows(points, rows, seed_list(args),
                 lambda settings, seeds: measure_each(protocol, protocol_arguments(args), settings, seeds, args.ray,
                                                      recovery),
                 written)
    written(rows)
    print(out.read_text())


def add_recovery_args(parser: argparse.ArgumentParser, defaults: RecoverySettings,
                      modes: Sequence[str] = (LORA, DISTILL, LORA_DISTILL)) -> None:
    """One flag per declared recovery parameter, with `defaults`' value as its default, and the
    recovery `modes` the bench can run (never none: a recovery bench measures one)."""
    group = parser.add_argument_group("recovery after pruning, the same for every run")
    for declared in RECOVERY_PARAMETERS:
        default = declared.read(defaults)
        choices = list(modes) if declared.key == RECOVERY_MODE else list(declared.choices) or None
        group.add_argument(*declared.flags, dest=declared.key, type=declared.kind, default=default, choices=choices,
                           help=f"{declared.help} Default: {declared.format(default)}.")


def recovery_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RecoverySettings:
    """The recovery the flags ask for, each value checked by its declaration; and the evaluation
    windows the held-out perplexity needs from the first text."""
    if args.eval_windows < HELDOUT_WINDOWS:
        parser.error(f"--eval-windows must be at least {HELDOUT_WINDOWS}: the recovery's held-out perplexity is "
                     f"measured on the first text's first {HELDOUT_WINDOWS} windows.")
    try:
        return recovery_with_values({declared.key: getattr(args, declared.key) for declared in RECOVERY_PARAMETERS})
    except SpapInputError as exc:
        parser.error(str(exc))


def key(row: dict) -> tuple[str, float]:
    return row["method"], row["sparsity"]


def table_rows(rows: dict[tuple[str, float], dict]) -> list[dict]:
    """The rows by sparsity, then in the methods' registry order."""
    order = list(METHODS)
    return sorted(rows.values(), key=lambda row: (row["sparsity"], order.index(row["method"])
                                                  if row["method"] in order else len(order)))


def before_recovery(row: dict) -> dict:
    """The row as its pruned models were before their recovery: the fields seeded's cells read."""
    losses = row["window_nll_before_recovery_by_seed"]
    return {"seeds": row["seeds"], "window_nll_by_seed": losses,
            "ppl": {name: seeded_perplexity(by_seed).perplexity for name, by_seed in losses.items()}}


def recovery_seconds(row: dict) -> float:
    """The recovery's wall time, the mean over the row's seeds."""
    return sum(record["seconds"] for record in row["recovery_by_seed"]) / len(row["recovery_by_seed"])


def heldout_curve(row: dict) -> list[tuple[int, float]]:
    """(step, held-out perplexity) over the row's seeds: exp of the mean of each seed's mean loss,
    as the row's perplexity combines its seeds (every seed measured at the same steps)."""
    by_seed = [record["heldout_ppl"] for record in row["recovery_by_seed"]]
    return [(points[0][0], perplexity_of(sum(math.log(ppl) for _, ppl in points) / len(points)))
            for points in zip(*by_seed, strict=True)]


def heldout_before(row: dict, text: str, windows: int) -> float:
    """The row's perplexity before its recovery on the held-out windows (the first `windows` of
    `text`, the run's first), over its seeds."""
    losses = [seed_losses[:windows] for seed_losses in row["window_nll_before_recovery_by_seed"][text]]
    return perplexity_of(sum(map(sum, losses)) / sum(map(len, losses)))


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """The first measured step whose held-out perplexity is at or below `target`; None if none is."""
    return next((step for step, ppl in curve if ppl <= target), None)


def lead_answer(before_group: str, after_group: str, best_after: str) -> str:
    """Whether SPAP's lead survives the recovery, from the verdicts (seeded.verdict_group) of SPAP
    against the best other method before and after it."""
    after = {"lower": "SPAP is lower", "higher": f"{best_after} is lower",
             "not distinguishable": "not distinguishable", "none": "no verdict (no interval)"}[after_group]
    if before_group != "lower":
        return f"SPAP had no lead before recovery; after it, {after}"
    return {"lower": "survives", "higher": f"does not survive ({best_after} is lower after recovery)",
            "not distinguishable": "not distinguishable after recovery",
            "none": "no verdict after recovery (no interval)"}[after_group]


def lead_lines(rows: list[dict], texts: list[str], tokens: dict[str, int]) -> list[str]:
    """Per sparsity and text: SPAP after recovery against the best other method after it, and
    before against the best other before, each with its paired ratio and verdict, and the answer."""
    lines = []
    for sparsity in sorted({row["sparsity"] for row in rows}):
        at = [row for row in rows if row["sparsity"] == sparsity]
        spap = next((row for row in at if row["method"] == "spap"), None)
        others = [row for row in at if row["method"] != "spap"]
        if spap is None or not others:
            continue
        for text in texts:
            best_before = min(others, key=lambda row: before_recovery(row)["ppl"][text])
            best_after = min(others, key=lambda row: row["ppl"][text])
            before = comparison(before_recovery(spap), before_recovery(best_before), text, tokens[text])
            after = comparison(spap, best_after, text, tokens[text])
            answer = lead_answer(verdict_group(before), verdict_group(after), best_after["method"])
            lines.append(f"- **{sparsity:.2f}, {text}: {answer}.** After recovery SPAP ÷ {best_after['method']} "
                         f"(the best other after it) {ratio_words(after)}; before it SPAP ÷ "
                         f"{best_before['method']} (the best other before it) {ratio_words(before)}.")
    return lines


def reach_lines(rows: list[dict], first_text: str, windows: int) -> list[str]:
    """Per sparsity: the recovery steps each method's held-out perplexity takes to reach SPAP's
    perplexity without recovery on the same held-out windows (0: already there before it); SPAP's
    own is 0 by construction, so it is left out."""
    lines = []
    for sparsity in sorted({row["sparsity"] for row in rows}):
        at = [row for row in rows if row["sparsity"] == sparsity]
        spap = next((row for row in at if row["method"] == "spap"), None)
        if spap is None:
            continue
        target = heldout_before(spap, first_text, windows)
        parts = []
        for row in (row for row in at if row is not spap):
            curve = heldout_curve(row)
            if heldout_before(row, first_text, windows) <= target:
                parts.append(f"{row['method']} 0 (already there before recovery)")
                continue
            reached = steps_to_reach(curve, target)
            parts.append(f"{row['method']} " + (f"{reached} steps" if reached is not None
                                                else f"not within {curve[-1][0]} steps"))
        lines.append(f"- **{sparsity:.2f}** (SPAP without recovery: {target:.2f} on these windows): "
                     + "; ".join(parts) + ".")
    return lines


def write_outputs(out: Path, payload: dict) -> None:
    """Markdown tables (per text: before and after with their intervals, after ÷ before with its
    verdict, the times), the two answers in one line each, the payload as JSON and an HTML chart
    of the held-out perplexity against the steps; everything from the payload alone."""
    rows, texts, tokens = payload["rows"], list(payload["dense"]), payload["tokens_per_window"]
    windows = payload["heldout_windows"]
    every = sorted({record["settings"]["heldout_every"] for row in rows for record in row["recovery_by_seed"]})
    lines = ["# Recovery after pruning: every method before and after the same budget", "",
             payload["description"], "", f"Recovery: {payload['recovery']}, on the calibration windows.", "",
             "Each row is one run per calibration seed: the pruned model measured on every text, recovered, and "
             "measured again on the same windows. Perplexities show their 95% interval over windows and seeds; "
             "after ÷ before pairs the two window by window (spap_core.evaluation.intervals), and a verdict names "
             "the lower side only when its interval excludes 1. Times are means over the seeds.", ""]
    for text in texts:
        lines += [f"## {text} (dense {payload['dense'][text]:.2f})", "",
                  "| method | sparsity | ppl before [95%] | ppl after [95%] | after ÷ before [95%] | recovery s | "
                  "prune s |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in rows:
            lines.append(f"| {row['method']} | {row['sparsity']:.2f} | {interval_cell(before_recovery(row), text)} | "
                         f"{interval_cell(row, text)} | "
                         f"{comparison_cell(row, before_recovery(row), text, tokens[text], RECOVERED, PRUNED)} | "
                         f"{recovery_seconds(row):.1f} | {row['prune_seconds']:.1f} |")
        lines.append("")
    lines += ["## Does SPAP's lead survive recovery?", "",
              "SPAP against the other method with the lowest perplexity, after recovery and before it (SPAP ÷ it "
              "below 1: SPAP lower), paired window by window.", "", *lead_lines(rows, texts, tokens), "",
              "## How many recovery steps does each method need to reach SPAP without recovery?", "",
              f"On the recovery's held-out windows (the first {windows} of {texts[0]}), the first step whose "
              "held-out perplexity is at or below SPAP's there before recovery; the held-out perplexity is "
              f"measured every {' or '.join(map(str, every))} steps, so a count is the first such step, not the "
              "exact one.", "", *reach_lines(rows, texts[0], windows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    write_chart(out.with_suffix(".html"), payload)


def write_chart(path: Path, payload: dict) -> None:
    """The held-out perplexity against the recovery steps, one panel per sparsity, each method from
    its perplexity before recovery (step 0), with SPAP's before recovery as the dotted line."""
    rows, text, windows = payload["rows"], next(iter(payload["dense"])), payload["heldout_windows"]
    sparsities = sorted({row["sparsity"] for row in rows})
    figure = make_subplots(rows=1, cols=max(1, len(sparsities)), subplot_titles=[f"{s:.0%}" for s in sparsities])
    for column, sparsity in enumerate(sparsities, start=1):
        for row in (row for row in rows if row["sparsity"] == sparsity):
            curve = [(0, heldout_before(row, text, windows)), *heldout_curve(row)]
            figure.add_trace(go.Scatter(x=[step for step, _ in curve], y=[ppl for _, ppl in curve],
                                        mode="lines+markers", name=row["method"], legendgroup=row["method"],
                                        showlegend=column == 1), row=1, col=column)
        spap = next((row for row in rows if row["sparsity"] == sparsity and row["method"] == "spap"), None)
        if spap is not None:
            figure.add_hline(y=heldout_before(spap, text, windows), line_dash="dot",
                             annotation_text="SPAP before recovery", row=1, col=column)
    figure.update_yaxes(type="log", title_text=f"held-out perplexity, first {windows} windows of {text} (log)")
    figure.update_xaxes(title_text="recovery step")
    figure.update_layout(title=payload["recovery"], title_font_size=11)
    figure.write_html(path, include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
