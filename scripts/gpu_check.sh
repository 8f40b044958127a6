#!/usr/bin/env bash
# One GPU check of the decode engine (docs/engine.md), < 8 minutes on one H200/H100:
#   1. IPR kernel tests on CUDA + kernels/bench_ipr.py (do_bench and do_bench_cudagraph rows)
#   2. benchmarks/bench_decode.py on the 3B text shape (random init): eager loop, compiled engine,
#      HF generate dynamic/static, decision and kept ratios, a GRPO step per rollout engine
#   3. a 3-step DRL training run on the same 3B shape (rollout_engine=engine)
# Tables and logs go to $OUT (default runs/gpu_check); summary.md lists every stage's status.
#
# Needs only a bare GPU image (torch, transformers, triton) plus this project, installed here with
# --no-deps.  Training also imports math-verify (and Pillow, PyYAML if the image lacks them): fill
# .whl/ once on a machine with PyPI access, then carry the folder with the repository:
#   scripts/gpu_check.sh --prepare-wheels
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if [ "${1:-}" = "--prepare-wheels" ]; then
  exec "$PY" -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    -d .whl math-verify pillow pyyaml
fi

OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
unset TRITON_INTERPRET
SUMMARY="$OUT/summary.md"
printf '| stage | exit | seconds |\n|---|---:|---:|\n' > "$SUMMARY"

stage() {  # stage NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, record exit status and time
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "| $name | $rc | $(( $(date +%s) - start )) |" >> "$SUMMARY"
  echo "== $name: exit $rc" >&2
}

"$PY" -c "import prp_kernels.ipr_kernel" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --find-links .whl math-verify pillow pyyaml
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
} > "$OUT/machine.txt" 2>&1

stage ipr_kernel_tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_ipr_kernel.py
stage bench_ipr 60 "$PY" kernels/bench_ipr.py --no-compile --out "$OUT/bench_ipr.json"
stage bench_decode 210 "$PY" benchmarks/bench_decode.py --size 3b --batches 1,16,64 --hf-static-batches 1 \
  --out "$OUT/bench_decode.json"

MODEL="$OUT/model-3b"
stage save_3b_model 40 "$PY" benchmarks/bench_decode.py --size 3b --save-model "$MODEL"
stage train_drl_3_steps 150 "$PY" train.py --mode drl --config configs/tiny.yaml --model "$MODEL" \
  --max-steps 3 --output-dir "$OUT/train-drl" --set rollout_engine=engine --set bf16=true \
  --set gradient_checkpointing=true --set max_completion_length=256 --set gradient_accumulation_steps=1 \
  --set save_every=1000 --set sample_every=1000 --set freeze_vision_biases=false
rm -rf "$MODEL" "$OUT/train-drl"/ckpt-*  # random 3B weights and optimizer state (~40 GB): not worth bringing back

{ echo; grep -h "^|" "$OUT/bench_decode.log" 2>/dev/null
  echo; sed -n '/^IPR digit stats/,/^wrote/p' "$OUT/bench_ipr.log" 2>/dev/null
  echo; tail -n 5 "$OUT/train_drl_3_steps.log" 2>/dev/null; } >> "$SUMMARY"
cat "$SUMMARY"
