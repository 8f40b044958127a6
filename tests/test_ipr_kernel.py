"""Triton IPR kernel (Eq. 9) vs the float64 torch reference.

On a CPU-only machine the kernel runs under Triton's interpreter, which must be switched
on (TRITON_INTERPRET=1) before the kernel module is imported. So that this never depends
on import order inside the pytest process, all cases run once in a subprocess
(`python tests/test_ipr_kernel.py --json`) with the variable set, and each test reads its
case's errors. With CUDA (or the variable already set) the cases run in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import pytest
import torch

TOL = 1e-5  # max relative error on digit_probs / p_max / variance / ipr
VOCAB = 151936  # Qwen2.5's vocabulary

# name -> (B, V, dtype, num_splits, block_size, layout). block_size None = the heuristic
# (16k on the interpreter: it pays per op, so big blocks keep the file fast).
CASES = {
    "fp32_ragged_tail": (7, 1000, "float32", 1, 128, "dense"),
    "bf16_ragged_tail": (7, 1000, "bfloat16", 1, 128, "dense"),
    "fp16_tiny_vocab": (5, 77, "float16", 1, None, "dense"),
    "fp32_qwen_vocab_B1": (1, VOCAB, "float32", 1, None, "dense"),
    "bf16_qwen_vocab_B4": (4, VOCAB, "bfloat16", 1, None, "dense"),
    "fp32_qwen_vocab_flat_probs": (2, VOCAB, "float32", 1, None, "flat"),
    "split_fp32_qwen_vocab_B1": (1, VOCAB, "float32", 8, None, "dense"),
    "split_bf16_qwen_vocab_B37": (37, VOCAB, "bfloat16", 3, None, "dense"),
    "split_bf16_ragged_tail": (7, 1000, "bfloat16", 3, 128, "dense"),
    "neg_inf_rows": (3, 1000, "float32", 1, 128, "neg_inf"),
    "split_neg_inf_rows": (3, 1000, "bfloat16", 4, 128, "neg_inf"),
    "strided_last_token": (3, VOCAB, "bfloat16", 1, None, "last_token"),
    "split_strided_last_token": (3, 1000, "float32", 2, 128, "last_token"),
    "non_unit_last_stride": (4, 1000, "float16", 1, 256, "transposed"),
}


def _make_logits(B, V, dtype, layout, gen):
    """[B, V] logits whose digit tokens carry most of the mass (as at a rating position)."""
    ids = torch.randperm(V, generator=gen)[:10]
    if layout == "last_token":  # logits[:, -1, :] of a [B, T, V] tensor: row stride T*V
        full = torch.randn(B, 3, V, generator=gen) * 2
        full[:, -1, ids] += torch.rand(B, 10, generator=gen) * 10
        return full.to(dtype)[:, -1, :], ids
    if layout == "transposed":  # stride(-1) != 1: the wrapper must copy
        x = torch.randn(V, B, generator=gen) * 2
        x[ids] += torch.rand(10, B, generator=gen) * 10
        return x.to(dtype).t(), ids
    x = torch.randn(B, V, generator=gen) * 2
    if layout == "dense":
        x[:, ids] += torch.rand(B, 10, generator=gen) * 10
    if layout == "neg_inf":
        x.fill_(float("-inf"))
        x[0, ids[3]] = 1.5  # one finite entry, a digit: p_3 = 1, the rest 0
        x[1, V - 1] = -2.0  # one finite entry in the ragged tail, not a digit: all p_i = 0
        # row 2 stays all -inf: the reference gives NaN (logsumexp = -inf), so must we
    return x.to(dtype), ids


def _rel_err(a, b):
    """Max relative error; equal entries (incl. 0 == 0 and NaN vs NaN) count as exact."""
    a, b = a.double().cpu(), b.double().cpu()
    same = (a == b) | (a.isnan() & b.isnan())
    err = torch.where(same, 0.0, (a - b).abs() / b.abs())
    return err.max().item() if err.numel() else 0.0


def run_case(name):
    from prp_kernels.ipr_kernel import digit_stats_triton

    from prp.route.ipr import digit_stats_reference

    B, V, dtype, splits, block, layout = CASES[name]
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x, ids = _make_logits(B, V, getattr(torch, dtype), layout, gen)
    tenths = torch.randint(0, 10, (B,), generator=gen)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, tenths = x.to(dev), tenths.to(dev)
    got = digit_stats_triton(x, ids.tolist(), tenths, num_splits=splits, block_size=block)
    # the kernel's sign digit (> 5 high) as the reference's rating: high 0.9, low 0.1
    rating = torch.where(tenths > 5, 0.9, 0.1).double()
    ref = digit_stats_reference(x.double(), ids, rating)  # fp64 of the same bf16/fp16 values
    return {f: _rel_err(getattr(got, f), getattr(ref, f))
            for f in ("digit_probs", "p_max", "variance", "ipr")}


def run_extras():
    """Dispatcher, scalar tenths digit / sign, and argument checks."""
    from prp_kernels.ipr_kernel import digit_stats_triton

    from prp.route.ipr import digit_stats_from_logits, digit_stats_reference

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(6, 500, generator=torch.Generator().manual_seed(0)).to(dev)
    ids = list(range(100, 110))
    out = {}
    # Eq. 9's sign band, by hand: tenths digit > 5 is high (0.60-0.99), 1.00 is high, 0.00-0.59 low
    for d, high in ((0.3, False), (0.49, False), (0.5, False), (0.59, False), (0.6, True), (0.9, True),
                    (1.0, True)):
        got = digit_stats_from_logits(x, ids, d, backend="triton").ipr
        ref = digit_stats_reference(x.double(), torch.tensor(ids), d).ipr
        out[f"dispatcher_rating_{d}"] = _rel_err(got, ref)
        out[f"sign_rating_{d}"] = float((got > 0).all().item()) if high else float((got < 0).all().item())
    try:
        digit_stats_triton(x, list(range(495, 505)), 1)
        out["rejects_out_of_range_ids"] = 0.0
    except ValueError:
        out["rejects_out_of_range_ids"] = 1.0
    out.update(run_preallocated(dev))
    return out


def run_preallocated(dev):
    """DigitStatsKernel (one launch, reusable workspace): the split path's arrival counters are
    back at 0 after each launch, so a second call on new logits is right too."""
    from prp_kernels.ipr_kernel import DigitStatsKernel

    from prp.route.ipr import digit_stats_reference

    gen = torch.Generator().manual_seed(7)
    ids = list(range(300, 310))
    out = {}
    for splits in (1, 4):
        kernel = DigitStatsKernel(3, 1000, ids, dev, num_splits=splits, block_size=128)
        for call in range(2):
            x = (torch.randn(3, 1000, generator=gen) * 3).to(torch.bfloat16).to(dev)
            tenths = torch.tensor([2, 7, 9], device=dev)
            got = kernel(x, tenths)
            ref = digit_stats_reference(x.double(), torch.tensor(ids), torch.tensor([0.1, 0.9, 0.9]).double())
            out[f"dispatcher_prealloc_S{splits}_call{call}"] = max(
                _rel_err(getattr(got, f), getattr(ref, f)) for f in ("digit_probs", "p_max", "variance", "ipr"))
        out[f"prealloc_S{splits}_counters_reset"] = float(int(kernel.ws[2].abs().sum()) == 0)
        out[f"prealloc_S{splits}_split_taken"] = float(kernel.S == splits)
    return out


def _all_results():
    res = {name: run_case(name) for name in CASES}
    res["extras"] = run_extras()
    return res


@pytest.fixture(scope="module")
def results():
    pytest.importorskip("triton", reason="triton is not installed")
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return _all_results()
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__, "--json"], env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_matches_fp64_reference(results, name):
    errs = results[name]
    assert all(e <= TOL for e in errs.values()), errs


def test_dispatcher_sign_and_checks(results):
    ex = results["extras"]
    for key, val in ex.items():
        if key.startswith("dispatcher"):
            assert val <= TOL, (key, val)
        else:
            assert val == 1.0, key


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_cpu_tensor_without_interpreter_raises():
    pytest.importorskip("triton", reason="triton is not installed")
    code = (
        "import torch\n"
        "from prp_kernels.ipr_kernel import digit_stats_triton\n"
        "try:\n"
        "    digit_stats_triton(torch.randn(2, 50), list(range(10)), 7)\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e); print('raised')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "raised", proc.stderr[-2000:]


if __name__ == "__main__" and "--json" in sys.argv:
    print(json.dumps(_all_results()))
