"""The rating prefix, written freely vs under the forced grammar with jump-forward.

    python benchmarks/bench_prefix.py [--draft demo/models/jrl] [--batch 1 20 50] [--runs 5] [--threads 1]

A trained rating draft (default: the shipped demo's JRL draft, which writes its tags itself) rates the
first `--n` test queries of the shipped demo twice per batch size:
- free: one forward per prefix token (`<target>0.99</target><confidence>0.99</confidence><`: 18 steps);
- forced: the scaffold fed in runs (prp.route.decode.forced_prefix): the prefill plus one forward per
  free choice (4 digits and the closing token).
Prints the median prefix time per query (p20 / p80 over `--runs`, after one warm-up), the ratio, and
how many queries got the same d and t both ways.  Not a test: numbers depend on the machine, printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_route import machine, timed  # benchmarks/ is the script's folder

from prp.core.data import load_jsonl
from prp.core.modeling import load_model
from prp.route.router import Query, Router, RouterConfig

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draft", default=str(ROOT / "demo" / "models" / "jrl"))
    ap.add_argument("--mode", default="jrl", choices=("drl", "jrl"))
    ap.add_argument("--data", default=str(ROOT / "demo" / "data" / "test.jsonl"))
    ap.add_argument("--n", type=int, default=100, help="queries rated per run")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 20, 50])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    recs = load_jsonl(args.data).records[: args.n]
    queries = [Query(id=r.id, question=r.question, image=r.load_image(), gold=r.answer) for r in recs]
    model, proc = load_model(args.draft, device="cpu")
    routers = {rating: Router(model, proc, None, RouterConfig(mode=args.mode, rating=rating))
               for rating in ("free", "forced")}

    def rate_all(router, batch):
        rows = []
        for i in range(0, len(queries), batch):
            rows += router.rate(queries[i:i + batch])[1]
        return rows

    print(f"{args.mode} prefix of {args.draft} on {len(queries)} queries; ms per query, median (p20-p80)")
    print("| batch | free | forced (jump-forward) | free / forced | same d and t |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        ms, ratings = {}, {}
        for rating, router in routers.items():
            with torch.no_grad():
                times = timed(lambda r=router, b=batch: rate_all(r, b), args.runs)
                ratings[rating] = rate_all(router, batch)
            q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
            ms[rating] = [1000 * x / len(queries) for x in (statistics.median(times), q[0], q[-1])]
        same = sum((a.d, a.t) == (b.d, b.t) for a, b in zip(ratings["free"], ratings["forced"], strict=True))
        f, j = ms["free"], ms["forced"]
        print(f"| {batch} | {f[0]:.2f} ({f[1]:.2f}-{f[2]:.2f}) | {j[0]:.2f} ({j[1]:.2f}-{j[2]:.2f}) | "
              f"{f[0] / j[0]:.2f}x | {same}/{len(queries)} |")


if __name__ == "__main__":
    main()
