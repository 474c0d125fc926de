#!/usr/bin/env bash
# Reproduce the demo adapters shipped in server/demo_adapters/ (AdaMix, M=4, share_up, default MiniLM, seed 0).
# Shipped demos: sst2 stsb cola qnli nli (see server/demo_adapters/README.md for data, licences and scores).
# Each run: dynamic padding with length-grouped batches, the best dev evaluation kept. Logs, learning curves,
# checkpoints and the prepared data go to runs/demo/ (not shipped). Run inside the project venv (or set PYTHON).
# Needs ../shared/data/glue (GLUE TSVs). Never add MRPC here: its licence is non-commercial.
# An interrupted run continues with RESUME=1 (the same command plus --resume).
#
#   benchmarks/train_demo_adapters.sh [TASK...]                  # default: sst2 stsb cola qnli nli
#   benchmarks/train_demo_adapters.sh rte                        # RTE: not shipped (stays near chance, see README)
#   METHOD=adapter OUT=runs/demo/adapter benchmarks/train_demo_adapters.sh rte cola   # the M=1 baselines
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE:-../shared/data/glue}
METHOD=${METHOD:-adamix}
OUT=${OUT:-server/demo_adapters}
RUNS=runs/demo/$METHOD
PREP=runs/demo/data
PY=${PYTHON:-python}
mkdir -p "$OUT" "$RUNS" "$PREP"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One thread per run: on a shared 2-core machine two single-threaded runs side by side beat one 2-thread run
# (oversubscribed OpenMP threads spin); results do not depend on the thread count beyond float rounding.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RESUME_ARG=()
[[ ${RESUME:-0} == 1 ]] && RESUME_ARG=(--resume)

train() {  # train TASK GLUE_TASK DATA_DIR extra-args...: DATA_DIR in GLUE_TASK's layout, written to TASK.safetensors
  local task=$1 glue_task=$2 dir=$3; shift 3
  "$PY" -m adamix.cli train --glue-task "$glue_task" --data "$dir" --method "$METHOD" \
    --seed 0 --output "$OUT/$task.safetensors" --log "$RUNS/$task.jsonl" \
    --checkpoint-dir "$RUNS/$task.ckpt" --no-progress "${RESUME_ARG[@]}" "$@"
}

for task in ${@:-sst2 stsb cola qnli nli}; do
  case $task in
    sst2) train sst2 sst2 "$GLUE/SST-2" --bottleneck 16 --train-limit 32000 --epochs 1 --lr 4e-3 --max-seq-len 64 \
            --eval-every 125 ;;
    stsb) train stsb stsb "$GLUE/STS-B" --bottleneck 16 --epochs 3 --lr 1e-3 --max-seq-len 128 --eval-every 90 ;;
    cola)  # GLUE CoLA train + its unacceptable rows twice + 1,500 rule-made minimal pairs; dev unchanged
      "$PY" benchmarks/cola_augment.py "$GLUE/CoLA" "$PREP/cola-mix" --duplicate-unacceptable --synthetic 1500 \
        --no-word-order
      train cola cola "$PREP/cola-mix" --bottleneck 16 --epochs 20 --lr 3e-3 --max-seq-len 48 --eval-every 197 \
        --checkpoint-every 197 ;;
    qnli)  # QNLI here has only the GLUE dev set: a fixed 4,000-row train part and 1,463 held-out rows
      "$PY" benchmarks/split_glue.py qnli "$GLUE/QNLI" "$PREP/qnli-split"
      train qnli qnli "$PREP/qnli-split" --bottleneck 16 --epochs 3 --lr 2e-3 --max-seq-len 128 --eval-every 63 \
        --checkpoint-every 63 ;;
    nli)  # entailment in RTE's layout: RTE train + the QNLI train part above + clear-cut STS-B pairs; RTE dev
      "$PY" benchmarks/split_glue.py qnli "$GLUE/QNLI" "$PREP/qnli-split"
      "$PY" benchmarks/nli_mix.py "$GLUE/RTE" "$PREP/qnli-split" "$PREP/nli-mix" --stsb "$GLUE/STS-B"
      train nli rte "$PREP/nli-mix" --bottleneck 16 --epochs 4 --lr 2e-3 --max-seq-len 128 --eval-every 100 \
        --checkpoint-every 100 ;;
    rte)  train rte rte "$GLUE/RTE" --bottleneck 16 --epochs 3 --lr 1e-3 --max-seq-len 128 --eval-every 39 ;;
    *) echo "unknown task $task (demo tasks: sst2 stsb cola qnli nli; also rte)" >&2; exit 2 ;;
  esac
done
