#!/usr/bin/env bash
# The test command: installs rlaif with its test extras (CPU torch when none is installed), then
# runs pytest. Extra arguments go to pytest, e.g. `bash tests/run.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE="${WANDB_MODE:-offline}"
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install --quiet --root-user-action=ignore "torch==2.13.0"   # CPU wheel; install a CUDA build yourself on GPU machines
fi
pip install --quiet --root-user-action=ignore -e '.[dev]'
# llama.cpp's OpenAI-compatible server for the API tests (builds from source once, ~8 min on 2 cores)
if ! python -c "import llama_cpp.server" >/dev/null 2>&1; then
  pip install --quiet --root-user-action=ignore -r tests/requirements-server.txt
fi
python -m pytest "$@"
