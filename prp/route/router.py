"""Three-stage proactive routing (Sec. 4.2, Alg. 3-4) for one batch of queries.

    step 1  pre-generate   the draft writes only its rating prefix, batched, each row stopping
                           after its own `</confidence>` (Alg. 3-4 l.1-9)
    step 2  evaluate       parse d (and t), IPR from the tenths-digit logits (Sec. 4.3, Eq. 9),
                           d' = d + p_d, t' = t + p_t, then s = d' | d' + (d'-t')/tau | t' + (t'-d')/tau
                           (`Router.rate` = steps 1-2: one `RatingRow` per query, the one rating pipeline)
    step 3  decide         in the rule's direction (prp.route.scoring.Rule): draft-first keeps s > T
                           (Alg. 3 l.11, Alg. 4 l.12), target-first keeps s < T; T from prp.route.decide
    step 4  continue       kept rows continue from the prefix KV cache (l.12); routed rows go to
                           the target with its own prompt P (l.14-15); a target that fails after
                           its retries falls back to the draft's cache (`fallback: true`)

A missing d (no closed rating within `max_prefix_tokens`) gives score None, treated as -inf:
the query goes to the target.  In JRL draft-first a missing t leaves s = d'; target-first needs t
(its s points the other way), so a missing t gives score None there too.

Latencies are per query (docs/routing.md): each batched stage's wall time is divided evenly among
the rows that took part; a remote target's time is its own request's.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from PIL import Image

from prp.core.answers import extract_answer
from prp.core.modeling import digit_token_ids
from prp.core.parsing import parse_completion
from prp.core.prompts import build_messages
from prp.route import decode as gen
from prp.route.ipr import digit_stats_from_logits, ipr_from_top_logprobs
from prp.route.isolate import run_isolated
from prp.route.rows import RatingRow, RouteRow
from prp.route.scoring import apply_ipr, get_rule
from prp.route.targets import TargetAnswer, gen_inputs

log = logging.getLogger(__name__)


@dataclass
class RouterConfig:
    mode: str = "jrl"  # "drl": prefix <confidence>d</confidence>; "jrl": <target>t</target><confidence>d</confidence>
    rule: str = "draft_first"  # JRL scoring rule and its direction (Sec. 4.2); DRL is always draft-first
    tau: float = 2.0
    ipr: str = "add"  # prp.route.scoring.apply_ipr mode: add | band | off
    ipr_backend: str = "auto"  # prp.route.ipr dispatcher: Triton on CUDA, torch elsewhere
    rating: str = "free"  # "forced": grammar-forced prefix, the draft picks only the digits
    max_prefix_tokens: int = 24
    max_new_tokens: int = 1024  # draft continuation (after the prefix) and local target
    temperature: float = 0.0


@dataclass
class Query:
    id: str
    question: str
    image: Image.Image | None
    gold: str | None = None
    max_new_tokens: int | None = None  # this query's cap on its answer (after the prefix); None: the config's
    # a served draft failed on this query (after its retries): a re-route (the server isolates a failed
    # batch in halves) fails it at once instead of waiting out the deadline again
    draft_error: str | None = None




@dataclass
class PendingBatch:
    """One batch after `Router.start` (steps 1-3, the draft side of step 4); its routed queries
    wait for the target (`Router.answer_routed`), then `Router.finish` writes its rows."""

    queries: list[Query]
    prefix: gen.PrefixResult  # holds the draft's cache: a routed query the target fails continues from it
    ratings: list[RatingRow]
    keep: list[bool]  # step 3: True = the draft answers
    failed: set[int] = field(default_factory=set)  # rows the draft could not rate (a served draft's error)
    caps: list[int] = field(default_factory=list)  # each query's own cap on its answer
    draft_all: bool = False  # the draft also answered the routed queries (calibration)
    # row -> the draft's answer after the prefix: token ids (local), a DraftContinuation (served draft)
    draft_new: dict[int, list[int]] = field(default_factory=dict)
    draft_each: float = 0.0  # per-query share of the draft continuation's wall time
    answers: dict[int, TargetAnswer] = field(default_factory=dict)  # routed row -> the target's answer
    future: Future | None = None  # a remote target's answers, asked for at start
    pool: ThreadPoolExecutor | None = None

    @property
    def to_target(self) -> list[int]:
        return [i for i, kept in enumerate(self.keep) if not kept and i not in self.failed]

    @property
    def answered(self) -> bool:
        """Ready for `Router.finish`: every routed query has its answer (a remote one's is on its way)."""
        return self.future is not None or all(i in self.answers for i in self.to_target)


class Router:
    """The draft model as a router (Alg. 3-4) in front of a target (LocalTarget / RemoteTarget)."""

    def __init__(self, draft_model, draft_processor, target, cfg: RouterConfig, *, extract=None):
        """`draft_model`: a local HF model, or a served draft (`prp.route.remote_draft.RemoteDraft`, whose
        `draft_processor` is optional: its tokenizer only counts prompt tokens)."""
        # the draft backend: the local decode loop (prp.route.decode) or a served draft (prp.route.remote_draft)
        self.draft = draft_model if getattr(draft_model, "remote", False) else None
        self.model = None if self.draft else draft_model
        self.processor, self.target, self.cfg = draft_processor, target, cfg
        # completion -> answer: the benchmark's own rule when the entry script passes one (route.py --bench)
        self.extract = extract or extract_answer
        self.tokenizer = draft_processor.tokenizer if draft_processor is not None else None
        local = self.draft is None
        self.digit_ids = digit_token_ids(self.tokenizer) if local else None
        self.forced = gen.rating_template(self.tokenizer, cfg.mode) if local and cfg.rating == "forced" else None
        self.rule = get_rule(cfg.rule, mode=cfg.mode)

    # ---------------------------------------------------------------- step 1
    def pregenerate(self, queries: list[Query]) -> gen.PrefixResult:
        """Alg. 3-4 l.1-9: x = (I, Q, P_draft | P_joint); generate until the rating closes."""
        if self.draft is not None:  # a served draft: one request (or one per forced rating) per query
            got = self.draft.prefix(queries)
            return gen.PrefixResult(tokens=[[] for _ in got], texts=[g.text for g in got], stop=[g.stop for g in got],
                                    remote=got, queries=list(queries))
        msgs = [build_messages(q.question, mode=self.cfg.mode, with_image=q.image is not None) for q in queries]
        inputs = gen_inputs(self.processor, msgs, [q.image for q in queries], self.model)
        return gen.generate_prefix(
            self.model, self.tokenizer, inputs, digit_ids=self.digit_ids,
            max_prefix_tokens=self.cfg.max_prefix_tokens, forced=self.forced, temperature=self.cfg.temperature,
        )

    # ---------------------------------------------------------------- step 2
    def _ipr(self, prefix: gen.PrefixResult, tag: str, n: int) -> tuple[list, list, list]:
        """Eq. 9 for every row that has a tenths digit under `tag`, in one batched call:
        (IPR, digits seen, error bound) per row, None where the row has no such digit."""
        out: list[float | None] = [None] * n
        seen: list[int | None] = [None] * n
        bound: list[float | None] = [None] * n
        if prefix.remote is not None:  # a served draft: the top-K list at the tenths digit
            for r, got in enumerate(prefix.remote):
                if tag in got.top:
                    value = getattr(parse_completion(got.text, self.cfg.mode), tag)
                    est = ipr_from_top_logprobs(got.top[tag], float("nan") if value is None else value)
                    out[r], seen[r], bound[r] = est.ipr, est.seen, est.bound
            return out, seen, bound
        captured = prefix.tenths.get(tag, {})
        if captured:
            rows = sorted(captured)
            logits = torch.stack([captured[r][0] for r in rows])  # [n_rows, V]
            # Eq. 9's sign comes from the rating's value (1.00 is high although its tenths digit is 0);
            # an unparsable rating (NaN) gets the low sign, and its IPR is never used.
            values = [getattr(parse_completion(prefix.texts[r], self.cfg.mode), tag) for r in rows]
            rating = torch.tensor([float("nan") if v is None else v for v in values], device=logits.device)
            stats = digit_stats_from_logits(logits, self.digit_ids, rating, backend=self.cfg.ipr_backend)
            for r, p in zip(rows, stats.ipr.tolist(), strict=True):
                out[r], seen[r], bound[r] = p, 10, 0.0  # the full softmax: all ten digits, exact
        return out, seen, bound

    def evaluate(self, prefix: gen.PrefixResult, ids: list[str] | None = None,
                 prefix_s: float = 0.0) -> list[RatingRow]:
        """Alg. 3-4 l.10-12 with Sec. 4.3: d' = d + p_d, t' = t + p_t, s by the rule; also s without IPR.

        `prefix_s` is the prefix batch's wall time; each row gets its per-query share.
        """
        n = len(prefix.texts)
        ids = ids or [str(i) for i in range(n)]
        (ipr_d, seen_d, bound_d), (ipr_t, seen_t, bound_t) = self._ipr(prefix, "confidence", n), \
            self._ipr(prefix, "target", n)
        jrl, tau = self.cfg.mode == "jrl", self.cfg.tau
        rows = []
        for i, text in enumerate(prefix.texts):
            remote = prefix.remote[i] if prefix.remote is not None else None
            if remote is not None and remote.error is not None:  # the served draft failed on this query
                rows.append(RatingRow(id=ids[i], d=None, t=None, ipr_d=None, ipr_t=None, score=None,
                                      score_no_ipr=None, prefix_latency_s=remote.latency_s, error=remote.error))
                continue
            seen = [s for s in (seen_d[i], seen_t[i] if jrl else None) if s is not None]
            bounds = [b for b in (bound_d[i], bound_t[i] if jrl else None) if b is not None]
            parsed = parse_completion(text, self.cfg.mode)
            d, t = parsed.confidence, (parsed.target if jrl else None)
            d2 = None if d is None else apply_ipr(d, ipr_d[i], mode=self.cfg.ipr)
            t2 = None if t is None else apply_ipr(t, ipr_t[i], mode=self.cfg.ipr)
            score, raw = self.rule.score(d2, t2, tau=tau), self.rule.score(d, t, tau=tau)
            rows.append(RatingRow(
                id=ids[i], d=d, t=parsed.target, ipr_d=ipr_d[i], ipr_t=ipr_t[i],
                score=None if score is None else float(score), score_no_ipr=None if raw is None else float(raw),
                prefix=text, prefix_stop=prefix.stop[i],
                prefix_tokens=remote.tokens if remote is not None else len(prefix.tokens[i]),
                # per query: a served draft's own requests; a local batch's wall time shared evenly
                prefix_latency_s=remote.latency_s if remote is not None else prefix_s / max(n, 1),
                ipr_digits_seen=min(seen) if seen else None, ipr_bound=max(bounds) if bounds else None))
        return rows

    def rate(self, queries: list[Query]) -> tuple[gen.PrefixResult, list[RatingRow]]:
        """Steps 1-2, the one rating pipeline: (prefix state for step 4, one RatingRow per query)."""
        start = time.perf_counter()
        prefix = self.pregenerate(queries)
        prefix_s = time.perf_counter() - start
        return prefix, self.evaluate(prefix, [q.id for q in queries], prefix_s)

    # ---------------------------------------------------------------- step 4 (draft side)
    def continue_draft(self, prefix: gen.PrefixResult, rows: list[int],
                       caps: list[int] | None = None) -> tuple[dict[int, list[int]], float]:
        """Alg. 3-4 l.12 for `rows`, batched, from the prefix cache.  Returns (new tokens per row, wall s).
        `caps`: each row's own token cap (a request's max_tokens), at most the config's."""
        if not rows:
            return {}, 0.0
        caps = [min(c, self.cfg.max_new_tokens) for c in caps] if caps else [self.cfg.max_new_tokens] * len(rows)
        start = time.perf_counter()
        if self.draft is not None:  # a served draft: the prefix as a partial assistant message, continued
            got = self.draft.continue_many([(prefix.queries[r], prefix.remote[r], cap)
                                            for r, cap in zip(rows, caps, strict=True)])
            return dict(zip(rows, got, strict=True)), time.perf_counter() - start
        sub = gen.select_rows(prefix.state, rows)
        done = [prefix.stop[r] == "eos" for r in rows]
        new = gen.continue_rows(self.model, self.tokenizer, sub, max_new_tokens=max(caps), done=done,
                                temperature=self.cfg.temperature)
        return {r: list(ids)[:cap] for r, ids, cap in zip(rows, new, caps, strict=True)}, time.perf_counter() - start

    # ---------------------------------------------------------------- all steps
    def check_policy(self, policy) -> None:
        """A policy that knows its rule must use the router's (the direction belongs to the rule)."""
        rule = getattr(policy, "rule", None)
        if rule is not None and getattr(rule, "name", rule) != self.rule.name:  # DRL's rule is draft-first
            raise ValueError(f"the decision policy ranks by the {rule!r} rule but the router scores with "
                             f"{self.rule.name!r}: thresholds and scores must come from the same rule")

    def route_batch(self, queries: list[Query], policy, *, target_all: bool = False,
                    draft_all: bool = False) -> list[dict]:
        """Route one batch; one RouteRow per query, in order, as JSON dicts (the routes JSONL lines).

        The served router's entry: a query the served draft failed on raises a `RequestError` 503 (the
        server's worker isolates the failing queries, whose memo in `Query.draft_error` fails them at once)."""
        rows = self.route_rows(queries, policy, target_all=target_all, draft_all=draft_all)
        failures = [r.error for r in rows if r.route is None and r.error]
        if failures:
            from prp.route.server.chat import RequestError  # the server answers its status, not a 500

            raise RequestError(503, f"the draft is unavailable ({failures[0]}); retry later")
        return [row.to_json() for row in rows]

    def route_rows(self, queries: list[Query], policy, *, target_all: bool = False,
                   draft_all: bool = False) -> list[RouteRow]:
        """Route one batch; one RouteRow per query, in order: `start`, the target for its routed
        queries (`answer_routed`), `finish`.

        `target_all` also measures the target-only baseline: a second, separate target call on the
        whole batch (its per-query latency, answer and correctness; calibration and
        `--measure-target-only`), so the routed queries' latency stays that of the routed-only call;
        `draft_all` also continues the draft for routed ones (draft correctness, for calibration).
        """
        pending = self.start(queries, policy, draft_all=draft_all)
        self.answer_routed([(pending, i) for i in pending.to_target])
        return self.finish(pending, target_all=target_all)

    def start(self, queries: list[Query], policy, *, draft_all: bool = False) -> PendingBatch:
        """Steps 1-3 and the draft side of step 4 for one batch.  A remote target is asked for the
        routed queries right away (it works while the draft continues); a local one waits for
        `answer_routed`, which may gather the routed queries of several batches into one call."""
        self.check_policy(policy)
        prefix, ratings = self.rate(queries)  # steps 1-2
        # a query the served draft could not rate is neither kept nor routed (an error row; the server: 503),
        # and the policy ranks the others only
        failed = {i for i, r in enumerate(ratings) if r.error is not None}
        rated = [i for i in range(len(queries)) if i not in failed]
        keep = [False] * len(queries)
        for i, kept in zip(rated, policy.keep([ratings[i].score for i in rated]) if rated else [], strict=True):
            keep[i] = kept  # step 3
        pending = PendingBatch(queries=queries, prefix=prefix, ratings=ratings, keep=keep, failed=failed,
                               draft_all=draft_all, caps=[q.max_new_tokens or self.cfg.max_new_tokens for q in queries])
        if self.target.remote and pending.to_target:  # step 4: the remote target works while the draft continues
            pending.pool = ThreadPoolExecutor(max_workers=1)
            pending.future = pending.pool.submit(self.target.answer, [queries[i] for i in pending.to_target])
        to_draft = [i for i in rated if draft_all or keep[i]]
        pending.draft_new, draft_s = self.continue_draft(prefix, to_draft, [pending.caps[i] for i in to_draft])
        pending.draft_each = draft_s / len(to_draft) if to_draft else 0.0  # per-query share (docs/routing.md)
        return pending

    def draft_output(self, pending_prefix: gen.PrefixResult, i: int, new) -> tuple:
        """The draft's whole answer to row i: (text with its prefix, the part after the prefix, its tokens,
        an error).  `new`: the row's continuation (local token ids, or a served draft's DraftContinuation)."""
        if pending_prefix.remote is None:
            ids = pending_prefix.tokens[i] + new
            return (self.tokenizer.decode(ids, skip_special_tokens=True) if ids else None,
                    self.tokenizer.decode(new, skip_special_tokens=True), len(ids), None)
        head = pending_prefix.remote[i]
        if new.text is None:
            return None, None, 0, new.error
        return head.text + new.text, new.text, head.tokens + new.tokens, None

    def answer_routed(self, items: list[tuple[PendingBatch, int]]) -> None:
        """Step 4, target side (a local target): one batched call for routed queries of one or more
        started batches.  A query the target fails on, alone (prp.route.isolate), gets a failed
        answer, so its draft answers from the cache at `finish` (a fallback), as for a remote target."""
        items = [(p, i) for p, i in items if p.future is None]  # a remote target was asked at start
        if not items:
            return
        answers = run_isolated(self.target.answer, [p.queries[i] for p, i in items])
        for (p, i), a in zip(items, answers, strict=True):
            p.answers[i] = a if not isinstance(a, Exception) else TargetAnswer(
                text=None, model=self.target.name, completion_tokens=None, latency_s=0.0,
                error=f"target_failed: {type(a).__name__}: {a}")

    def finish(self, pending: PendingBatch, *, target_all: bool = False) -> list[RouteRow]:
        """The rows of a started batch whose routed queries are answered: fallbacks for a failed
        target (the draft continues from its cache), per-query latencies, the target-only baseline."""
        p, n = pending, len(pending.queries)
        if p.future is not None:
            p.answers = dict(zip(p.to_target, p.future.result(), strict=True))
            p.pool.shutdown()
        if not p.answered:
            missing = [i for i in p.to_target if i not in p.answers]
            raise RuntimeError(f"finish() before the target answered rows {missing}: call answer_routed first")
        # the baseline, measured apart (a query the target fails on alone gets no baseline latency)
        asked = [i for i in range(n) if i not in p.failed]  # a query the draft could not rate is not asked
        target_only = dict(zip(asked, run_isolated(self.target.answer, [p.queries[i] for i in asked]),
                               strict=True)) if target_all else None
        # failures lose nothing: the draft answers from its cache
        failed = [i for i in p.to_target if p.answers[i].text is None and i not in p.draft_new]
        fb_new, fb_s = self.continue_draft(p.prefix, failed, [p.caps[i] for i in failed])
        draft_new = {**p.draft_new, **fb_new}
        fb_each = fb_s / len(failed) if failed else 0.0

        rows = []
        for i in range(n):
            r, tgt, kept = p.ratings[i], p.answers.get(i), p.keep[i]
            if i in p.failed:  # the served draft could not rate it: an error row, neither kept nor routed
                rows.append(RouteRow.from_rating(r, mode=self.cfg.mode, rule=self.rule.name,
                                                 latency_s=r.prefix_latency_s))
                continue
            fallback = not kept and tgt.text is None
            draft_text, after, draft_tokens, draft_error = (
                self.draft_output(p.prefix, i, draft_new[i]) if i in draft_new else (None, None, 0, None))
            # the answer comes from after the rating: a last-number rule must not read "0.87"
            draft_answer = self.extract(after) if after is not None else None
            by_draft = kept or fallback
            if draft_error is not None and (by_draft or p.draft_all):  # a served draft failed after its rating
                error = f"{tgt.error}; then {draft_error}" if fallback else draft_error
                rows.append(RouteRow.from_rating(r, mode=self.cfg.mode, rule=self.rule.name, error=error,
                                                 fallback=fallback, latency_s=r.prefix_latency_s))
                continue
            if i in fb_new:
                d_lat = fb_new[i].latency_s if self.draft is not None else fb_each
            else:
                d_lat = draft_new[i].latency_s if self.draft is not None and i in draft_new else p.draft_each
            d_lat = d_lat if by_draft else None
            t_lat = tgt.latency_s if (tgt is not None and not kept) else None
            text = draft_text if by_draft else tgt.text
            row = RouteRow.from_rating(
                r, mode=self.cfg.mode, rule=self.rule.name,
                route="draft" if kept else "target",
                answered_by="draft" if by_draft else tgt.model,
                answer=draft_answer if by_draft else self.extract(text), text=text, fallback=fallback,
                error=tgt.error if fallback else None,
                continue_latency_s=d_lat, target_latency_s=t_lat,
                target_attempts=tgt.attempts if (tgt is not None and not kept) else None,
                latency_s=r.prefix_latency_s + (d_lat or 0.0) + (t_lat or 0.0),
                completion_tokens=draft_tokens if by_draft else tgt.completion_tokens,
            )
            if target_only is not None:
                base = target_only[i]
                ok = not isinstance(base, Exception) and base.text is not None
                row.target_only_latency_s = base.latency_s if ok else None
                row.target_text = base.text if ok else None
                row.target_answer = self.extract(base.text) if ok else None
            if p.draft_all and draft_text is not None:
                row.draft_text = draft_text
                row.draft_answer = draft_answer
            rows.append(row)
        return rows
