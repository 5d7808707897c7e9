"""Selection against selection with the same reconstruction: every method's kept channels with its
own weight update, with SPAP's refit (ridge towards the dense weights, bias), and with SPAP's refit
plus its alternating minimization. The table separates what SPAP's penalty path earns (its
selection) from what its refit and Adam steps recover, which any selection can get.

    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/matched.py --sparsities 0.3 0.4 \
        --eval wikitext2 shakespeare --out docs/results/matched.md --resume

Pairs that are the same run by construction are measured once: FASP's selection is Wanda-sp's (so
only its own update is run), and SPAP's own update is its refit plus alternating minimization.
Rows are written after each seed (--seeds); `--resume` keeps those of an earlier run of the same
protocol and measures the seeds they lack, except rows whose alternating minimization differs from
today's default or that kept no window losses (they are measured again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import (
    add_protocol_args,
    load_protocol,
    measure_each,
    protocol_arguments,
    recovery_description,
    recovery_record,
    rows_of_current_recovery,
)
from seeded import (
    add_seeds_arg,
    comparison_cell,
    earlier_payload,
    interval_cell,
    measure_rows,
    seed_list,
    tokens_per_window,
)

from spap_core.methods.reconstruction import OWN, REFIT, REFIT_ALTMIN, Reconstruction
from spap_core.methods.registry import PruneSettings

SELECTIONS = ["magnitude", "wanda-sp", "flap", "obs", "spap"]
# (method, reconstruction) → the run it is identical to
SAME_RUN = {("spap", REFIT_ALTMIN): ("spap", OWN)}
ONLY_OWN = ["fasp"]  # its selection is Wanda-sp's; with SPAP's reconstruction it is that row


def pairs() -> list[tuple[str, str]]:
    runs = [(method, name) for method in SELECTIONS for name in (OWN, REFIT, REFIT_ALTMIN)
            if (method, name) not in SAME_RUN]
    return runs + [(method, OWN) for method in ONLY_OWN]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(parser, sparsities=[0.3, 0.4], texts=["wikitext2", "shakespeare"])
    add_seeds_arg(parser)
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    out = Path(args.out)
    earlier = earlier_payload(out.with_suffix(".json"), vars(args), PROTOCOL_ARGS, protocol.dense_ppl) \
        if args.resume else None
    kept = rows_of_current_recovery(earlier["rows"] if earlier else [],
                                    lambda row: settings_of(row["method"], row["reconstruction"], row["sparsity"]))
    points = {}
    for sparsity in args.sparsities:
        for method, name in pairs():
            settings = settings_of(method, name, sparsity)
            points[(method, name, sparsity)] = ({"method": method, "reconstruction": name, "sparsity": sparsity,
                                                 "altmin": recovery_record(settings)}, settings)
    # rows measured over seeds continue where they stopped; rows without window losses are measured again
    rows = {key(row): row for row in kept if key(row) in points and row.get("seeds")}
    payload = {"description": protocol.description, "dense": protocol.dense_ppl,
               "tokens_per_window": tokens_per_window(protocol.dense), "args": vars(args)}

    def written(rows: dict) -> None:  # with the kept rows not measured again yet, which show no interval
        shown = {**{key(row): row for row in kept}, **rows}
        order = [*points, *(point for point in shown if point not in points)]
        write_outputs(out, {**payload, "rows": sorted((shown[point] for point in order if point in shown),
                                                      key=lambda row: row["sparsity"])})

    measure_rows(points, rows, seed_list(args),
                 lambda settings, seeds: measure_each(protocol, protocol_arguments(args), settings, seeds, args.ray),
                 written)
    written(rows)
    print(out.read_text())


PROTOCOL_ARGS = ("model", "eval", "nsamples", "seqlen", "eval_windows", "seed")


def key(row: dict) -> tuple[str, str, float]:
    return row["method"], row["reconstruction"], row["sparsity"]


def settings_of(method: str, reconstruction: str, sparsity: float) -> PruneSettings:
    return PruneSettings(method=method, sparsity=sparsity, reconstruction=Reconstruction.named(reconstruction))


def row_of(rows: list[dict], method: str, name: str, sparsity: float) -> dict | None:
    """The row that measures `method`'s selection with reconstruction `name` (SAME_RUN and ONLY_OWN
    name the rows that stand for others)."""
    method, name = SAME_RUN.get((method, name), (method, name))
    if method in ONLY_OWN and name != OWN:
        method = "wanda-sp"
    return next((row for row in rows if key(row) == (method, name, sparsity)), None)


def margin_lines(rows: list[dict], sparsity: float, text: str, tokens: int) -> list[str]:
    """SPAP against the best other selection, at each reconstruction, with the paired verdict: the
    last rows are its selection's worth."""
    lines = []
    for name in (OWN, REFIT, REFIT_ALTMIN):
        spap = row_of(rows, "spap", name, sparsity)
        others = {method: row_of(rows, method, name, sparsity) for method in SELECTIONS + ONLY_OWN
                  if method != "spap"}
        found = {method: row for method, row in others.items() if row is not None}
        if spap is None or not found:
            continue
        best = min(found, key=lambda method: found[method]["ppl"][text])
        lines.append(f"| {sparsity:.2f} | {text} | {name} | {interval_cell(spap, text)} | {best} "
                     f"{interval_cell(found[best], text)} | "
                     f"{comparison_cell(spap, found[best], text, tokens, 'SPAP', best)} |")
    return lines


def write_outputs(out: Path, payload: dict) -> None:
    """The tables (every selection × reconstruction with its interval, and SPAP against the best
    other selection with the paired verdict) and the payload as JSON; the table rewrites from its
    JSON alone."""
    rows, texts, tokens = payload["rows"], list(payload["dense"]), payload["tokens_per_window"]
    seeds = sorted({len(row["seeds"]) for row in rows if row.get("seeds")}) or [1]
    lines = ["# Selection against selection, with the same reconstruction", "", payload["description"], "",
             f"Reconstructions: `{OWN}` = the method's own update (SPAP's own is its refit + alternating minimization, "
             f"FASP's a plain least-squares refit, FLAP's a mean bias, magnitude's and Wanda-sp's none); `{REFIT}` = "
             f"SPAP's refit (ridge δ = 0.1 h̄ towards the dense weights, free bias); `{REFIT_ALTMIN}` = that plus "
             f"SPAP's alternating minimization ({recovery_description(rows)}). FASP's selection is Wanda-sp's, so its "
             "refit columns are Wanda-sp's. Each perplexity is over "
             + " or ".join(str(count) for count in seeds) + " calibration seed(s) with its 95% interval, the "
             "windows' and the seeds' noise combined; SPAP against another selection is paired window by window "
             "with the seeds paired (spap_core.evaluation.intervals), and a verdict names the lower side only "
             "when its interval excludes 1. Rows kept by --resume from before window losses were recorded show "
             "their perplexity with '(no interval)' and have no verdict.", ""]
    for sparsity in sorted({row["sparsity"] for row in rows}):
        for text in texts:
            lines += [f"## Sparsity {sparsity:.2f}, {text} (dense {payload['dense'][text]:.2f})", "",
                      f"| selection | {OWN} [95%] | {REFIT} [95%] | {REFIT_ALTMIN} [95%] |",
                      "| --- | --- | --- | --- |"]
            for method in SELECTIONS + ONLY_OWN:
                cells = [row_of(rows, method, name, sparsity) for name in (OWN, REFIT, REFIT_ALTMIN)]
                lines.append(f"| {method} | " + " | ".join("–" if row is None else interval_cell(row, text)
                                                           for row in cells) + " |")
            lines.append("")
    lines += ["## What SPAP's selection earns", "",
              "SPAP against the best other selection with the same reconstruction (SPAP ÷ it below 1: SPAP lower). "
              f"The `{OWN}` row is the usual comparison; the `{REFIT}` and `{REFIT_ALTMIN}` rows hold the weight "
              "update fixed, so they measure the penalty path's selection alone.", "",
              "| sparsity | text | reconstruction | SPAP [95%] | best other selection [95%] | SPAP ÷ it [95%] |",
              "| --- | --- | --- | --- | --- | --- |"]
    for sparsity in sorted({row["sparsity"] for row in rows}):
        for text in texts:
            lines += margin_lines(rows, sparsity, text, tokens[text])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
