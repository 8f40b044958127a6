"""Benchmark the fused IPR kernel (Eq. 9) against torch eager / torch.compile / a roofline.

    python kernels/bench_ipr.py [--batch-sizes 1 16 256 1024 4096] [--out runs/bench/bench_ipr.json]

Every implementation reads B x V logits once at least, so effective bandwidth is
B * V * elem_size / time. The roofline row is `x.amax(-1)`: one plain read of the same
tensor. "x roofline" = time / roofline time (1.00 = as fast as a bare read).

On CUDA: triton.testing.do_bench, median / p20 / p80. Without CUDA: torch eager,
torch.compile and the roofline timed on CPU with perf_counter over repeated runs, and the
kernel run once under TRITON_INTERPRET=1 for correctness only (interpreter timings mean
nothing for the kernel).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

from prp.core.cli import run_main
from prp.route.ipr import SIGN_THRESHOLD_DIGIT, digit_stats_reference

VOCAB = 151936
CPU_NOTE = "CPU (no GPU): timings are not representative of the kernel"


def rating_of(tenths):
    """The reference's sign needs a rating value; the kernel's tenths digit > 5 is a high one."""
    return torch.where(tenths > SIGN_THRESHOLD_DIGIT, 0.9, 0.1)


def eager(x, ids, tenths):
    s = digit_stats_reference(x, ids, rating_of(tenths))
    return s.digit_probs, s.p_max, s.variance, s.ipr


def bench_cpu(fn, reps: int) -> tuple[float, float, float]:
    """(median, p20, p80) microseconds of fn() on CPU."""
    fn()  # warm-up (and compilation)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    q = statistics.quantiles(ts, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return statistics.median(ts), q[1], q[7]


def bench_cuda(fn) -> tuple[float, float, float]:
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])  # milliseconds
    return med * 1e3, p20 * 1e3, p80 * 1e3


def max_rel_err(got, x, ids, tenths) -> float:
    ref = digit_stats_reference(x.double(), ids, rating_of(tenths).double())  # fp64 of the same bf16 values
    errs = [((g.double() - r).abs() / r.abs().clamp_min(1e-30)).max().item()
            for g, r in ((got.digit_probs, ref.digit_probs), (got.ipr, ref.ipr))]
    return max(errs)


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (no GPU)"


DEFAULT_OUT = "runs/bench/bench_ipr.json"  # under runs/ (git-ignored): never a stray file in the checkout


def build_parser(cuda: bool) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+",
                    default=[1, 16, 256, 1024, 4096] if cuda else [1, 16, 64])
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--reps", type=int, default=20, help="CPU timing repetitions")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"the JSON of timings and checks (default {DEFAULT_OUT})")
    ap.add_argument("-v", "--verbose", action="store_true", help="also print the traceback of a user error")
    return ap


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    args = build_parser(cuda).parse_args(argv)

    from prp_kernels.ipr_kernel import DigitStatsKernel, digit_stats_triton, pick_block, pick_num_splits

    dev = torch.device("cuda" if cuda else "cpu")
    V = args.vocab
    compiled = None if args.no_compile else torch.compile(eager, dynamic=False)
    rows, checks = [], []
    for B in args.batch_sizes:
        gen = torch.Generator(device=dev).manual_seed(B)
        x = (torch.randn(B, V, device=dev, generator=gen) * 2).to(torch.bfloat16)  # [B, V]
        ids = torch.randperm(V, device=dev, generator=gen)[:10]  # [10]
        x[:, ids] += 8  # digits carry the mass, as at a real rating position
        tenths = torch.randint(0, 10, (B,), device=dev, generator=gen)  # [B]
        nbytes = x.numel() * x.element_size()

        impls = {
            "roofline x.amax(-1)": partial(torch.amax, x, -1),
            "torch eager": partial(eager, x, ids, tenths),
        }
        if compiled is not None:
            impls["torch.compile"] = partial(compiled, x, ids, tenths)
        if cuda:
            impls["triton"] = partial(digit_stats_triton, x, ids, tenths)
            if pick_num_splits(B, V, pick_block(V, dev)[0], dev) > 1:  # is the split worth it?
                impls["triton single-pass"] = partial(digit_stats_triton, x, ids, tenths, num_splits=1)
            # the decode engine's path: preallocated, one launch, no host-side tensor work
            impls["triton preallocated"] = partial(DigitStatsKernel(B, V, ids.tolist(), dev), x, tenths)
        if compiled is not None:
            # Compile before timing anything: inductor's compile workers would otherwise
            # compete for the CPU cores during the first measurements.
            compiled(x, ids, tenths)
        timings = {}
        for name, fn in impls.items():
            med, p20, p80 = bench_cuda(fn) if cuda else bench_cpu(fn, args.reps)
            timings[name] = med
            rows.append({"B": B, "impl": name, "median_us": med, "p20_us": p20, "p80_us": p80,
                         "tb_per_s": nbytes / (med * 1e-6) / 1e12,
                         "x_roofline": med / timings["roofline x.amax(-1)"]})

        if cuda:  # launch overhead removed: the same calls replayed from a CUDA graph
            from triton.testing import do_bench_cudagraph

            for name in ("roofline x.amax(-1)", "triton preallocated"):
                impls[name]()
                med = do_bench_cudagraph(impls[name]) * 1e3  # ms -> us
                rows.append({"B": B, "impl": f"{name} [cudagraph]", "median_us": med, "p20_us": med, "p80_us": med,
                             "tb_per_s": nbytes / (med * 1e-6) / 1e12,
                             "x_roofline": med / timings["roofline x.amax(-1)"]})

        # Correctness of the kernel on this exact input (interpreter on CPU: slow, B <= 64).
        if cuda or B <= 64:
            got = digit_stats_triton(x, ids, tenths)
            block, _ = pick_block(V, dev)
            checks.append({"B": B, "max_rel_err": max_rel_err(got, x, ids, tenths), "block": block,
                           "num_splits": pick_num_splits(B, V, block, dev), "interpreter": not cuda})

    lines = [f"IPR digit stats, bf16, V={V}, {machine()}"]
    if not cuda:
        lines.append(f"**{CPU_NOTE}**")
    lines += ["", "| B | impl | median us | p20 us | p80 us | TB/s | x roofline |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['B']} | {r['impl']} | {r['median_us']:.1f} | {r['p20_us']:.1f} | "
              f"{r['p80_us']:.1f} | {r['tb_per_s']:.4f} | {r['x_roofline']:.2f} |" for r in rows]
    lines += ["", "kernel correctness vs float64 reference (" +
              ("CUDA" if cuda else "Triton interpreter") + "):"]
    lines += [f"- B={c['B']}: max rel err {c['max_rel_err']:.2e} (BLOCK {c['block']}, "
              f"num_splits {c['num_splits']})" for c in checks]
    print("\n".join(lines))

    import triton

    meta = {"machine": machine(), "torch": torch.__version__, "triton": triton.__version__,
            "python": sys.version.split()[0], "dtype": "bfloat16", "V": V,
            "note": None if cuda else CPU_NOTE, "rows": rows, "correctness": checks}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
