"""The target of Alg. 3-4 l.14-15: a local model answering with the target prompt P, or an
OpenAI-compatible endpoint (prp.route.remote) queried concurrently, whose failures become the draft's
fallback (Sec. 4.2)."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prp.core.modeling import prepare_inputs
from prp.core.prompts import P_TARGET, build_messages
from prp.route import decode as gen

if TYPE_CHECKING:
    from prp.route.router import Query

log = logging.getLogger(__name__)


@dataclass
class TargetAnswer:
    text: str | None  # None when the target failed
    model: str
    completion_tokens: int | None
    latency_s: float
    error: str | None = None
    attempts: int = 1


class LocalTarget:
    """A local HF target model answering with the target prompt P (Alg. 3-4 l.14-15), batched."""

    def __init__(self, model, processor, *, name: str = "target", max_new_tokens: int = 1024):
        self.model, self.processor, self.name, self.max_new_tokens = model, processor, name, max_new_tokens
        self.remote = False

    def answer(self, queries: list[Query]) -> list[TargetAnswer]:
        if not queries:
            return []
        start = time.perf_counter()
        msgs = [build_messages(q.question, mode="target", with_image=q.image is not None) for q in queries]
        inputs = gen_inputs(self.processor, msgs, [q.image for q in queries], self.model)
        caps = [min(q.max_new_tokens or self.max_new_tokens, self.max_new_tokens) for q in queries]
        tokens = gen.generate(self.model, self.processor.tokenizer, inputs, max_new_tokens=max(caps))
        tokens = [list(ids)[:cap] for ids, cap in zip(tokens, caps, strict=True)]  # each query's own max_tokens
        # per-query latency: the batch's wall time divided evenly (docs/routing.md)
        latency = (time.perf_counter() - start) / len(queries)
        texts = self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return [TargetAnswer(text=t, model=self.name, completion_tokens=len(ids), latency_s=latency)
                for t, ids in zip(texts, tokens, strict=True)]


class RemoteTarget:
    """An OpenAI-compatible endpoint (prp.route.remote), queried concurrently."""

    def __init__(self, client, *, concurrency: int = 8):
        self.client, self.concurrency, self.name, self.remote = client, concurrency, client.model, True

    def answer_one(self, query: Query) -> TargetAnswer:
        from prp.route.remote import RemoteError, chat_messages

        start = time.perf_counter()
        try:
            out = self.client.chat(chat_messages(f"{P_TARGET}\n{query.question}", query.image),
                                   max_tokens=query.max_new_tokens)
        except Exception as exc:  # any failure of the target is the draft's fallback (Sec. 4.2)
            error = str(exc) if isinstance(exc, RemoteError) else f"target: unexpected {type(exc).__name__}"
            if not isinstance(exc, RemoteError):  # the client should have turned it into a RemoteError
                log.warning("target call failed: %r", exc)
            return TargetAnswer(text=None, model=self.name, completion_tokens=None,
                                latency_s=time.perf_counter() - start, error=error,
                                attempts=self.client.retry.tries)
        return TargetAnswer(text=out.text, model=out.model, completion_tokens=out.completion_tokens,
                            latency_s=out.latency_s, attempts=out.attempts)

    def answer(self, queries: list[Query]) -> list[TargetAnswer]:
        if not queries:
            return []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.answer_one, queries))


def load_target(spec: str, *, device=None, dtype=None, max_new_tokens: int = 1024, retry=None,
                remote_model: str | None = None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8):
    """A target from the command line's spelling: an http(s) base URL (OpenAI-compatible) or a local dir."""
    if spec.startswith(("http://", "https://")):
        from prp.route.remote import OpenAIClient, RetryPolicy

        client = OpenAIClient(spec, remote_model or "target", api_key_env=api_key_env,
                              retry=retry or RetryPolicy(), max_tokens=max_new_tokens)
        return RemoteTarget(client, concurrency=concurrency)
    from pathlib import Path

    from prp.core.modeling import load_model

    model, processor = load_model(spec, device=device, dtype=dtype)
    return LocalTarget(model, processor, name=Path(spec).name, max_new_tokens=max_new_tokens)


def gen_inputs(processor, messages, images, model):
    """Processor inputs on the model's device; None images mean text-only rows."""
    return prepare_inputs(processor, messages, images, device=model.device)
