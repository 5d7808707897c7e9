"""Peak memory of a CLI prune against the model's weight bytes: each mode runs in a child process
(`python -m spap_core prune ...`), whose peak resident set size the kernel reports when it ends.

    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/memory.py --out docs/results/memory.md
    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/memory.py --random-llama /tmp/big-random \
        --method flap --out docs/results/memory-1.8g-random.md

The first rows only import the libraries, then also load the model, so the table separates what
the interpreter, torch and transformers cost (a fixed amount, large next to a 135M model and
negligible next to a 7B one) from what the weights and the pruning add.
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
IMPORTS_ONLY = "import spap_core.cli, spap_core.experiment"
LOAD_ONLY = ("from spap_core.models import load_model; import sys; m = load_model(sys.argv[1]).model; "
             "print(sum(p.numel() * p.element_size() for p in m.parameters()))")


def peak_rss_of(command: list[str]) -> tuple[int, str]:
    """Run `command` in a child process alone; its peak RSS in bytes (Linux reports KiB) and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise SystemExit("a child before this one peaked higher; run each mode in its own bench process, "
                         "lowest first")
    return after * 1024, done.stdout


def write_random_llama(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from spap_core.models import load_model

    tokenizer = load_model("smollm2", device="cpu").tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--method", default="spap")
    parser.add_argument("--random-llama", default=None, metavar="DIR",
                        help="first write a random 16-layer Llama of 1.8 GiB (SmolLM2's tokenizer) to DIR and measure "
                             "that: how the ratios change once the libraries' fixed cost is small next to the weights")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    if args.random_llama:
        write_random_llama(Path(args.random_llama))
        args.model = args.random_llama
    python = sys.executable
    prune = [python, "-m", "spap_core", "prune", "--model", args.model, "--method", args.method, "--device", "cpu",
             "--nsamples",
             str(args.nsamples), "--seqlen", str(args.seqlen), "--eval-len", str(args.seqlen), "--eval-windows", "2",
             "--batch-size", "1", "--json"]
    # one window per forward pass in both modes: the calibration chunks change the float rounding, and
    # with it (at 4 × 256 tokens) a few near-tied channel choices, so equal batches give equal results
    calibration = f"{args.nsamples} × {args.seqlen} calibration, 2 evaluation windows, batch 1"
    imports_peak, _ = peak_rss_of([python, "-c", IMPORTS_ONLY])
    load_peak, stdout = peak_rss_of([python, "-c", LOAD_ONLY, args.model])
    weights = int(stdout.strip().splitlines()[-1])
    # lowest peak first: the kernel reports the highest peak of all children so far
    low_peak, low_out = peak_rss_of([*prune, "--low-memory"])
    default_peak, default_out = peak_rss_of(prune)
    ppl = {name: json.loads(out.strip().splitlines()[-1])["ppl"] for name, out in
           (("low", low_out), ("default", default_out))}
    rows = [
        {"mode": "import the libraries only", "peak_rss": imports_peak},
        {"mode": "load the model only", "peak_rss": load_peak},
        {"mode": f"prune, default (in memory, in place; {calibration})", "peak_rss": default_peak,
         "ppl": ppl["default"]},
        {"mode": f"prune, `--low-memory` (every decoder layer on disk; {calibration})", "peak_rss": low_peak,
         "ppl": ppl["low"]},
    ]
    lines = ["# Peak memory of a prune", "",
             f"Model {args.model}, weights {weights / 2**20:.0f} MiB (float32), method {args.method}. Machine: {platform.machine()} CPU. Peak "
             "resident set size of each child process, as the kernel reports it; the last column leaves out the "
             "first row, the fixed cost of the interpreter and the libraries.", "",
             "| mode | peak RSS (MiB) | ÷ weight bytes | above the imports, ÷ weight bytes | pruned ppl |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {row['mode']} | {row['peak_rss'] / 2**20:.0f} | {row['peak_rss'] / weights:.2f} | "
              f"{(row['peak_rss'] - imports_peak) / weights:.2f} | {row.get('ppl', float('nan')):.2f} |"
              for row in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"weights": weights, "rows": rows, "args": vars(args)}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
