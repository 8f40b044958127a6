"""Route a JSONL file: batches in, one JSONL line out per input line, resumable, then a summary.

- Every input line yields exactly one output line: routed queries, and also malformed lines and
  unreadable images (an `error` field, no crash).  Lines are written with flush + fsync, so an
  interrupted run loses at most the batch in flight; `--resume` reads the ids already written
  (dropping a torn last line) and skips them.  Ids are assumed unique (a line without an id
  is `line-N`, as prp.core.data names it).
- The embedded default (no model/data flags): DEFAULT_DEMO, the trained tiny JRL draft + target
  shipped under demo/ (scripts/build_demo.py rebuilds them) with the synthetic sum benchmark's
  test/validation splits.  UNTRAINED_DEMO is the old untrained pair, built once under runs/default.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prp.core.data import ImageError, load_jsonl
from prp.route.router import Query, Router
from prp.route.rows import error_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSpec:
    """Where the embedded default lives and how it is built (one constant to swap).

    `shipped=True`: trained checkpoints committed under `root` (built by scripts/build_demo.py):
    root/models/{draft,target,drl,jrl} and root/data/{test,validation}.jsonl; `draft` names the
    router draft.  `shipped=False`: an untrained tiny pair built once under `root`.
    """

    root: Path = Path("runs/default")
    seed: int = 0
    n_test: int = 100
    n_validation: int = 40
    max_new_tokens: int = 32  # the untrained tiny models never stop on their own
    rating: str = "forced"  # an untrained draft never closes its rating: force the grammar
    shipped: bool = False
    draft: str = "draft"  # sub-folder of root/models used as the router draft


# The trained demo (scripts/build_demo.py): JRL draft + SFT/GRPO target on the synthetic
# sum-of-numbers benchmark; the drafts close their rating tags, so the prefix is generated freely.
SHIPPED_DEMO = DemoSpec(root=Path(__file__).resolve().parents[2] / "demo", n_test=400, n_validation=200,
                        max_new_tokens=48, rating="free", shipped=True, draft="jrl")
UNTRAINED_DEMO = DemoSpec()
DEFAULT_DEMO = SHIPPED_DEMO


def ensure_default_demo(spec: DemoSpec = DEFAULT_DEMO) -> dict[str, Path]:
    """The demo's model and data paths; an untrained spec is built (once) first."""
    from prp.toy.synthetic import build_benchmark
    from prp.toy.tiny import save_tiny_pair

    root = spec.root
    paths = {
        "draft": root / "models" / spec.draft, "target": root / "models" / "target",
        "data": root / "data" / "test.jsonl", "validation": root / "data" / "validation.jsonl",
    }
    if spec.shipped:
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise FileNotFoundError(f"the shipped demo is incomplete ({', '.join(missing)}); "
                                    "rebuild it with: python scripts/build_demo.py --out demo")
        return paths
    ready = root / "READY"
    if not ready.exists():
        log.info("building the embedded default under %s (once)", root)
        save_tiny_pair(root / "models", seed=spec.seed)
        build_benchmark(root / "data", seed=spec.seed, sizes={"validation": spec.n_validation, "test": spec.n_test})
        ready.write_text("built by prp.route.run.ensure_default_demo\n")
    return paths


# ------------------------------------------------------------------------------ router from the command line


def add_router_arguments(ap, *, title: str = "models") -> None:
    """The flags route.py and eval.py share: models, the evaluation stage (Sec. 4.2-4.3), a remote target."""
    io = ap.add_argument_group(title)
    io.add_argument("--draft", help="draft (router) model dir, trained with DRL or JRL")
    io.add_argument("--target", help="target: a local HF model dir, or an http(s) base URL (OpenAI-compatible)")
    io.add_argument("--target-model", default=None, help="model name sent to a remote target")
    io.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the env var holding the API key")
    io.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    io.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's)")

    sc = ap.add_argument_group("evaluation (Sec. 4.2-4.3)")
    sc.add_argument("--mode", choices=("drl", "jrl"), default="jrl",
                    help="prompt and prefix grammar: jrl (P_joint, d and t) or drl (P_draft, d only)")
    sc.add_argument("--rule", choices=("draft_first", "target_first"), default="draft_first")
    sc.add_argument("--tau", type=float, default=2.0, help="JRL scale (ignored in DRL)")
    sc.add_argument("--ipr", choices=("add", "band", "off"), default="add")
    sc.add_argument("--ipr-backend", default="auto", choices=("auto", "torch", "triton"))
    sc.add_argument("--rating", choices=("free", "forced"), default=None,
                    help="free: the draft writes its prefix; forced: grammar-forced, the draft picks the digits "
                         "(default: the embedded default's setting, else free)")
    sc.add_argument("--max-prefix-tokens", type=int, default=24)
    sc.add_argument("--max-new-tokens", type=int, default=None,
                    help="default 1024 (the embedded default's own limit there)")

    rm = ap.add_argument_group("remote target")
    rm.add_argument("--tries", type=int, default=4)
    rm.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt")
    rm.add_argument("--backoff", type=float, default=0.5, help="first retry wait; doubles each retry")
    rm.add_argument("--concurrency", type=int, default=8)


def build_router(args) -> Router:
    """Load the draft and the target named by `add_router_arguments`'s flags and wrap them in a Router."""
    import torch

    from prp.core.modeling import load_model
    from prp.route.remote import RetryPolicy
    from prp.route.router import RouterConfig, load_target

    max_new = args.max_new_tokens or 1024
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    draft, processor = load_model(args.draft, device=device, dtype=args.dtype)
    retry = RetryPolicy(tries=args.tries, timeout_s=args.timeout, backoff_s=args.backoff)
    target = load_target(args.target, device=device, dtype=args.dtype, max_new_tokens=max_new, retry=retry,
                         remote_model=args.target_model, api_key_env=args.api_key_env, concurrency=args.concurrency)
    cfg = RouterConfig(mode=args.mode, rule=args.rule, tau=args.tau, ipr=args.ipr, ipr_backend=args.ipr_backend,
                       rating=args.rating or "free", max_prefix_tokens=args.max_prefix_tokens, max_new_tokens=max_new)
    return Router(draft, processor, target, cfg)


# ------------------------------------------------------------------------------ output


class JsonlSink:
    """Append-only JSONL with flush + fsync per line; knows which ids are already done."""

    def __init__(self, path: str | Path, *, resume: bool):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if resume and self.path.exists():
            good = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.done.add(str(json.loads(line)["id"]))
                    good.append(line)
                except (ValueError, KeyError, TypeError):  # a torn line from the interruption
                    log.warning("dropping an incomplete line of %s", self.path)
            self.path.write_text("".join(g + "\n" for g in good), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(str(row["id"]))

    def close(self) -> None:
        self._f.close()


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------ scoring


def score_row(row: dict, record, judge=None) -> None:
    """Add gold / correct: `row["answer"]` judged by `judge(record, answer)` (the benchmark's own rule,
    passed in by the entry script, e.g. prp.eval.judge.routing_judge; prp/route never imports prp/eval).
    No judge, or no gold: `correct` stays None."""
    if record.answer is None:
        return
    row["gold"] = record.answer
    row["correct"] = None if judge is None else bool(judge(record, row.get("answer")))


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def route_file(router: Router, data: str | Path, out: str | Path, policy, *, batch_size: int = 16,
               resume: bool = False, target_all: bool = False, judge=None) -> list[dict]:
    """Route every line of `data` into `out`; returns all rows of `out` (resumed ones included)."""
    loaded = load_jsonl(data, check_images=True)
    sink = JsonlSink(out, resume=resume)
    try:
        for err in loaded.errors:  # malformed lines / unreadable images: an output line each
            rid = str(err["id"]) if err.get("id") is not None else f"line-{err['line']}"
            if rid not in sink.done:
                sink.write(error_row(rid, err["error"], line=err["line"]))
        todo = [r for r in loaded.records if r.id not in sink.done]
        for batch in _batches(todo, batch_size):
            queries, golds = [], {}
            for rec in batch:
                try:
                    image = rec.load_image()
                except ImageError as exc:  # became unreadable since loading
                    sink.write(error_row(rec.id, str(exc)))
                    continue
                queries.append(Query(id=rec.id, question=rec.question, image=image, gold=rec.answer))
                golds[rec.id] = rec
            if not queries:
                continue
            for row in router.route_batch(queries, policy, target_all=target_all):
                score_row(row, golds[row["id"]], judge)
                sink.write(row)
    finally:
        sink.close()
    return read_rows(out)


# ------------------------------------------------------------------------------ summary


def summarize(rows: list[dict]) -> dict:
    """Share routed, latency, speedup vs target-only, accuracy (where gold is present).

    Speedup: mean target-only latency / mean routed latency.  Target-only latency is measured
    per query when the run had `--measure-target-only`; otherwise it is estimated as the mean
    target latency of the queries that did go to the target (routed queries are the hard ones,
    so this is an estimate, labelled as such).
    """
    ok = [r for r in rows if not r.get("error") or r.get("fallback")]
    out: dict = {"queries": len(rows), "errors": len(rows) - len(ok)}
    if not ok:
        return out
    routed = [r for r in ok if r["route"] == "target"]
    out["share_routed"] = len(routed) / len(ok)
    out["fallbacks"] = sum(1 for r in ok if r.get("fallback"))
    out["missing_rating"] = sum(1 for r in ok if r.get("d") is None)
    out["mean_latency_s"] = statistics.fmean(r["latency_s"] for r in ok)
    out["mean_prefix_latency_s"] = statistics.fmean(r["prefix_latency_s"] for r in ok)
    measured = [r["target_only_latency_s"] for r in ok if r.get("target_only_latency_s") is not None]
    estimated = [r["target_latency_s"] for r in routed if not r.get("fallback") and r.get("target_latency_s")]
    if measured and len(measured) == len(ok):
        out["target_only_mean_latency_s"] = statistics.fmean(measured)
        out["speedup_vs_target_only"] = out["target_only_mean_latency_s"] / out["mean_latency_s"]
        out["speedup_basis"] = "measured"
    elif estimated:
        out["target_only_mean_latency_s"] = statistics.fmean(estimated)
        out["speedup_vs_target_only"] = out["target_only_mean_latency_s"] / out["mean_latency_s"]
        out["speedup_basis"] = "estimated from routed queries' target latency"
    scored = [r for r in ok if r.get("correct") is not None]
    if scored:
        out["accuracy"] = sum(r["correct"] for r in scored) / len(scored)
        out["accuracy_n"] = len(scored)
    return out


def format_summary(s: dict) -> str:
    lines = [f"queries {s['queries']}  errors {s['errors']}"]
    if "share_routed" in s:
        lines.append(f"routed to target {s['share_routed']:.1%}  fallbacks {s['fallbacks']}  "
                     f"missing rating {s['missing_rating']}")
        lines.append(f"mean latency {s['mean_latency_s']:.3f}s  (prefix {s['mean_prefix_latency_s']:.3f}s)")
    if "speedup_vs_target_only" in s:
        lines.append(f"speedup vs target-only {s['speedup_vs_target_only']:.2f}x ({s['speedup_basis']}; "
                     f"target-only {s['target_only_mean_latency_s']:.3f}s/query)")
    if "accuracy" in s:
        lines.append(f"accuracy {s['accuracy']:.1%} over {s['accuracy_n']} with gold")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ calibration


def calibrate_on(router: Router, val_path: str | Path, *, p_t: float | None, target_acc: float | None,
                 batch_size: int = 16, judge=None):
    """Sec. 4.4 (a): scores on a labelled validation split, draft/target correctness, then T in the
    router's rule direction.

    Correctness comes from the file when every line carries `draft_correct` and `target_correct`
    (a per-instance table, e.g. from an earlier evaluation); otherwise both models answer every
    validation query (the draft from its prefix cache) and `judge(record, answer)` (the benchmark's
    own rule, as in evaluation) scores them.
    """
    from prp.route.decide import FixedThreshold, calibrate

    loaded = load_jsonl(val_path, check_images=True, require_answer=True)
    recs = loaded.records
    if not recs:
        raise SystemExit(f"no usable labelled records in {val_path} ({loaded.summary()})")
    table = all("draft_correct" in r.meta and "target_correct" in r.meta for r in recs)
    if not table and judge is None:
        raise ValueError("calibration needs a judge (the benchmark's rule) unless the file has correctness columns")
    scores, dc, tc = [], [], []
    for batch in _batches(recs, batch_size):
        queries = [Query(id=r.id, question=r.question, image=r.load_image(), gold=r.answer) for r in batch]
        if table:
            scores += [x.score for x in router.rate(queries)[1]]
            dc += [float(r.meta["draft_correct"]) for r in batch]
            tc += [float(r.meta["target_correct"]) for r in batch]
            continue
        rows = router.route_rows(queries, FixedThreshold(None, router.rule.name), target_all=True, draft_all=True)
        for row, rec in zip(rows, batch):
            scores.append(row.score)
            dc.append(float(judge(rec, row.draft_answer)))
            tc.append(float(judge(rec, row.target_answer)))
    cal = calibrate(scores, dc, tc, p_t=p_t, target_acc=target_acc, rule=router.rule)
    cal.mode, cal.tau, cal.ipr = router.cfg.mode, router.cfg.tau, router.cfg.ipr
    cal.judge = getattr(judge, "bench", "") if not table else "table"
    return cal
