"""Run draft, target and baselines over a benchmark into a per-instance table (eval.py).

For every item the table holds what routing analysis needs (Sec. 5, Tab. 1-2):

    step 1  the draft's ratings from the one rating pipeline (`Router.rate`: d, t, IPR, s with and
            without IPR, per-query prefix time) and its full answer, continued from the cache
    step 2  the target's answer to the same item with its own prompt P
    step 3  the Paradigm-1 signal s_1 (Sec. 2.1): mean token probability of an answer, on the
            `--p1-model`'s own answers (the paper: the GRPO-trained model), else on the routing
            draft's answers; the row says which
    step 4  the Paradigm-2 signal s_2, when an sft-cn model is given: P[CN] / (P[CN] + P[UN]) at the
            tail of ITS OWN answer (Sec. 2.1)
    step 5  every answer judged with the benchmark's official rule

A baseline is judged on the answers that produced its signal: each baseline's model, answer,
correctness and per-query latency go to `signal_answers[name]` with `decision: post_hoc` (it decides
after a complete answer, so a routed query costs that answer + the target, Fig. 6); prp.eval.metrics
reads them.  PRP's `scores` are the rule's keep scores (s, or -s for target-first: higher = keep).

Rows are appended (flush + fsync) to a JSONL cache as each batch finishes, so an interrupted
evaluation resumes where it stopped.  Latencies are per query (docs/routing.md): each batched
call's wall time divided evenly among its rows; use --batch-size 1 for unbatched latencies as in Tab. 2.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prp.core.batches import build_batch, build_prompts, completion_logprobs
from prp.core.data import ImageError, Record
from prp.core.prompts import CN_TOKEN, UN_TOKEN, build_messages
from prp.eval.bench.registry import Benchmark
from prp.eval.settings import check_cache_settings
from prp.route.router import Query, Router
from prp.route.run import JsonlSink, read_rows

log = logging.getLogger(__name__)



@dataclass
class Baselines:
    """Optional models for the baselines' signals."""

    sft_cn_model: object | None = None  # Paradigm 2: fine-tuned to end its answer with [CN] / [UN]
    sft_cn_processor: object | None = None
    sft_cn_name: str = "sft-cn"
    p1_model: object | None = None  # Paradigm 1 on its own answers (the paper: the GRPO-trained model)
    p1_processor: object | None = None
    p1_name: str = "p1-model"
    max_new_tokens: int = 256


def _image_of(record: Record):
    return record.load_image()  # None, a decoded PIL image (parquet downloads) as is, or the file opened


@torch.no_grad()
def mean_token_prob(model, processor, queries: list[Query], completions: list[list[int]], *, mode: str,
                    skip: list[int] | None = None) -> list[float]:
    """s_1 of Sec. 2.1: (1/L) sum_i p_i over the model's generated tokens (teacher-forced).

    `skip[i]` leading tokens of completion i are context, not averaged: the evaluator skips the
    rating prefix, whose tags a forced-grammar run did not choose (s_1 is a signal of the answer).
    """
    msgs = [build_messages(q.question, mode=mode, with_image=q.image is not None) for q in queries]
    prompts = build_prompts(processor, msgs, [q.image for q in queries], repeat=1, device=model.device)
    batch = build_batch(prompts, [c or [processor.tokenizer.eos_token_id] for c in completions],
                        pad_id=processor.tokenizer.pad_token_id)
    mask = batch.completion_mask.clone()  # [B, L]
    for i, k in enumerate(skip or []):
        if k < int(mask[i].sum()):  # keep at least one token when nothing followed the prefix
            mask[i, :k] = 0
    probs = completion_logprobs(model, batch).exp() * mask  # [B, L]
    return (probs.sum(-1) / mask.sum(-1).clamp(min=1)).tolist()


def special_token_signal(model, processor, queries: list[Query], *, max_new_tokens: int) -> list[float]:
    """s_2 of Sec. 2.1: the sft-cn model answers, then P[CN] / (P[CN] + P[UN]) for the token after its answer."""
    return special_token_answers(model, processor, queries, max_new_tokens=max_new_tokens)[1]


@torch.no_grad()
def special_token_answers(model, processor, queries: list[Query], *,
                          max_new_tokens: int) -> tuple[list[list[int]], list[float]]:
    """(the sft-cn model's answer token ids, stopped before [CN] / [UN] / EOS; s_2 of each answer)."""
    from prp.route import decode as gen

    tok = processor.tokenizer
    cn, un = tok.convert_tokens_to_ids(CN_TOKEN), tok.convert_tokens_to_ids(UN_TOKEN)
    if cn == tok.unk_token_id or un == tok.unk_token_id or cn is None or un is None:
        raise ValueError("the --sft-cn model's tokenizer has no [CN] / [UN] tokens: train it with --mode sft-cn")
    msgs = [build_messages(q.question, mode="target", with_image=q.image is not None) for q in queries]
    images = [q.image for q in queries]
    inputs = build_prompts(processor, msgs, images, repeat=1, device=model.device)
    answers = gen.generate(model, tok, inputs.model_inputs, max_new_tokens=max_new_tokens, suppress=(cn, un))
    stop = gen.eos_ids_of(model, tok) | {cn, un}
    bodies = []
    for ids in answers:
        cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
        bodies.append(ids[:cut])
    # two rows per query: body + [CN] and body + [UN]; the last token's log-prob is log P[CN|body] / log P[UN|body]
    pair_prompts = build_prompts(processor, msgs, images, repeat=2, device=model.device)
    rows = [[*b, x] for b in bodies for x in (cn, un)]
    batch = build_batch(pair_prompts, rows, pad_id=tok.pad_token_id)
    logprobs = completion_logprobs(model, batch)  # [2B, L]
    last = torch.tensor([len(r) - 1 for r in rows], device=logprobs.device)
    tail = logprobs.gather(1, last.unsqueeze(1)).squeeze(1).view(-1, 2)  # [B, 2]: log P[CN], log P[UN]
    return bodies, torch.softmax(tail, dim=-1)[:, 0].tolist()


def _keep(rule, score):
    """The rule's keep score (higher = keep on the draft), None for a missing score (JSON-safe)."""
    return None if score is None else rule.keep_score(score)


@torch.no_grad()
def plain_answers(model, processor, queries: list[Query], *, max_new_tokens: int) -> tuple[list[list[int]], float]:
    """A model answering with the target prompt P (greedy): (answer token ids, wall s of the call)."""
    from prp.route import decode as gen

    start = time.perf_counter()
    msgs = [build_messages(q.question, mode="target", with_image=q.image is not None) for q in queries]
    inputs = build_prompts(processor, msgs, [q.image for q in queries], repeat=1, device=model.device)
    ids = gen.generate(model, processor.tokenizer, inputs.model_inputs, max_new_tokens=max_new_tokens)
    return ids, time.perf_counter() - start


def _own_answers(model_name: str, answer: str | None, correct: bool, latency_s: float) -> dict:
    return {"model": model_name, "answer": answer, "correct": bool(correct), "latency_s": latency_s,
            "decision": "post_hoc"}


def evaluate_batch(router: Router, bench: Benchmark, records: list[Record], images: list, *,
                   baselines: Baselines) -> list[dict]:
    """Steps 1-5 for one batch of records and their decoded images (a served draft: `_evaluate_served`)."""
    extract = bench.extract  # the benchmark's own answer extraction, then its own judge

    queries = [Query(id=r.id, question=r.question, image=im, gold=r.answer)
               for r, im in zip(records, images, strict=True)]
    cfg = router.cfg
    prefix, ratings = router.rate(queries)  # step 1
    if router.draft is not None:  # a served draft: a query it failed on gets an error row (skipped, counted)
        return _evaluate_served(router, bench, records, queries, prefix, ratings, baselines=baselines)
    n = len(queries)
    continued, continue_s = router.continue_draft(prefix, list(range(n)))
    targets = router.target.answer(queries)  # step 2 (per-query latency)
    draft_ids = [prefix.tokens[i] + continued.get(i, []) for i in range(n)]
    decode = router.tokenizer.decode
    # the answer comes from after the rating: a last-number fallback must not read "0.87"
    draft_answers = [extract(decode(continued.get(i, []), skip_special_tokens=True)) for i in range(n)]
    draft_correct = [bool(bench.judge(rec, a)) for rec, a in zip(records, draft_answers, strict=True)]  # step 5
    draft_lat = [r.prefix_latency_s + continue_s / n for r in ratings]
    draft_tokens = [len(ids) for ids in draft_ids]

    # step 3: P1 on the --p1-model's own answers, else on the routing draft's (prefix skipped)
    if baselines.p1_model is not None:
        p1, p1_own = _p1_model_signal(bench, records, queries, baselines)
    else:
        p1 = mean_token_prob(router.model, router.processor, queries, draft_ids, mode=cfg.mode,
                             skip=[len(t) for t in prefix.tokens])
        p1_own = [_own_answers("routing draft", a, c, lat)
                  for a, c, lat in zip(draft_answers, draft_correct, draft_lat, strict=True)]
    return _instance_rows(router, bench, records, queries, ratings, targets, draft_answers, draft_correct,
                          draft_lat, draft_tokens, p1, p1_own, baselines=baselines)


def _evaluate_served(router: Router, bench: Benchmark, records: list[Record], queries: list[Query], prefix,
                     ratings, *, baselines: Baselines) -> list[dict]:
    """evaluate_batch's steps 1-5 with a served draft: its answers continue the prefix on the server; P1
    without --p1-model is the mean probability of the answer's tokens as the server generated them
    (greedy, so the same numbers as teacher-forcing them locally); a query the draft failed on gets an
    error row (`{"id", "error"}`: skipped and counted by the report, retried by a later resume)."""
    ok = [i for i, r in enumerate(ratings) if r.error is None]
    continued, _ = router.continue_draft(prefix, ok)
    ok = [i for i in ok if continued[i].text is not None]
    failed = {i: ratings[i].error or continued[i].error for i in range(len(queries)) if i not in ok}
    sub = [queries[i] for i in ok]
    targets = router.target.answer(sub)  # step 2 (per-query latency)
    texts = [router.draft_output(prefix, i, continued[i]) for i in ok]
    draft_answers = [bench.extract(after) for _, after, _, _ in texts]
    recs = [records[i] for i in ok]
    draft_correct = [bool(bench.judge(rec, a)) for rec, a in zip(recs, draft_answers, strict=True)]
    draft_lat = [ratings[i].prefix_latency_s + continued[i].latency_s for i in ok]
    draft_tokens = [tokens for _, _, tokens, _ in texts]
    if baselines.p1_model is not None:
        p1, p1_own = _p1_model_signal(bench, recs, sub, baselines)
    else:  # s_1 (Sec. 2.1) from the served answer's own token log-probabilities, the prefix skipped
        p1 = [sum(math.exp(x) for x in continued[i].logprobs) / max(len(continued[i].logprobs), 1) for i in ok]
        p1_own = [_own_answers("routing draft", a, c, lat)
                  for a, c, lat in zip(draft_answers, draft_correct, draft_lat, strict=True)]
    rows = _instance_rows(router, bench, recs, sub, [ratings[i] for i in ok], targets, draft_answers,
                          draft_correct, draft_lat, draft_tokens, p1, p1_own, baselines=baselines)
    by_row = dict(zip(ok, rows, strict=True))
    return [by_row[i] if i in by_row else {"id": records[i].id, "error": failed[i]} for i in range(len(queries))]


def _p1_model_signal(bench: Benchmark, records: list[Record], queries: list[Query], baselines: Baselines):
    """P1 on the --p1-model's own answers (the paper: the GRPO-trained model): (s_1, its answers)."""
    n = len(queries)
    p1_ids, p1_s = plain_answers(baselines.p1_model, baselines.p1_processor, queries,
                                 max_new_tokens=baselines.max_new_tokens)
    p1 = mean_token_prob(baselines.p1_model, baselines.p1_processor, queries, p1_ids, mode="target")
    p1_answers = [bench.extract(baselines.p1_processor.tokenizer.decode(ids, skip_special_tokens=True))
                  for ids in p1_ids]
    return p1, [_own_answers(baselines.p1_name, a, bench.judge(rec, a), p1_s / n)
                for rec, a in zip(records, p1_answers, strict=True)]


def _instance_rows(router: Router, bench: Benchmark, records: list[Record], queries: list[Query], ratings, targets,
                   draft_answers, draft_correct, draft_lat, draft_tokens, p1, p1_own, *,
                   baselines: Baselines) -> list[dict]:
    """Steps 4-5 and the table's rows (P2 on the sft-cn model's own answers)."""
    extract, cfg, rule, n = bench.extract, router.cfg, router.rule, len(queries)
    # step 4: P2 on the sft-cn model's own answers
    p2, p2_own = None, None
    if baselines.sft_cn_model is not None:
        start = time.perf_counter()
        bodies, p2 = special_token_answers(baselines.sft_cn_model, baselines.sft_cn_processor, queries,
                                           max_new_tokens=baselines.max_new_tokens)
        p2_s = time.perf_counter() - start
        tok = baselines.sft_cn_processor.tokenizer
        p2_answers = [extract(tok.decode(b, skip_special_tokens=True)) for b in bodies]
        p2_own = [_own_answers(baselines.sft_cn_name, a, bench.judge(rec, a), p2_s / n)
                  for rec, a in zip(records, p2_answers, strict=True)]

    rows = []
    for i, (record, rating, target) in enumerate(zip(records, ratings, targets, strict=True)):
        target_answer = extract(target.text) if target.text is not None else None
        rows.append({
            "id": record.id, "split": record.split or None, "gold": record.answer,
            **{k: v for k, v in rating.to_json().items() if k != "error"}, "mode": cfg.mode, "rule": rule.name,
            "scores": {"prp": _keep(rule, rating.score), "prp_no_ipr": _keep(rule, rating.score_no_ipr),
                       "p1": p1[i], **({"p2": p2[i]} if p2 is not None else {})},
            "signal_answers": {"p1": p1_own[i], **({"p2": p2_own[i]} if p2_own is not None else {})},
            "draft_answer": draft_answers[i], "draft_correct": draft_correct[i],
            "target_answer": target_answer,
            "target_correct": target_answer is not None and bool(bench.judge(record, target_answer)),
            "target_error": target.error,
            "draft_latency_s": draft_lat[i], "target_latency_s": target.latency_s,
            "draft_tokens": draft_tokens[i], "target_tokens": target.completion_tokens,
        })
    return rows


def run_benchmark(router: Router, bench: Benchmark, records: list[Record], cache: str | Path, *,
                  batch_size: int = 8, resume: bool = True, baselines: Baselines | None = None,
                  settings: dict | None = None) -> list[dict]:
    """Evaluate every record into `cache` (resumable); returns all rows of the cache.

    Each row carries `line`, the record's 1-based position in `records` (the cache's key, as in
    route.py's batch files); a resume skips the positions already written for the same id and
    refuses a cache written for other records, or with other `settings` (models and scoring flags,
    `prp.eval.settings`; None: not checked).
    """
    baselines = baselines or Baselines()
    if settings is not None:
        check_cache_settings(cache, settings, resume=resume)
    sink = JsonlSink(cache, resume=resume)
    for line, rid in sink.done.items():
        if line > len(records) or records[line - 1].id != rid:
            sink.close()
            raise SystemExit(f"{cache}: line {line} holds id {rid!r}, not this benchmark's record there; "
                             "evaluate into a new --out-dir or pass --no-resume")
    todo = [(line, r) for line, r in enumerate(records, 1) if line not in sink.done]
    try:
        with tqdm(total=len(records), initial=len(records) - len(todo), desc=f"eval {bench.name}") as bar:
            for i in range(0, len(todo), batch_size):
                batch, ok, lines, images = todo[i: i + batch_size], [], [], []
                for line, record in batch:
                    try:
                        images.append(_image_of(record))
                        ok.append(record)
                        lines.append(line)
                    except ImageError as exc:  # counted in the report, never a crash
                        sink.write({"id": record.id, "line": line, "error": str(exc)})
                if ok:
                    rows = evaluate_batch(router, bench, ok, images, baselines=baselines)
                    for line, row in zip(lines, rows, strict=True):
                        sink.write({"line": line, **row})
                bar.update(len(batch))
    finally:
        sink.close()
    return read_rows(cache)
