"""Peak memory of a CLI prune against the model's weight bytes: each mode runs in a child process
(`python -m spap_core prune ...`), whose peak resident set size the kernel reports when it ends.

    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/memory.py --out docs/results/memory.md

The baseline row only imports the library and loads the model, so the table separates what the
interpreter, torch and the weights cost from what pruning adds.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOAD_ONLY = ("from spap_core.models import load_model; import sys; m = load_model(sys.argv[1]).model; "
             "print(sum(p.numel() * p.element_size() for p in m.parameters()))")


def peak_rss_of(command: list[str]) -> tuple[int, str]:
    """Run `command` in a child process alone; its peak RSS in bytes (Linux reports KiB) and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise SystemExit("a child before this one peaked higher; run each mode in its own bench process")
    return after * 1024, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    load_peak, stdout = peak_rss_of([sys.executable, "-c", LOAD_ONLY, args.model])
    weights = int(stdout.strip().splitlines()[-1])
    prune = [sys.executable, "-m", "spap_core", "prune", "--model", args.model, "--nsamples", str(args.nsamples),
             "--seqlen", str(args.seqlen), "--eval-len", str(args.seqlen), "--eval-windows", "2", "--json"]
    prune_peak, _ = peak_rss_of(prune)
    rows = [{"mode": "load the model only", "peak_rss": load_peak},
            {"mode": f"prune (default: in place, {args.nsamples} × {args.seqlen} calibration, 2 evaluation windows)",
             "peak_rss": prune_peak}]
    lines = ["# Peak memory of a prune", "",
             f"Model {args.model}, weights {weights / 2**20:.0f} MiB. Machine: {platform.machine()} CPU. Peak "
             "resident set size of each child process, as the kernel reports it.", "",
             "| mode | peak RSS (MiB) | ÷ weight bytes |", "| --- | --- | --- |"]
    lines += [f"| {row['mode']} | {row['peak_rss'] / 2**20:.0f} | {row['peak_rss'] / weights:.2f} |" for row in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"weights": weights, "rows": rows, "args": vars(args)}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
