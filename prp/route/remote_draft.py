"""A served draft behind an OpenAI-compatible endpoint (vLLM, SGLang, `prp.serve`): steps 1 and 4 of
Alg. 3-4 over the chat API, so the draft and the target can both be served (docs/deploy.md).

The router's one rating pipeline (`Router.rate`) is unchanged: this backend only replaces the local
decode loop.  Three kinds of request, every one `temperature` (0: greedy, as the local router) and
`logprobs: true, top_logprobs: K` (K <= 20, OpenAI's limit) where digits are read:

    pre-generate   the user turn (the same P_draft / P_joint prompt and image), `max_tokens` = the
                   prefix budget, `stop` at `</confidence>` with `include_stop_str_in_output`; the
                   tenths digits' top-K lists are read off `logprobs.content[*].top_logprobs`
    forced rating  (`--rating forced`) the scaffold is a partial assistant message
                   (`<target>0.`, then `...</target><confidence>0.`) continued for its two digits
                   (`continue_final_message: true, add_generation_prompt: false`); each digit is the
                   argmax over the digits among the top K, as the local grammar takes the argmax over
                   the ten digit logits, so one request per rating suffices when the server's own
                   greedy choice is that digit, and a second asks again from the forced digit when not;
                   one more picks the closing token (the most likely one starting with `>`)
    continue       the same messages plus the partial assistant message holding the prefix,
                   continued (`max_tokens` = the query's answer budget): the server's prefix cache
                   plays the local KV cache's part (vLLM: `--enable-prefix-caching`)

IPR (Eq. 9) comes from the top-K list at each tenths digit (`prp.route.ipr.ipr_from_top_logprobs`:
exact when all ten digits are listed, else an estimate with its error bound; the row records how many
digits were seen).

Every request goes through `prp.route.remote.OpenAIClient` (the remote target's client): one total
deadline per attempt, retries with backoff, capped responses, the key from an env variable, errors
that never name the URL.  At most `concurrency` requests are in flight (one shared pool).  A query
whose draft request fails after its retries gets an error (`DraftPrefix.error`): an error row in a
batch file, a 503 from the served router; it is never routed on a made-up rating.

The prefix text is kept through its last whole token (a BPE token may run past `</confidence>`, e.g.
`><` before `think>`; the server cuts its text at the stop string), so that the server, which
re-tokenises the partial message to continue it, sees the tokens the draft wrote.  What still differs
from the local draft by construction of the chat API: that re-tokenisation is the canonical one (the
local router continues from the very tokens it generated), and the server decodes on its own (batch
shapes, kernels): the ratings, d, t and IPR agree to 1e-6 on the demo (tests/test_remote_draft.py),
and an answer can differ where two tokens are nearly tied.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prp.core.prompts import RATING_CLOSE_TAG, prompt_for
from prp.route.remote import OpenAIClient, RemoteError, chat_messages

log = logging.getLogger(__name__)

# OpenAI's API allows top_logprobs <= 20 (vLLM: --max-logprobs, default 20); IPR needs the ten digits
TOP_K = 20
MIN_TOP_K = 10


class DraftCapabilityError(ValueError):
    """The served draft lacks a feature the router needs (one line naming it)."""


@dataclass
class DraftPrefix:
    """One query's rating prefix from the served draft (steps 1-2's raw material)."""

    text: str = ""
    stop: str = ""  # "closed" | "eos" | "cap" (as the local decode loop), "" on an error
    tokens: int = 0  # tokens the draft generated for it (forced: its digits; the scaffold is sent as text)
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # tag -> top-K at its tenths digit
    latency_s: float = 0.0  # this query's requests, retries included
    requests: int = 0
    error: str | None = None


@dataclass
class DraftContinuation:
    """The served draft's answer after its prefix (step 4, a kept query or a target's fallback)."""

    text: str | None  # None when the draft failed
    tokens: int = 0
    logprobs: list[float] = field(default_factory=list)  # per generated token (P1's s_1, Sec. 2.1)
    latency_s: float = 0.0
    error: str | None = None


def _is_digit(token: str) -> bool:
    return len(token) == 1 and token.isascii() and token.isdigit()


def _top_list(entry: dict) -> list[tuple[str, float]]:
    return [(str(x["token"]), float(x["logprob"])) for x in entry.get("top_logprobs") or []]


def _best_digit(top: list[tuple[str, float]]) -> str | None:
    """The most likely digit of a top-K list (the forced grammar's argmax over the ten digits: a digit
    missing from the list is less likely than every listed one)."""
    digits = [(lp, tok) for tok, lp in top if _is_digit(tok)]
    return max(digits, key=lambda d: d[0])[1] if digits else None


def _choice(data: dict) -> tuple[str, list[dict], str | None, str | None]:
    """(content, logprobs.content entries, finish_reason, stop_reason) of the first choice."""
    choice = data["choices"][0]
    content = choice["message"]["content"] or ""
    if not isinstance(content, str):
        raise TypeError("content is not a string")
    entries = (choice.get("logprobs") or {}).get("content") or []
    if not isinstance(entries, list) or not all(_is_logprob_entry(e) for e in entries):
        raise TypeError("logprobs.content is not a list of {token, logprob, top_logprobs} entries")
    return content, entries, choice.get("finish_reason"), choice.get("stop_reason")


def _is_token_logprob(x) -> bool:
    return (isinstance(x, dict) and isinstance(x.get("token"), str)
            and type(x.get("logprob")) in (int, float))  # strict JSON: finite, no bool


def _is_logprob_entry(x) -> bool:
    """One `logprobs.content` entry as the OpenAI API defines it (the server's values are checked here,
    where the client turns a TypeError into the draft's RemoteError, not where they are read)."""
    top = x.get("top_logprobs", []) if isinstance(x, dict) else None
    return _is_token_logprob(x) and isinstance(top, list) and all(_is_token_logprob(t) for t in top)


class RemoteDraft:
    """The draft served behind an OpenAI-compatible endpoint (see the module docstring)."""

    remote = True

    def __init__(self, client: OpenAIClient, *, mode: str, rating: str = "free", max_prefix_tokens: int = 24,
                 temperature: float = 0.0, top_k: int = TOP_K, concurrency: int = 8, tokenizer=None):
        if not MIN_TOP_K <= top_k <= TOP_K:
            raise ValueError(f"top_logprobs must be in [{MIN_TOP_K}, {TOP_K}], got {top_k}")
        self.client, self.mode, self.rating = client, mode, rating
        self.max_prefix_tokens, self.temperature, self.top_k = max_prefix_tokens, temperature, top_k
        self.tokenizer = tokenizer  # optional (--draft-processor): counts tokens exactly in the capability check
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="draft")
        self.name = client.model

    # ------------------------------------------------------------------ requests
    def messages(self, question: str, image) -> list[dict]:
        """The user turn of `build_messages` in OpenAI's format: the image first, then P_draft/P_joint + Q."""
        return chat_messages(f"{prompt_for(self.mode)}\n{question}", image)

    def _payload(self, messages: list[dict], *, max_tokens: int, partial: str | None = None,
                 top_k: int | None = None, **extra) -> dict:
        payload = {"model": self.client.model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": self.temperature, "logprobs": True, **extra}
        if top_k:
            payload["top_logprobs"] = top_k
        if partial is not None:  # continue the assistant's partial message, do not open a new turn
            payload["messages"] = [*messages, {"role": "assistant", "content": partial}]
            payload.update(continue_final_message=True, add_generation_prompt=False)
        return payload

    def _post(self, payload: dict) -> tuple[tuple, float]:
        """((content, logprobs entries, finish_reason, stop_reason), seconds)."""
        return self._post_usage(payload)[:2]

    def _post_usage(self, payload: dict) -> tuple[tuple, float, int | None]:
        (choice, usage), _attempts, latency = self.client.post(payload, parse=lambda d: (_choice(d), d.get("usage")))
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return choice, latency, prompt_tokens if isinstance(prompt_tokens, int) else None

    # ------------------------------------------------------------------ step 1: the rating prefix
    def prefix(self, queries) -> list[DraftPrefix]:
        """Every query's prefix, at most `concurrency` requests in flight; failures are per query."""
        return list(self.pool.map(self.prefix_one, queries))

    def prefix_one(self, query) -> DraftPrefix:
        if query.draft_error is not None:  # failed before (the server re-routes a failed batch in halves)
            return DraftPrefix(error=query.draft_error)
        out = DraftPrefix()
        try:
            (self._forced if self.rating == "forced" else self._free)(query, out)
        except RemoteError as exc:
            out.error = query.draft_error = f"draft_failed: {exc}"
        return out

    def _free(self, query, out: DraftPrefix) -> None:
        """Alg. 3-4 l.1-9 in one request: generate until `</confidence>`, top-K at every position."""
        from prp.route.decode import _BEFORE_TENTHS

        payload = self._payload(self.messages(query.question, query.image), max_tokens=self.max_prefix_tokens,
                                top_k=self.top_k, stop=[RATING_CLOSE_TAG], include_stop_str_in_output=True)
        (content, entries, finish, stop_reason), out.latency_s = self._post(payload)
        out.requests = 1
        if not entries:
            raise RemoteError("draft: the answer has no logprobs (logprobs.content)")
        seen = ""
        for entry in entries:  # the tenths digit: a digit right after "<confidence>0." (decode.generate_prefix)
            token = str(entry["token"])
            match = _BEFORE_TENTHS.search(seen) if _is_digit(token) else None
            if match and match.group(1) not in out.top:
                out.top[match.group(1)] = _top_list(entry)
            seen += token
        if RATING_CLOSE_TAG in seen and seen.startswith(content):
            # through the whole last token, as the local loop keeps it: a BPE token may run past the tag
            # ("><" before "think>"), and the server cuts its text at the stop string; continuing from the
            # cut text would re-tokenise it into tokens the draft never wrote
            out.text, out.stop = seen, "closed"
        elif RATING_CLOSE_TAG in content:
            out.text, out.stop = content[: content.index(RATING_CLOSE_TAG) + len(RATING_CLOSE_TAG)], "closed"
        elif finish == "stop" and stop_reason == RATING_CLOSE_TAG:  # a server that drops the stop string
            out.text, out.stop = content + RATING_CLOSE_TAG, "closed"
        else:
            out.text, out.stop = content, "cap" if finish == "length" else "eos"
        out.tokens = len(entries)

    def _forced(self, query, out: DraftPrefix) -> None:
        """The forced grammar (`--rating forced`): the scaffold as a partial assistant message, two digits
        per rating, each the argmax over the digits of its top-K list (decode.forced_prefix's choice)."""
        messages = self.messages(query.question, query.image)
        text = ""
        for tag in ("target", "confidence") if self.mode == "jrl" else ("confidence",):
            text += f"<{tag}>0."
            digits = ""
            while len(digits) < 2:
                payload = self._payload(messages, max_tokens=2 - len(digits), partial=text + digits, top_k=self.top_k)
                (_content, entries, _f, _s), latency = self._post(payload)
                out.latency_s += latency
                out.requests += 1
                if not entries:
                    raise RemoteError("draft: the answer has no logprobs (logprobs.content)")
                for entry in entries:
                    top = _top_list(entry)
                    digit = _best_digit(top)
                    if digit is None:  # cannot happen with the ten digits' mass in the top K
                        raise RemoteError(f"draft: no digit among the top {self.top_k} tokens of the forced rating")
                    if not digits:
                        out.top[tag] = top  # the tenths digit's list: IPR's input (Eq. 9)
                    digits += digit
                    out.tokens += 1
                    if str(entry["token"]) != digit or len(digits) == 2:
                        break  # the server's own choice was not the forced digit: ask again from it
            text += f"{digits}</{tag}>"
        # the closing token, as the local grammar picks it: the most likely token starting with ">" (a BPE
        # token may run past the tag, "><" before "think>"; continuing from it keeps the draft's own tokens)
        text = text[:-1]
        payload = self._payload(messages, max_tokens=1, partial=text, top_k=self.top_k)
        (_content, entries, _f, _s), latency = self._post(payload)
        out.latency_s += latency
        out.requests += 1
        closers = [(lp, tok) for tok, lp in (_top_list(entries[0]) if entries else []) if tok.startswith(">")]
        out.text, out.stop = text + (max(closers)[1] if closers else ">"), "closed"
        out.tokens += 1

    # ------------------------------------------------------------------ step 4: continue after the prefix
    def continue_many(self, items: list[tuple]) -> list[DraftContinuation]:
        """(query, prefix, cap) per row -> its continuation, at most `concurrency` in flight."""
        return list(self.pool.map(lambda item: self.continue_one(*item), items))

    def continue_one(self, query, prefix: DraftPrefix, cap: int) -> DraftContinuation:
        """Alg. 3-4 l.12: the prefix as a partial assistant message, continued to the answer."""
        if prefix.stop == "eos":  # the draft ended with its prefix: nothing follows (as the local loop)
            return DraftContinuation(text="")
        payload = self._payload(self.messages(query.question, query.image), max_tokens=cap, partial=prefix.text)
        try:
            (content, entries, _f, _s), latency = self._post(payload)
        except RemoteError as exc:
            query.draft_error = f"draft_failed: {exc}"  # a re-route of this query fails at once
            return DraftContinuation(text=None, error=query.draft_error)
        logprobs = [float(e["logprob"]) for e in entries if isinstance(e, dict) and "logprob" in e]
        return DraftContinuation(text=content, tokens=len(entries), logprobs=logprobs, latency_s=latency)

    # ------------------------------------------------------------------ start-up capability check
    def check(self) -> None:
        """Refuse at start a server that lacks what the router needs, with one line naming it
        (DraftCapabilityError), instead of failing every query: logprobs with >= 10 top_logprobs,
        and continuing a partial assistant message.

        Continuation is checked from the prompt sizes the server reports: continuing a partial
        message P must cost exactly the tokens of P over the plain prompt (a server that ignores
        `continue_final_message` closes the message and opens a new turn: more tokens).  With a local
        tokenizer (`--draft-processor`) P is the rating scaffold `<confidence>0.`, so a chat template
        that renders it differently (e.g. a list-of-parts branch adding text) is caught too."""
        user = chat_messages(f"{prompt_for(self.mode)}\nWhat is 1+1?", None)
        try:
            (_c, entries, _f, _s), _, plain = self._post_usage(self._payload(user, max_tokens=1, top_k=self.top_k))
        except RemoteError as exc:
            raise DraftCapabilityError(
                f"the draft server refused a request with logprobs and top_logprobs={self.top_k} ({exc}); "
                f"serve it with log-probabilities on (vLLM: --max-logprobs {TOP_K})") from None
        if not entries:
            raise DraftCapabilityError("the draft server returns no logprobs (logprobs.content is empty); "
                                       "IPR needs the digits' log-probabilities")
        n_top = len(entries[0].get("top_logprobs") or [])
        if n_top < MIN_TOP_K:
            raise DraftCapabilityError(
                f"the draft server returns {n_top} top_logprobs for top_logprobs={self.top_k}: IPR needs the ten "
                f"digits (vLLM: --max-logprobs {TOP_K})")
        partial = "<confidence>0." if self.tokenizer is not None else "5"
        expected = (len(self.tokenizer(partial, add_special_tokens=False)["input_ids"])
                    if self.tokenizer is not None else 1)
        try:
            _, _, cont = self._post_usage(self._payload(user, max_tokens=1, partial=partial, top_k=self.top_k))
        except RemoteError as exc:
            raise DraftCapabilityError(
                f"the draft server refused to continue a partial assistant message ({exc}): it needs "
                "continue_final_message: true, add_generation_prompt: false (vLLM supports both)") from None
        if plain is None or cont is None:
            log.warning("the draft server reports no usage.prompt_tokens: continuation not verified")
        elif cont - plain != expected:
            raise DraftCapabilityError(
                f"the draft server does not continue a partial assistant message as written: {partial!r} added "
                f"{cont - plain} prompt tokens, not {expected} (continue_final_message ignored, or a chat template "
                "that renders it differently; see docs/deploy.md)")


def load_remote_draft(args, cfg):
    """`--draft URL`: a served draft (prp.route.remote_draft) and its optional local processor, checked
    at start (a missing feature is one user-error line, not a 400 on every query)."""
    from prp.core.cli import UserError
    from prp.route.remote import RetryPolicy

    processor = None
    if args.draft_processor:
        from prp.core.modeling import load_processor

        processor = load_processor(args.draft_processor)
    retry = RetryPolicy(tries=args.draft_tries, timeout_s=args.draft_timeout, backoff_s=args.draft_backoff)
    client = OpenAIClient(args.draft, args.draft_model_name, api_key_env=args.draft_api_key_env, retry=retry,
                          max_tokens=cfg.max_new_tokens, role="draft")
    draft = RemoteDraft(client, mode=cfg.mode, rating=cfg.rating, max_prefix_tokens=cfg.max_prefix_tokens,
                        temperature=cfg.temperature, top_k=args.draft_top_logprobs, concurrency=args.concurrency,
                        tokenizer=processor.tokenizer if processor is not None else None)
    if args.draft_check:
        try:
            draft.check()
        except DraftCapabilityError as exc:
            raise UserError(f"--draft {args.draft}: {exc}") from None
    return draft, processor
