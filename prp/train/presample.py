"""Pre-sampling stages: the target's accuracy Acc_tgt (Alg. 2 l.1-7, JRL's labels) and Paradigm 2's
[CN]/[UN]-labelled set (Sec. 2.1 / Sec. 5, `presample_cn`, sft-cn's training data).

For each record, M completions from the target under its plain prompt P; Acc_tgt = mean correct.
A completion is judged the way evaluation judges the target: one answer extraction
(`prp.core.answers.extract_answer`: the <answer> tag, else \\boxed{}, else "the answer is ...",
else the last number) and one judge (`prp.core.judge.accuracy_reward`: choice letters, else
math-verify), or a benchmark's own pair when the caller passes its judge (`judge=`, with the
benchmark's `extract` as `judge.extract`, e.g. prp.eval.judge.routing_judge(name)).
The cache is a JSONL file, one line per finished record:

    {"id": "train-00012", "acc": 0.4375, "n": 16}

Resumable and crash-safe: a record's line is appended, flushed and fsynced as soon as it is
done, a re-run skips ids already present, and a torn last line (killed mid-write) is cut off
before appending, so an interrupted run loses at most the record in flight and duplicates none.

The target is a local HF dir ("tiny:<size>" builds a tiny one) or an OpenAI-compatible endpoint
("openai:<model>" + base URL; the key comes from an env var; images go as base64 data URLs).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from prp.core.answers import extract_answer
from prp.core.data import Record
from prp.core.jsonl import JsonError, jsonl_lines, loads
from prp.core.judge import accuracy_reward
from prp.core.modeling import set_pixel_bounds
from prp.core.prompts import CN_TOKEN, P_TARGET, UN_TOKEN, build_messages
from prp.route.remote import chat_messages, completions_url
from prp.train.rewards import group_accuracy

log = logging.getLogger(__name__)

# A target answers a batch of records with M completion texts each.
Sampler = Callable[[list[Record]], list[list[str]]]
# Is an extracted answer right for a record?  True/False, or None when the gold cannot be judged.
Judge = Callable[[Record, "str | None"], "bool | float | None"]


def default_judge(record: Record, prediction: str | None) -> float | None:
    """Evaluation's generic rule (the embedded benchmark's): choice letter, else math-verify; None for
    an unparsable or missing gold.

    >>> default_judge(Record(id="q", question="?", answer="$17$", image=None), "17")
    1.0
    """
    return accuracy_reward(prediction, record.answer or "")


def judge_completion(text: str, record: Record, judge: Judge | None = None) -> bool | None:
    """One target completion -> correct?  The judge's own `extract` if it has one, else extract_answer.

    >>> r = Record(id="q", question="?", answer="12", image=None)
    >>> judge_completion("... so \\\\boxed{12}", r), judge_completion("<answer>11</answer>", r)
    (True, False)
    """
    judge = judge or default_judge
    extract = getattr(judge, "extract", extract_answer)
    verdict = judge(record, extract(text))
    return None if verdict is None else bool(verdict)


def read_cache(path: str | Path) -> dict[str, float]:
    """id -> Acc_tgt.  Lines that do not parse (a torn tail) are ignored; the last entry of an id wins."""
    cache: dict[str, float] = {}
    path = Path(path)
    if not path.exists():
        return cache
    for _, line in jsonl_lines(path):
        try:
            row = loads(line)
            cache[str(row["id"])] = float(row["acc"])
        except (JsonError, KeyError, TypeError, ValueError):
            continue
    return cache


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (a run killed mid-append) so the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def _append(f, row: dict) -> None:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def presample(
    records: Iterable[Record], sampler: Sampler, cache_path: str | Path, *, m: int, batch_size: int = 1,
    progress: bool = False, judge: Judge | None = None,
) -> Counter:
    """Fill `cache_path` for every record not in it yet; returns counts (cached, done, no_gold).

    `judge`: default `default_judge` with `extract_answer` (see the module docstring).
    """
    def row(record: Record, texts: list[str]) -> dict | None:
        correct = [judge_completion(t, record, judge) for t in texts]  # Alg. 2 l.4-5
        if not texts or any(c is None for c in correct):
            return None  # unparsable gold: no label, JRL will skip the record
        return {"id": record.id, "acc": group_accuracy(correct), "n": len(texts)}  # Alg. 2 l.5-6

    return _fill(records, sampler, Path(cache_path), set(read_cache(cache_path)), row, batch_size=batch_size,
                 desc="presample" if progress else None)


def _fill(records: Iterable[Record], sampler: Sampler, path: Path, done: set[str],
          row_of: Callable[[Record, list[str]], dict | None], *, batch_size: int, desc: str | None) -> Counter:
    """Sample every record whose id is not in `done` and append row_of(record, texts), one fsynced line per
    record (None: counted as no_gold, nothing written); returns counts (cached, done, no_gold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    todo = [r for r in records if r.id not in done]
    counts: Counter = Counter(cached=len(done))
    bar = None
    if desc:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=desc, dynamic_ncols=True)
    with path.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for record, texts in zip(chunk, sampler(chunk), strict=True):
                row = row_of(record, texts)
                if row is None:
                    counts["no_gold"] += 1
                    continue
                _append(f, row)
                counts["done"] += 1
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return counts


# ----------------------------------------------------------------------------- Paradigm 2's labelled set

def presample_cn(
    records: Iterable[Record], sampler: Sampler, path: str | Path, *, batch_size: int = 1, progress: bool = False,
    judge: Judge | None = None,
) -> Counter:
    """Paradigm 2's pre-sampling stage (Sec. 2.1: P2 "starts with a pre-sampling stage before training";
    Sec. 5: "we sample N times per question and append [CN] for correct and [UN] for incorrect"): the
    sampler's answers (N per record, from the model sft-cn starts from: the GRPO-trained one) judged with
    evaluation's rule (`judge_completion`) and labelled.  One JSONL line per record,

        {"id": "train-00012", "samples": [{"text": "<think>...</think><answer>17</answer>", "label": "[CN]"}, ...]}

    resumable and crash-safe like `presample`; a record whose gold cannot be judged gets no line (no_gold).
    """
    def row(record: Record, texts: list[str]) -> dict | None:
        correct = [judge_completion(t, record, judge) for t in texts]
        if not texts or any(c is None for c in correct):
            return None
        return {"id": record.id, "samples": [{"text": t, "label": CN_TOKEN if c else UN_TOKEN}
                                             for t, c in zip(texts, correct, strict=True)]}

    return _fill(records, sampler, Path(path), set(read_cn_set(path)), row, batch_size=batch_size,
                 desc="presample [CN]/[UN]" if progress else None)


def read_cn_set(path: str | Path) -> dict[str, list[dict]]:
    """id -> [{"text", "label"}, ...] of a `presample_cn` file; a torn or malformed line is ignored."""
    out: dict[str, list[dict]] = {}
    path = Path(path)
    if not path.exists():
        return out
    for _, line in jsonl_lines(path):
        try:
            row = loads(line)  # the shared reader: parser limits are a JsonError, not a traceback
            samples = [{"text": str(x["text"]), "label": x["label"]} for x in row["samples"]]
        except (JsonError, KeyError, TypeError, ValueError):
            continue
        if samples and all(x["label"] in (CN_TOKEN, UN_TOKEN) for x in samples):
            out[str(row["id"])] = samples
    return out


def cn_examples(records: Iterable[Record], cn_set: dict[str, list[dict]]) -> list[Record]:
    """sft-cn's training examples: one per labelled sample, the record with the answer text and label in
    `meta` ("cn_text", "cn_label") and id "<record id>#<k>"; records without labels are left out.

    >>> r = Record(id="q", question="?", answer="1", image=None)
    >>> [(e.id, e.meta["cn_label"]) for e in cn_examples([r], {"q": [{"text": "1", "label": "[CN]"},
    ...                                                              {"text": "2", "label": "[UN]"}]})]
    [('q#0', '[CN]'), ('q#1', '[UN]')]
    """
    out = []
    for r in records:
        for k, sample in enumerate(cn_set.get(r.id, ())):
            out.append(dataclasses.replace(r, id=f"{r.id}#{k}",
                                           meta={**r.meta, "cn_text": sample["text"], "cn_label": sample["label"]}))
    return out


# ----------------------------------------------------------------------------- local target


def local_sampler(
    model_dir: str | Path, *, m: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
    seed: int = 0, device: str | None = None, max_pixels: int | None = None,
) -> Sampler:
    """Sample M completions per record from a local HF model (Alg. 2 l.4), through the decode engine
    (prp.route.decode: the compiled static-cache step on CUDA, the eager loop on CPU)."""
    import torch

    from prp.core.batches import build_prompts
    from prp.core.modeling import load_model
    from prp.route import decode
    from prp.train.rollout import step_seed, vision_token_ids

    model, processor = load_model(model_dir, device=device)
    if max_pixels:
        set_pixel_bounds(processor, max_pixels=max_pixels)
    def sample(chunk: list[Record]) -> list[list[str]]:
        msgs = [build_messages(r.question, mode="target", with_image=r.image is not None) for r in chunk]
        prompts = build_prompts(processor, msgs, [r.load_image() for r in chunk], repeat=m,
                                device=model.device)
        # Seeded by the first record's id: a resumed run draws the same samples for a record.
        gen = torch.Generator(device=model.device).manual_seed(step_seed(seed, chunk[0].id))
        completions = decode.generate(model, processor.tokenizer, prompts.model_inputs,
                                      max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      generator=gen, suppress=vision_token_ids(model))
        texts = processor.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [texts[i * m:(i + 1) * m] for i in range(len(chunk))]

    return sample


# ----------------------------------------------------------------------------- remote target


def openai_sampler(
    base_url: str, model: str, *, m: int, max_new_tokens: int, api_key_env: str = "OPENAI_API_KEY",
    temperature: float = 1.0, top_p: float = 1.0, timeout_s: float = 300.0, retries: int = 3,
    opener: Callable = urllib.request.urlopen,
) -> Sampler:
    """M completions per record from an OpenAI-compatible /chat/completions endpoint (vLLM, SGLang, APIs).

    Asks for `n` choices in one request and tops up with more requests if the server returns fewer.
    Network errors and 429/5xx are retried with exponential back-off; other HTTP errors raise.
    """
    url = completions_url(base_url)  # the same URL rule as the router's client (adds /v1 when missing)
    key = os.environ.get(api_key_env, "")

    def post(payload: dict) -> dict:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(retries + 1):
            try:
                with opener(urllib.request.Request(url, data=body, headers=headers), timeout=timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code not in (408, 429, 500, 502, 503, 504) or attempt == retries:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == retries:
                    raise
            time.sleep(min(2.0**attempt, 30.0))
        raise RuntimeError("unreachable")

    def sample(chunk: list[Record]) -> list[list[str]]:
        results = []
        for record in chunk:
            messages = chat_messages(f"{P_TARGET}\n{record.question}", record.load_image())
            texts: list[str] = []
            while len(texts) < m:
                reply = post({"model": model, "messages": messages,
                              "n": m - len(texts), "max_tokens": max_new_tokens,
                              "temperature": temperature, "top_p": top_p})
                got = [c.get("message", {}).get("content") or "" for c in reply.get("choices", [])]
                if not got:
                    raise RuntimeError(f"{url}: reply without choices: {str(reply)[:200]}")
                texts.extend(got)
            results.append(texts[:m])
        return results

    return sample


def make_sampler(cfg, target_dir: str | None = None) -> Sampler:
    """The sampler a TrainConfig asks for ("openai:<model>" -> remote; else a local dir)."""
    if cfg.target_model.startswith("openai:"):
        if not cfg.target_base_url:
            raise ValueError("an openai: target needs target_base_url")
        return openai_sampler(
            cfg.target_base_url, cfg.target_model.removeprefix("openai:"), m=cfg.presample_m,
            max_new_tokens=cfg.max_completion_length, api_key_env=cfg.target_api_key_env,
            temperature=cfg.temperature, top_p=cfg.top_p, timeout_s=cfg.target_timeout_s,
            retries=cfg.target_retries,
        )
    device = "cuda" if torch.cuda.is_available() else None
    return local_sampler(target_dir or cfg.target_model, m=cfg.presample_m,
                         max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                         top_p=cfg.top_p, seed=cfg.seed, device=device, max_pixels=cfg.max_pixels)
