#!/usr/bin/env bash
# The paper's runs on a GPU box (Appendix C.2: 8 GPUs, 7 train + 1 for sampling; here all 8 can train).
# Edit model / data paths in configs/paper.yaml first (or pass --model / --train-data); nothing is downloaded at run time.
#   scripts/train_gpu.sh presample   # Acc_tgt cache with the target (local dir or openai:<model> endpoint)
#   scripts/train_gpu.sh drl         # or grpo / jrl / sft / sft-cn
# Resume an interrupted run: append --resume (same --output-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?mode: grpo|drl|jrl|sft|sft-cn|presample}; shift
GPUS=${GPUS:-7}
OUT=${OUT:-runs/$MODE}
if [ "$MODE" = presample ]; then
  exec python train.py --mode presample --config configs/presample.yaml --output-dir "$OUT" "$@"
fi
exec deepspeed --num_gpus "$GPUS" train.py --mode "$MODE" --config "configs/$MODE.yaml" --output-dir "$OUT" "$@"
