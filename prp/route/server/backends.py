"""What the worker runs: the router (micro-batched, Sec. 4.4 b) or a local HF model.

A backend has a `name` (/v1/models), `prepare(request, ticket)` (runs in a thread pool before
queueing; raises `RequestError` for that request only; decoded images are held by the request's
`ImageTicket` and shrunk to `max_pixels`, the processors' own pixel budget), `process(items)` (runs on
the worker thread, one completion body per item) and `batch_size`.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from dataclasses import replace

from prp.route.server.chat import (
    ParsedChat,
    check_prompt_tokens,
    default_prompt_limit,
    dropped_on_error,
    parse_chat,
)
from prp.route.server.images import ImageTicket, processor_max_pixels
from prp.route.server.limits import ServeLimits
from prp.route.server.schemas import ChatRequest, completion_body

log = logging.getLogger(__name__)

# the router's metadata returned to clients under "prp" (never the target's URL: see prp.route.remote)
ROUTE_META = ("route", "answered_by", "d", "t", "ipr_d", "ipr_t", "score", "fallback", "error", "prefix",
              "prefix_latency_s", "continue_latency_s", "target_latency_s", "latency_s", "prefix_tokens")


def _field(row, key):
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


class RouterBackend:
    """The router behind the endpoint; concurrent requests are routed together as one batch."""

    def __init__(self, router, policy, limits: ServeLimits, *, batch_size: int = 8, name: str = "prp-router"):
        if limits.max_images > 1:
            log.warning("the router routes one image per query: --max-images %d lowered to 1", limits.max_images)
            limits = replace(limits, max_images=1)
        budget = router.cfg.max_prefix_tokens + router.cfg.max_new_tokens
        self.prompt_limit = limits.max_prompt_tokens or default_prompt_limit(router.model, budget)
        self.router, self.policy, self.limits, self.batch_size, self.name = router, policy, limits, batch_size, name
        # images are shrunk to the largest budget of the local processors that will see them (a
        # remote target gets the draft's: its processor is unknown here)
        budgets = [processor_max_pixels(router.processor),
                   processor_max_pixels(getattr(getattr(router, "target", None), "processor", None))]
        self.max_pixels = None if budgets[0] is None else max(b for b in budgets if b)

    def prepare(self, req: ChatRequest, ticket: ImageTicket | None = None):
        from prp.route.router import Query

        parsed: ParsedChat = parse_chat(req, self.limits, ticket=ticket, max_pixels=self.max_pixels)
        with dropped_on_error(parsed.images):
            check_prompt_tokens(parsed, self.router.processor, self.prompt_limit)
        return Query(id=uuid.uuid4().hex, question=parsed.question, image=parsed.images[0] if parsed.images else None,
                     max_new_tokens=parsed.max_tokens)

    def process(self, queries: list) -> list[dict]:
        rows = self.router.route_batch(queries, self.policy)
        return [completion_body(_field(row, "text") or "", model=_field(row, "answered_by") or "draft",
                                completion_tokens=_field(row, "completion_tokens"),
                                extra={"prp": {k: _field(row, k) for k in ROUTE_META}})
                for row in rows]


def parse_faults(spec: str | None) -> dict:
    """TEST-ONLY fault injection: 'rate=0.3,kinds=503+close+timeout,delay=2,seed=0' -> dict.

    >>> parse_faults("rate=0.5,kinds=503+close")["kinds"]
    ['503', 'close']
    """
    faults = {"rate": 0.0, "kinds": ["503"], "delay": 2.0, "seed": 0}
    for item in filter(None, (spec or "").split(",")):
        key, _, value = item.partition("=")
        if key == "kinds":
            faults["kinds"] = value.split("+")
        elif key in ("rate", "delay"):
            faults[key] = float(value)
        elif key == "seed":
            faults[key] = int(value)
        else:
            raise ValueError(f"unknown fault option {key!r}")
    return faults


class ModelBackend:
    """A local HF model as a target endpoint, one request at a time on the model.

    `canned`: answer this text without a model (load tests of the HTTP path).  `faults`
    (TEST-ONLY, env PRP_SERVE_FAULTS): fail a share of requests with a 503, a connection dropped
    mid-answer, or an answer after `delay` seconds, so a client's retries run against a real server.
    """

    batch_size = 1

    def __init__(self, model_dir: str | None, limits: ServeLimits, *, name: str | None = None,
                 canned: str | None = None, faults: dict | None = None, engine: str | None = None,
                 base_model: str | None = None):
        self.name = name or (os.path.basename(str(model_dir).rstrip("/")) if model_dir else "canned")
        self.limits, self.canned = limits, canned
        self.faults = faults or parse_faults(None)
        self._rng, self._rng_lock = random.Random(self.faults["seed"]), threading.Lock()
        self.model = self.processor = self.max_pixels = None
        self.prompt_limit = limits.max_prompt_tokens or 1 << 30
        if canned is None:
            from prp.core.modeling import load_model
            from prp.route.flags import apply_engine

            self.model, self.processor = load_model(model_dir, base_model=base_model)  # an adapter: unmerged
            apply_engine(engine, self.model)  # --engine; None keeps the default (compiled on CUDA, else eager)
            self.prompt_limit = limits.max_prompt_tokens or default_prompt_limit(self.model, limits.max_tokens)
            self.max_pixels = processor_max_pixels(self.processor)

    def fault(self) -> str | None:
        with self._rng_lock:
            if self.faults["rate"] and self._rng.random() < self.faults["rate"]:
                return self._rng.choice(self.faults["kinds"])
        return None

    def prepare(self, req: ChatRequest, ticket: ImageTicket | None = None) -> ParsedChat:
        parsed = parse_chat(req, self.limits, ticket=ticket, max_pixels=self.max_pixels)
        if self.processor is not None:
            with dropped_on_error(parsed.images):
                check_prompt_tokens(parsed, self.processor, self.prompt_limit)
        return parsed

    def process(self, items: list[ParsedChat]) -> list[dict]:
        return [self._complete(p) for p in items]

    def _complete(self, parsed: ParsedChat) -> dict:
        if self.canned is not None:
            return completion_body(self.canned, model=self.name, completion_tokens=0)
        from prp.core.modeling import prepare_inputs
        from prp.route import decode as gen

        inputs = prepare_inputs(self.processor, [parsed.messages], [parsed.images] if parsed.images else None,
                                device=self.model.device)
        tokens = list(gen.generate(self.model, self.processor.tokenizer, inputs,
                                   max_new_tokens=parsed.max_tokens)[0])[: parsed.max_tokens]
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return completion_body(text, model=self.name, prompt_tokens=int(inputs["input_ids"].shape[1]),
                               completion_tokens=len(tokens),
                               finish_reason="length" if len(tokens) >= parsed.max_tokens else "stop")
