"""Router latency on the tiny models: what the proactive decision costs, and what continuing costs.

    python benchmarks/bench_route.py [--runs 5] [--batch 1 8] [--new-tokens 256] [--threads 1]

Two claims of Sec. 4.4 / Fig. 6, measured with the router's own decode loop (prp.route.decode):
1. decision time: the rating prefix (pre-generate + evaluate) as a fraction of a full draft
   generation (prefix + `--new-tokens` more), i.e. how early the routing decision comes;
2. no second prefill: a query kept by the draft (prefix, then continuation from the prefix's
   KV cache) vs one plain draft generation of the same number of tokens.  Ratio ~1.00 = free.
   For contrast, "re-prefill" is the naive path: prefix, then a fresh generation from scratch.
Medians (and p20 / p80) over `--runs`, after one warm-up.  The tiny draft is untrained, so the
rating grammar is forced (rating="forced") and generation never stops early (fixed lengths).
Not a test: numbers depend on the machine, which is printed.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prp.core.modeling import load_model, prepare_inputs
from prp.core.prompts import build_messages
from prp.route import decode as gen
from prp.route.router import Query, Router, RouterConfig
from prp.route.targets import LocalTarget
from prp.toy.synthetic import QUESTION, render
from prp.toy.tiny import save_tiny_pair


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (f"{cpu}; {os.cpu_count()} cores; {dev}; torch {torch.__version__}; "
            f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}")


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def q(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[int(p * 10) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256, help="draft tokens after the prefix")
    ap.add_argument("--size", default="draft", help="tiny size of the draft (prp.toy.tiny.SPECS)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        draft_dir = save_tiny_pair(tmp, seed=0, sizes=(args.size,))[args.size]
        model, proc = load_model(draft_dir)
    tok = proc.tokenizer
    router = Router(model, proc, LocalTarget(model, proc, max_new_tokens=1),
                    RouterConfig(mode="jrl", rating="forced", max_new_tokens=args.new_tokens))

    print(f"machine: {machine()}")
    print(f"draft: tiny '{args.size}' ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), "
          f"JRL prompt, forced rating prefix, {args.new_tokens} continuation tokens, {args.runs} runs")
    for bsz in args.batch:
        queries = [Query(id=str(i), question=QUESTION, image=render([i % 10, 10 + i])) for i in range(bsz)]
        msgs = [build_messages(x.question, mode="jrl") for x in queries]
        inputs = prepare_inputs(proc, msgs, [x.image for x in queries])
        n_prefix = len(router.forced)
        total = n_prefix + args.new_tokens

        def decide(queries=queries):  # the one rating pipeline: prefix + evaluate
            router.rate(queries)

        def kept(queries=queries):  # prefix + evaluate + continuation from the prefix cache
            prefix, _ = router.rate(queries)
            router.continue_draft(prefix, list(range(len(queries))))

        def plain(inputs=inputs, total=total):  # one draft generation of the same length, no routing
            gen.generate(model, tok, inputs, max_new_tokens=total)

        def reprefill(queries=queries, inputs=inputs, total=total):  # naive: prefix, then generate afresh
            router.pregenerate(queries)
            gen.generate(model, tok, inputs, max_new_tokens=total)

        t_decide, t_kept, t_plain, t_re = (timed(f, args.runs) for f in (decide, kept, plain, reprefill))
        med = statistics.median
        print(f"\nbatch {bsz}: prompt {inputs['input_ids'].shape[1]} tokens, prefix {n_prefix} tokens, "
              f"total {total} tokens")
        for name, xs in (("decision (prefix+evaluate)", t_decide), ("kept: prefix+continue", t_kept),
                         ("plain draft generation", t_plain), ("re-prefill (naive)", t_re)):
            print(f"  {name:28s} median {med(xs) * 1e3:8.1f} ms  p20 {q(xs, 0.2) * 1e3:8.1f}  "
                  f"p80 {q(xs, 0.8) * 1e3:8.1f}")
        print(f"  decision / full draft generation   = {med(t_decide) / med(t_plain):.3f}")
        print(f"  kept-by-draft / plain generation   = {med(t_kept) / med(t_plain):.3f}  (1.00 = no overhead)")
        print(f"  re-prefill / plain generation      = {med(t_re) / med(t_plain):.3f}")


if __name__ == "__main__":
    main()
