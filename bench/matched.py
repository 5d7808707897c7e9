"""Selection against selection with the same reconstruction: every method's kept channels with its
own weight update, with SPAP's refit (ridge towards the dense weights, bias), and with SPAP's refit
plus its alternating minimization. The table separates what SPAP's penalty path earns (its
selection) from what its refit and Adam steps recover, which any selection can get.

    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/matched.py --sparsities 0.3 0.4 \
        --eval wikitext2 shakespeare --out docs/results/matched.md --resume

Pairs that are the same run by construction are measured once: FASP's selection is Wanda-sp's (so
only its own update is run), and SPAP's own update is its refit plus alternating minimization.
Rows are written after each run; `--resume` keeps those of an earlier run of the same protocol,
except rows whose alternating minimization differs from today's default (they are measured again).
"""

from __future__ import annotations

import argparse
import json
import time
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
from quality import earlier_rows

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
    args = parser.parse_args()

    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    out = Path(args.out)
    rows = earlier_rows(out.with_suffix(".json"), vars(args), protocol.dense_ppl) if args.resume else []
    rows = rows_of_current_recovery(
        rows, lambda row: settings_of(row["method"], row["reconstruction"], row["sparsity"]))
    todo = [(method, name, sparsity) for sparsity in args.sparsities for method, name in pairs()
            if not any((row["method"], row["reconstruction"], row["sparsity"]) == (method, name, sparsity)
                       for row in rows)]
    settings = [settings_of(*point) for point in todo]
    for index, measured in measure_each(protocol, protocol_arguments(args), settings, args.seed, args.ray):
        method, name, sparsity = todo[index]
        rows.append({"method": method, "reconstruction": name, "sparsity": sparsity,
                     "altmin": recovery_record(settings[index]), **measured,
                     "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(json.dumps(rows[-1]), flush=True)
        write_outputs(out, protocol, rows, vars(args))
    write_outputs(out, protocol, rows, vars(args))
    print(out.read_text())


def settings_of(method: str, reconstruction: str, sparsity: float) -> PruneSettings:
    return PruneSettings(method=method, sparsity=sparsity, reconstruction=Reconstruction.named(reconstruction))


def ppl_of(rows: list[dict], method: str, name: str, sparsity: float, text: str) -> float | None:
    method, name = SAME_RUN.get((method, name), (method, name))
    if method in ONLY_OWN and name != OWN:
        method = "wanda-sp"
    found = [row for row in rows if (row["method"], row["reconstruction"], row["sparsity"]) == (method, name, sparsity)]
    return found[0]["ppl"][text] if found else None


def margin_lines(rows: list[dict], sparsity: float, text: str) -> list[str]:
    """SPAP against the best other selection, at each reconstruction: the last is its selection's worth."""
    lines = []
    for name in (OWN, REFIT, REFIT_ALTMIN):
        spap = ppl_of(rows, "spap", name, sparsity, text)
        others = {method: ppl_of(rows, method, name, sparsity, text) for method in SELECTIONS + ONLY_OWN
                  if method != "spap"}
        others = {method: value for method, value in others.items() if value is not None}
        if spap is None or not others:
            continue
        best = min(others, key=others.get)
        lines.append(f"| {sparsity:.2f} | {text} | {name} | {spap:.2f} | {best} {others[best]:.2f} | "
                     f"{100 * (spap / others[best] - 1):+.1f}% |")
    return lines


def write_outputs(out: Path, protocol, rows: list[dict], args: dict) -> None:
    texts = list(protocol.eval_sets)
    lines = ["# Selection against selection, with the same reconstruction", "", protocol.description, "",
             f"Reconstructions: `{OWN}` = the method's own update (SPAP's own is its refit + alternating minimization, "
             f"FASP's a plain least-squares refit, FLAP's a mean bias, magnitude's and Wanda-sp's none); `{REFIT}` = "
             f"SPAP's refit (ridge δ = 0.1 h̄ towards the dense weights, free bias); `{REFIT_ALTMIN}` = that plus "
             f"SPAP's alternating minimization ({recovery_description(rows)}). FASP's selection is Wanda-sp's, so its "
             "refit columns are Wanda-sp's.", ""]
    for sparsity in sorted({row["sparsity"] for row in rows}):
        for text in texts:
            lines += [f"## Sparsity {sparsity:.2f}, {text} (dense {protocol.dense_ppl[text]:.2f})", "",
                      f"| selection | {OWN} | {REFIT} | {REFIT_ALTMIN} |", "| --- | --- | --- | --- |"]
            for method in SELECTIONS + ONLY_OWN:
                cells = []
                for name in (OWN, REFIT, REFIT_ALTMIN):
                    value = ppl_of(rows, method, name, sparsity, text)
                    cells.append("–" if value is None else f"{value:.2f}")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## What SPAP's selection earns", "",
              "SPAP against the best other selection with the same reconstruction (negative = SPAP lower). "
              f"The `{OWN}` row is the usual comparison; the `{REFIT}` and `{REFIT_ALTMIN}` rows hold the weight "
              "update fixed, so they measure the penalty path's selection alone.", "",
              "| sparsity | text | reconstruction | SPAP | best other selection | SPAP vs it |",
              "| --- | --- | --- | --- | --- | --- |"]
    for sparsity in sorted({row["sparsity"] for row in rows}):
        for text in texts:
            lines += margin_lines(rows, sparsity, text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dense": protocol.dense_ppl, "rows": rows, "args": args}, indent=2))


if __name__ == "__main__":
    main()
