#!/usr/bin/env bash
# One device-machine run: IPR kernel tests on CUDA (no interpreter) + the benchmark.
# Usage (repo root, GPU box):  bash kernels/run_on_gpu.sh   -> results in $OUT (or runs/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
out="${OUT:-runs/gpu}"; mkdir -p "$out"
# prp_kernels maps to ./kernels through pyproject.toml: install in place if not already (offline).
python -c "import prp_kernels.ipr_kernel" 2>/dev/null || pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q tests/test_ipr_kernel.py 2>&1 | tee "$out/test_ipr_kernel.txt" || echo "IPR KERNEL TESTS FAILED"
python kernels/bench_ipr.py --out "$out/bench_ipr.json" 2>&1 | tee "$out/bench_ipr.md"
