#!/usr/bin/env bash
# The checks that need a CUDA machine, as one script (about 5 minutes on one modern GPU, after
# `bash scripts/install.sh --dev`): the GPU-marked tests, one default SPAP run of SmolLM2 on the
# GPU, the latency bench, and the app's default run through the browser. Numbers and logs go to
# docs/results/gpu/ (or the folder given as the first argument), summarised in its README.md.
#   SPAP_DATA_DIR=../shared/data bash scripts/gpu_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results/gpu}
export SPAP_DATA_DIR=${SPAP_DATA_DIR:-../shared/data} PYTHONPATH=.
mkdir -p "$OUT"
python -c "import torch, sys; torch.cuda.is_available() or sys.exit('no CUDA device is visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt"

echo "== 1/4 GPU-marked tests"
python -m pytest -q -m gpu tests/spap_core/test_gpu.py 2>&1 | tee "$OUT/tests.log"

echo "== 2/4 default SPAP run of SmolLM2 on the GPU (issue protocol: 32 x 512 calibration, 32 windows)"
RUN_DIR=$(mktemp -d)
python -m spap_core prune --model smollm2 --device cuda --sparsity 0.3 --nsamples 32 --seqlen 512 \
    --eval-len 512 --eval-windows 32 --out "$RUN_DIR/spap-30" --json > "$OUT/prune.json"

echo "== 2b/4 the same run with every decoder layer on disk, pruned layer by layer on the GPU"
python -m spap_core prune --model smollm2 --device cuda --sparsity 0.3 --nsamples 32 --seqlen 512 \
    --eval-len 512 --eval-windows 32 --low-memory --json > "$OUT/prune-low-memory.json"

echo "== 3/4 latency bench"
python bench/latency.py --repeats 11 --out "$OUT/latency.md"

echo "== 4/4 the app's default run in the browser"
python scripts/screenshots.py --run-only --out "$OUT/screenshots"

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
run = json.loads((out / "prune.json").read_text().strip().splitlines()[-1])
low = json.loads((out / "prune-low-memory.json").read_text().strip().splitlines()[-1])
tests = (out / "tests.log").read_text().strip().splitlines()[-1]
lines = ["# GPU check", "", f"Device: {(out / 'device.txt').read_text().strip()}. Command: `bash scripts/gpu_check.sh`.", "",
         f"- GPU-marked tests: {tests}",
         f"- Default SPAP run of SmolLM2 at 30% ({run['device']}, {run['calibration_tokens']} calibration tokens): "
         f"perplexity {run['ppl_dense']:.2f} → {run['ppl']:.2f} on {run['eval_windows']} × {run['eval_len']} tokens; "
         f"pruning {run['prune_seconds']:.1f} s (timings {json.dumps({k: round(v, 1) for k, v in run['timings'].items()})})",
         f"- The same run with --low-memory (layers on disk): perplexity {low['ppl']:.2f}, pruning "
         f"{low['prune_seconds']:.1f} s",
         "- Latency: [latency.md](latency.md)", "- The app's default run: [screenshots/](screenshots/)"]
(out / "README.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
