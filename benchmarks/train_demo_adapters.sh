#!/usr/bin/env bash
# Reproduce the demo adapters shipped in server/demo_adapters/ (AdaMix, M=4, share_up, r=16, default MiniLM).
# Each run: a fixed random training subset where noted (the same for every seed), dynamic padding with
# length-grouped batches, seed 0, the best dev evaluation kept. Logs and learning curves go to runs/demo/
# (not shipped). Run inside the project venv (or set PYTHON). Needs ../shared/data/glue (GLUE TSVs).
# Never add MRPC here: its licence is non-commercial.
#
#   benchmarks/train_demo_adapters.sh [TASK...]                  # default: sst2 stsb cola rte
#   METHOD=adapter OUT=runs/demo/adapter benchmarks/train_demo_adapters.sh rte cola   # the M=1 baselines
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE:-../shared/data/glue}
METHOD=${METHOD:-adamix}
OUT=${OUT:-server/demo_adapters}
RUNS=runs/demo/$METHOD
mkdir -p "$OUT" "$RUNS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One thread per run: on a shared 2-core machine two single-threaded runs side by side beat one 2-thread run
# (oversubscribed OpenMP threads spin); results do not depend on the thread count beyond float rounding.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

train() {  # train TASK DIR extra-args...
  local task=$1 dir=$2; shift 2
  "${PYTHON:-python}" -m adamix.cli train --glue-task "$task" --data "$GLUE/$dir" --method "$METHOD" \
    --bottleneck 16 --seed 0 --output "$OUT/$task.safetensors" --log "$RUNS/$task.jsonl" \
    --checkpoint-dir "$RUNS/$task.ckpt" --no-progress "$@"
}

for task in ${@:-sst2 stsb cola rte}; do
  case $task in
    sst2) train sst2 SST-2 --train-limit 32000 --epochs 1 --lr 4e-3 --max-seq-len 64 --eval-every 125 ;;
    stsb) train stsb STS-B --epochs 3 --lr 1e-3 --max-seq-len 128 --eval-every 90 ;;
    cola) train cola CoLA --epochs 3 --lr 3e-3 --max-seq-len 64 --eval-every 100 ;;
    rte)  train rte RTE --epochs 3 --lr 1e-3 --max-seq-len 128 --eval-every 39 ;;
    *) echo "unknown task $task (demo tasks: sst2 stsb cola rte)" >&2; exit 2 ;;
  esac
done
