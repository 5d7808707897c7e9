"""Peak memory of a CLI prune against the model's weight bytes: each mode runs in a child process
(`python -m spap_core prune ...`), whose peak resident set size the kernel reports when it ends.

    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/memory.py --out docs/results/memory.md
    SPAP_DATA_DIR=../shared/data PYTHONPATH=. python bench/memory.py --random-llama /tmp/big-random \
        --method flap --nsamples 4 --seqlen 256 --eval-windows 2 --batch-size 1 \
        --out docs/results/memory-1.8g-random.md

The defaults are the CLI's evaluation (8 windows of 512 tokens, batches of 4) with 8 × 512
calibration tokens. The first rows only import the libraries, then also load the model, then also
read every weight (they are mapped from the cached file, so they count only once read), then load it
and evaluate its perplexity on random tokens of the evaluation's shape. So the table separates what
the interpreter, torch and transformers cost (a fixed amount, large next to a 135M model and
negligible next to a 7B one) from what the weights, the evaluation and the pruning add.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTS_ONLY = "import spap_core.cli, spap_core.pipeline.experiment"
LOAD_ONLY = ("from spap_core.models.loading import load_model; "
             "from spap_core.evaluation.perplexity import chunk_tokens_for; import sys; "
             "m = load_model(sys.argv[1]).model; vocabulary = m.get_output_embeddings().weight.shape[0]; "
             "print(sum(p.numel() * p.element_size() for p in m.parameters()), vocabulary, "
             "chunk_tokens_for(vocabulary))")
# the weights are mapped from the cached file and count only once read: this row reads them all
LOAD_AND_READ = ("from spap_core.models.loading import load_model; import sys; m = load_model(sys.argv[1]).model; "
                 "[float(p.sum()) for p in m.parameters()]")
LOAD_AND_EVALUATE = ("import sys, torch; from spap_core.models.loading import load_model; "
                     "from spap_core.evaluation.perplexity import perplexity; m = load_model(sys.argv[1]).model; "
                     "windows, length, batch = map(int, sys.argv[2:]); "
                     "ids = torch.randint(m.config.vocab_size, (windows, length), "
                     "generator=torch.Generator().manual_seed(0)); perplexity(m, ids, batch_size=batch)")


def peak_rss_of(command: list[str]) -> tuple[int, str]:
    """Run `command` in a child process; its peak RSS in bytes (wait4 reports that child's, in KiB on
    Linux) and its stdout. Linux starts a child's peak at the peak of the process that started it,
    so this process imports no torch and writes the random model in a child of its own."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{stderr.read().decode()[-3000:]}")
        stdout.seek(0)
        return usage.ru_maxrss * 1024, stdout.read().decode()


def write_random_llama(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from spap_core.models.loading import load_model

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
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-len", type=int, default=None, help="tokens per evaluation window (default: --seqlen)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="windows per forward pass, calibration and evaluation")
    parser.add_argument("--method", default="spap")
    parser.add_argument("--random-llama", default=None, metavar="DIR",
                        help="first write a random 16-layer Llama of 1.8 GiB (SmolLM2's tokenizer) to DIR and measure "
                             "that: how the ratios change once the libraries' fixed cost is small next to the weights")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    if args.random_llama:
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from bench.memory import "
                        "write_random_llama; write_random_llama(Path(sys.argv[1]))", args.random_llama],
                       cwd=REPO, check=True)
        args.model = args.random_llama
    args.eval_len = args.eval_len or args.seqlen
    python = sys.executable
    prune = [python, "-m", "spap_core", "prune", "--model", args.model, "--method", args.method, "--device", "cpu",
             "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--eval-len", str(args.eval_len),
             "--eval-windows", str(args.eval_windows), "--batch-size", str(args.batch_size), "--json"]
    # the same batch size in both modes: the calibration chunks change the float rounding, and with
    # it a few near-tied channel choices, so equal batches give equal results
    evaluation = f"{args.eval_windows} evaluation windows of {args.eval_len}, batch {args.batch_size}"
    calibration = f"{args.nsamples} × {args.seqlen} calibration, {evaluation}"
    imports_peak, _ = peak_rss_of([python, "-c", IMPORTS_ONLY])
    load_peak, stdout = peak_rss_of([python, "-c", LOAD_ONLY, args.model])
    weights, vocabulary, chunk_tokens = map(int, stdout.strip().splitlines()[-1].split())
    read_peak, _ = peak_rss_of([python, "-c", LOAD_AND_READ, args.model])
    evaluate_peak, _ = peak_rss_of([python, "-c", LOAD_AND_EVALUATE, args.model, str(args.eval_windows),
                                    str(args.eval_len), str(args.batch_size)])
    low_peak, low_out = peak_rss_of([*prune, "--low-memory"])
    default_peak, default_out = peak_rss_of(prune)
    ppl = {name: json.loads(out.strip().splitlines()[-1])["ppl"] for name, out in
           (("low", low_out), ("default", default_out))}
    rows = [
        {"mode": "import the libraries only", "peak_rss": imports_peak},
        {"mode": "load the model only", "peak_rss": load_peak},
        {"mode": "load the model and read every weight", "peak_rss": read_peak},
        {"mode": f"load the model and evaluate it (random tokens, {evaluation})", "peak_rss": evaluate_peak},
        {"mode": f"prune, default (in memory, in place; {calibration})", "peak_rss": default_peak,
         "ppl": ppl["default"]},
        {"mode": f"prune, `--low-memory` (every module on disk, loaded for its forward call; {calibration})",
         "peak_rss": low_peak, "ppl": ppl["low"]},
    ]
    lines = ["# Peak memory of a prune", "",
             f"Model {args.model}, weights {weights / 2**20:.0f} MiB (float32), method {args.method}. "
             f"Machine: {platform.machine()} CPU. Peak "
             "resident set size of each child process, as the kernel reports it; the last column leaves out the "
             "first row, the fixed cost of the interpreter and the libraries.", "",
             "| mode | peak RSS (MiB) | ÷ weight bytes | above the imports, ÷ weight bytes | pruned ppl |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {row['mode']} | {row['peak_rss'] / 2**20:.0f} | {row['peak_rss'] / weights:.2f} | "
              f"{(row['peak_rss'] - imports_peak) / weights:.2f} | {row.get('ppl', float('nan')):.2f} |"
              for row in rows]
    predicted = args.batch_size * (args.eval_len - 1)  # per batch
    chunk = min(chunk_tokens, predicted)
    lines += ["", f"The evaluation adds {(evaluate_peak - read_peak) / 2**20:.0f} MiB to the model with every weight "
              f"read: the activations of a batch and one chunk of logits ({chunk} tokens × {vocabulary}: "
              f"{chunk * vocabulary * 4 / 2**20:.0f} MiB in float32, and the cross-entropy's log-softmax of it as "
              f"much), where a batch's whole logits would be {predicted * vocabulary * 4 / 2**20:.0f} MiB."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    record = {"weights": weights, "vocabulary": vocabulary, "rows": rows, "args": vars(args)}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
