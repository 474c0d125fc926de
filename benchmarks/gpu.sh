#!/usr/bin/env bash
# The prepared accelerator benchmark (issue 14): on a lent H100/H200 it runs in under 8 minutes and prints
# float16/bfloat16 vs float32 agreement, engine vs bare backbone at batch 64 and 256, 64 tasks vs 1, vs peft's
# adapter_names mixed batch, cold-load p99 and tokenizer rows/s (benchmarks/gpu.py says how).
#   bash benchmarks/gpu.sh [--reps N] [--dtype float16|bfloat16|float32]   on a machine with a CUDA device
#   bash benchmarks/gpu.sh --dry-run                                       tiny random model on the CPU (CI)
# PYTHON names the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ "${1:-}" == "--dry-run" ]]; then
    exec "$PYTHON" benchmarks/gpu.py "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PYTHON" benchmarks/gpu.py "$@"
