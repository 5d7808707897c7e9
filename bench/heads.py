"""MLP channels only against MLP channels and attention heads, at the same share of the decoder
layers' parameters: perplexity of SPAP and FLAP, parameters, and prefill and decode speed at two
context lengths (ratios to the dense model within one measurement run).

    SPAP_DATA_DIR=../shared/data python bench/heads.py --out docs/results/heads.md

Every row is one run of the run API with a parameter budget per calibration seed (--seeds): the
MLP-only row prunes channels alone (the split with the heads untouched); the MLP+heads row removes
--heads of every layer's heads and the MLP sparsity that fills the same budget; the split the
layer-objective criterion would choose is reported beside them. SPAP and FLAP prune the same
shapes, so the latency is measured once per shape. Every perplexity carries its 95% interval and
every comparison in the goals a paired verdict (bench/seeded.py).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from common import add_protocol_args, load_protocol, measured
from seeded import (
    add_seeds_arg,
    comparison,
    comparison_cell,
    interval_cell,
    ratio_words,
    seed_list,
    tokens_per_window,
    verdict_group,
    with_seed,
)

from spap_core.evaluation.latency import latency_ratios, measure_latencies
from spap_core.methods.registry import PruneSettings
from spap_core.pipeline.split import split_budget
from spap_core.runner.spec import ParameterBudget

MODES = ("MLP only", "MLP + heads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(parser, sparsities=[0.2, 0.3], texts=["wikitext2", "shakespeare"], resumable=False)
    add_seeds_arg(parser)
    parser.add_argument("--methods", nargs="+", default=["spap", "flap"])
    parser.add_argument("--heads", type=float, default=1 / 3, help="head sparsity of the MLP + heads rows")
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    protocol = load_protocol(args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, args.eval)
    loaded = protocol.loaded
    rows: dict[tuple, dict] = {}
    splits, shapes = {}, {}
    for budget in args.sparsities:
        chosen = split_budget(loaded, protocol.calibration, budget)
        splits[budget] = {"chosen": chosen.describe(), "head_sparsity": chosen.head_sparsity,
                          "objectives": chosen.objectives}
        for mode, heads in zip(MODES, (0.0, args.heads)):
            for method in args.methods:
                for seed in seed_list(args):
                    # the budget stands in for the MLP sparsity until the run's split decides it
                    result = protocol.with_calibration_seed(seed).run(
                        PruneSettings(method=method, sparsity=budget, head_sparsity=heads), seed,
                        ParameterBudget(budget, head_sparsity=heads))
                    split, experiment = result.split, result.experiment
                    assert split is not None  # a run with a budget splits it
                    identity = {"budget": budget, "mode": mode, "method": method, "sparsity": split.sparsity,
                                "head_sparsity": split.head_sparsity,
                                "params_before": experiment.result.params_before,
                                "layout": None if split.layout is None else split.layout.describe()}
                    rows[(budget, mode, method)] = with_seed(rows.get((budget, mode, method)), identity, seed,
                                                             measured(protocol, result))
                    shapes.setdefault((budget, mode), experiment.result.model)
                    print({**identity, "seed": seed, "ppl": rows[(budget, mode, method)]["ppl_by_seed"]}, flush=True)
    keys = list(shapes)
    latency = {}
    for context in args.contexts:
        dense, *pruned = measure_latencies([loaded.model, *shapes.values()], seqlen=context, decode_tokens=16,
                                           repeats=args.repeats, warmup=1)
        latency[context] = {f"{budget}|{mode}": latency_ratios(dense, report) | {"prefill_ms": report.prefill_ms.median}
                            for (budget, mode), report in zip(keys, pruned)}
        latency[context]["dense"] = {"prefill_ms": dense.prefill_ms.median,
                                     "decode_tokens_per_s": dense.decode_tokens_per_s.median}
    write_tables(out, {"description": protocol.description, "dense_ppl": protocol.dense_ppl,
                       "tokens_per_window": tokens_per_window(protocol.dense), "rows": list(rows.values()),
                       "splits": {str(k): v for k, v in splits.items()},
                       "latency": {str(k): v for k, v in latency.items()}, "args": vars(args)})


def write_tables(out: Path, payload: dict) -> None:
    """The table (perplexities with their intervals, parameters, speed-ups), the split the criterion
    chooses, and the goals said from the verdicts; the payload as JSON. Everything is computed from
    the payload, so the table rewrites from its JSON alone."""
    args, rows, latency, dense_ppl = payload["args"], payload["rows"], payload["latency"], payload["dense_ppl"]
    texts, contexts = list(dense_ppl), [str(c) for c in args["contexts"]]
    lines = ["# Attention heads: MLP only against MLP + heads at the same parameter budget", "",
             payload["description"], "",
             f"Every layer keeps the same head layout; the MLP + heads rows remove {args['heads']:.0%} of the heads "
             "(rounded to the nearest layout) and the MLP sparsity that fills the budget. Perplexities are over "
             f"{args['seeds']} calibration seed(s) with their 95% interval (windows' and seeds' noise combined); "
             "comparisons are paired window by window (spap_core.evaluation.intervals). Speed: prefill of one "
             f"window and greedy decoding of 16 tokens, median of {args['repeats']} rounds (each round times every "
             f"model once, the first seed's), {torch.get_num_threads()} threads on {platform.machine()}; ratios are "
             "dense ÷ pruned within one run. Command: `SPAP_DATA_DIR=../shared/data python bench/heads.py "
             f"--seeds {args['seeds']} --out docs/results/heads.md`.", "",
             "| budget | rows | method | MLP sparsity | heads | parameters M | "
             + " | ".join(f"ppl {t} [95%] (dense {dense_ppl[t]:.2f})" for t in texts)
             + " | " + " | ".join(f"prefill speed-up @{c}" for c in contexts) + " | decode speed-up |",
             "| --- " * (7 + len(texts) + len(contexts)) + "|"]
    for row in rows:
        shape = f"{row['budget']}|{row['mode']}"
        speed = [latency[c][shape]["prefill_speedup"] for c in contexts]
        decode = latency[contexts[0]][shape]["decode_speedup"]
        lines.append(f"| {row['budget']:.0%} | {row['mode']} | {row['method']} | {row['sparsity']:.1%} | "
                     f"{row['layout'] or 'all kept'} | {row['params_after'] / 1e6:.2f} | "
                     + " | ".join(interval_cell(row, t) for t in texts) + " | "
                     + " | ".join(f"{s:.3f}" for s in speed) + f" | {decode:.3f} |")
    lines += ["", "Dense prefill: " + ", ".join(f"{latency[c]['dense']['prefill_ms']:.0f} ms at {c} tokens"
                                                for c in contexts) + ".", ""]
    lines += ["## What the split criterion chooses", "",
              "Summed layer errors (½‖ΔY‖² of FLAP's selection after SPAP's refit, attention + MLP, on the dense "
              "model's statistics) by heads removed per layer; the smallest is chosen (spap_core.pipeline.split).", ""]
    lines += [f"- {float(budget):.0%}: {split['chosen']}" for budget, split in payload["splits"].items()]
    lines += ["", "## Goals", ""] + goal_lines(payload)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print(out.read_text())


def goal_lines(payload: dict) -> list[str]:
    """Whether MLP + heads gives the larger prefill speed-up at the longest context, and whether
    SPAP's heads are lower than FLAP's in perplexity (the paired verdict on every text), said from
    the rows themselves; and SPAP with heads against SPAP on the MLP alone."""
    rows, texts, tokens = payload["rows"], list(payload["dense_ppl"]), payload["tokens_per_window"]
    longest, lines = str(max(payload["args"]["contexts"])), []
    for budget in sorted({row["budget"] for row in rows}):
        only, heads = (payload["latency"][longest][f"{budget}|{mode}"]["prefill_speedup"] for mode in MODES)
        verdict = "holds" if heads > only else "does not hold"
        lines.append(f"- {budget:.0%}: MLP + heads {heads:.3f}× vs MLP only {only:.3f}× prefill at {longest} tokens: "
                     f"the speed goal {verdict}.")
        by_method = {row["method"]: row for row in rows if row["budget"] == budget and row["mode"] == MODES[1]}
        if {"spap", "flap"} <= set(by_method):
            compared = {t: comparison(by_method["spap"], by_method["flap"], t, tokens[t]) for t in texts}
            holds = all(verdict_group(one) == "lower" for one in compared.values())
            lines.append(f"- {budget:.0%}, MLP + heads: SPAP ÷ FLAP " + ", ".join(
                f"{ratio_words(compared[t])} ({t}, {verdict_group(compared[t])})" for t in texts)
                + f": the perplexity goal {'holds' if holds else 'does not hold'}.")
        mlp = {row["method"]: row for row in rows if row["budget"] == budget and row["mode"] == MODES[0]}
        if "spap" in mlp and "spap" in by_method:
            lines.append(f"- {budget:.0%}: SPAP MLP + heads ÷ SPAP MLP only: " + "; ".join(
                comparison_cell(by_method["spap"], mlp["spap"], t, tokens[t], "MLP + heads", "MLP only") + f" ({t})"
                for t in texts) + ".")
    return lines


if __name__ == "__main__":
    main()
