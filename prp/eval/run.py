"""Run draft, target and baselines over a benchmark into a per-instance table (eval.py).

For every item the table holds what routing analysis needs (Sec. 5, Tab. 1-2):

    step 1  the draft's rating prefix (d, t, IPR) and its full answer, continued from the cache
    step 2  the target's answer to the same item with its own prompt P
    step 3  the Paradigm-1 signal: mean token probability of the draft's output (Sec. 2.1, s_1)
    step 4  the Paradigm-2 signal, when an sft-cn model is given: P[CN] / (P[CN] + P[UN]) at the
            tail of its own answer (Sec. 2.1, s_2)
    step 5  each answer judged with the benchmark's official rule

Rows are appended (flush + fsync) to a JSONL cache as each batch finishes, so an interrupted
evaluation resumes where it stopped.  Latencies of a batched run are the batch's wall time
(what each query waited); use --batch-size 1 for per-query latencies as in Tab. 2.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prp.eval.bench.records import BenchRecord
from prp.eval.bench.registry import Benchmark
from prp.core.data import ImageError, open_image
from prp.core.prompts import CN_TOKEN, UN_TOKEN, build_messages
from prp.train.rollout import build_batch, build_prompts, completion_logprobs
from prp.route.run import JsonlSink, read_rows
from prp.route.router import Query, Router
from prp.route.scoring import route_score

log = logging.getLogger(__name__)



@dataclass
class Baselines:
    """Optional models for the baselines' signals."""

    sft_cn_model: object | None = None  # Paradigm 2: fine-tuned to end its answer with [CN] / [UN]
    sft_cn_processor: object | None = None
    max_new_tokens: int = 256


def _image_of(record: BenchRecord):
    if record.image is None or not isinstance(record.image, (str, Path)):
        return record.image  # None, or a decoded PIL image (parquet downloads)
    return open_image(record.image)


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
    rows = [b + [x] for b in bodies for x in (cn, un)]
    batch = build_batch(pair_prompts, rows, pad_id=tok.pad_token_id)
    logprobs = completion_logprobs(model, batch)  # [2B, L]
    last = torch.tensor([len(r) - 1 for r in rows], device=logprobs.device)
    tail = logprobs.gather(1, last.unsqueeze(1)).squeeze(1).view(-1, 2)  # [B, 2]: log P[CN], log P[UN]
    return bodies, torch.softmax(tail, dim=-1)[:, 0].tolist()


def _nan(x):
    return math.nan if x is None else x


def evaluate_batch(router: Router, bench: Benchmark, records: list[BenchRecord], images: list, *,
                   baselines: Baselines) -> list[dict]:
    """Steps 1-5 for one batch of records and their decoded images."""
    queries = [Query(id=r.id, question=r.question, image=im, gold=r.answer) for r, im in zip(records, images)]
    n, cfg = len(queries), router.cfg
    start = time.perf_counter()
    prefix = router.pregenerate(queries)  # step 1
    prefix_s = time.perf_counter() - start
    ratings = router.evaluate(prefix)
    continued, continue_s = router.continue_draft(prefix, list(range(n)))
    targets = router.target.answer(queries)  # step 2
    draft_ids = [prefix.tokens[i] + continued.get(i, []) for i in range(n)]
    p1 = mean_token_prob(router.model, router.processor, queries, draft_ids, mode=cfg.mode,  # step 3
                         skip=[len(t) for t in prefix.tokens])
    p2 = (None if baselines.sft_cn_model is None else  # step 4
          special_token_signal(baselines.sft_cn_model, baselines.sft_cn_processor, queries,
                               max_new_tokens=baselines.max_new_tokens))
    from prp.core.answers import extract_answer

    rows = []
    for i, (record, rating, target) in enumerate(zip(records, ratings, targets)):
        # the answer comes from after the rating: a last-number fallback must not read "0.87"
        draft_answer = extract_answer(router.tokenizer.decode(continued.get(i, []), skip_special_tokens=True))
        target_answer = extract_answer(target.text) if target.text is not None else None
        no_ipr = None if rating.d is None else route_score(
            rating.d, rating.t if cfg.mode == "jrl" else None, tau=cfg.tau, rule=cfg.rule)
        rows.append({
            "id": record.id, "split": record.split or None, "gold": record.answer,
            "d": rating.d, "t": rating.t, "ipr_d": rating.ipr_d, "ipr_t": rating.ipr_t,
            "scores": {"prp": _nan(rating.score), "prp_no_ipr": _nan(no_ipr), "p1": p1[i],
                       **({"p2": p2[i]} if p2 is not None else {})},
            "draft_answer": draft_answer, "draft_correct": bench.judge(record, draft_answer),  # step 5
            "target_answer": target_answer,
            "target_correct": target_answer is not None and bench.judge(record, target_answer),
            "target_error": target.error,
            "prefix": prefix.texts[i],
            "prefix_latency_s": prefix_s, "draft_latency_s": prefix_s + continue_s,
            "target_latency_s": target.latency_s,
            "draft_tokens": len(draft_ids[i]), "target_tokens": target.completion_tokens,
        })
    return rows


def run_benchmark(router: Router, bench: Benchmark, records: list[BenchRecord], cache: str | Path, *,
                  batch_size: int = 8, resume: bool = True, baselines: Baselines | None = None) -> list[dict]:
    """Evaluate every record into `cache` (resumable); returns all rows of the cache."""
    baselines = baselines or Baselines()
    sink = JsonlSink(cache, resume=resume)
    todo = [r for r in records if r.id not in sink.done]
    try:
        with tqdm(total=len(records), initial=len(records) - len(todo), desc=f"eval {bench.name}") as bar:
            for i in range(0, len(todo), batch_size):
                batch, ok, images = todo[i: i + batch_size], [], []
                for record in batch:
                    try:
                        images.append(_image_of(record))
                        ok.append(record)
                    except ImageError as exc:  # counted in the report, never a crash
                        sink.write({"id": record.id, "error": str(exc)})
                if ok:
                    for row in evaluate_batch(router, bench, ok, images, baselines=baselines):
                        sink.write(row)
                bar.update(len(batch))
    finally:
        sink.close()
    return read_rows(cache)
