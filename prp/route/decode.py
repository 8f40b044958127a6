"""Hand-written batched decoding with a KV cache: the rating prefix, and its continuation.

Routing needs three things `model.generate` does not give together (Sec. 4.2, Alg. 3-4):
1. stop each row right after its own closing `</confidence>` (l.3-9),
2. keep the full-vocabulary logits at the rating's tenths digit for IPR (Sec. 4.3),
3. let a kept row continue from the SAME cache later (l.12), with no second prefill.

So the loop is written out: one prefill, then one-token steps (under the forced rating grammar,
`forced_prefix` feeds the fixed scaffold in runs of several tokens per forward, `feed`; the static
engine's traced step takes one token, so there the runs are fed token by token).  The state lives in
`DecodeState`:

- Left padding (the processor's) and *holes*: once a row has finished its prefix, later steps
  feed it a pad token with attention 0 and do not advance its position, so the row's cache has
  masked holes but its positions stay those of an uninterrupted generation.
- The last chosen token of a row is `pending` (chosen, not yet fed).  Continuing a row feeds its
  pending token first: exactly the step an uninterrupted generation would take next.
- Positions are passed explicitly.  Qwen2.5-VL's M-RoPE gives text tokens after an image a
  per-row offset (`rope_deltas`); the model keeps it as mutable state on `model.model`, which a
  router that interleaves batches cannot trust, so positions come from `get_rope_index` at
  prefill and then advance per row by one per fed token (the same values HF's generate uses).

How a step runs is the engine's business (`prp.route.engine`, docs/engine.md): the eager path
below (a DynamicCache that grows by one column per step), or a static, bucketed cache with a
compiled one-token step (default on CUDA; `engine.set_engine(model, "eager"|"compiled")`).
Both produce the same tokens; the functions here do not change with the choice.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from prp.core.compat import cache_kwargs
from prp.core.prompts import RATING_CLOSE_TAG
from prp.route.engine import Engine, StaticSlots, batch_bucket, engine_for

# Text before a rating's tenths digit: "<confidence>0." or "<target> ." (Eq. 9's position).
_BEFORE_TENTHS = re.compile(r"<(confidence|target)>\s*\d*\.$")


@dataclass
class DecodeState:
    """Everything needed to take the next decoding step for a batch of B rows."""

    cache: object  # transformers Cache (eager) or StaticKV: per layer [B, kv_heads, T, head_dim]
    attention_mask: torch.Tensor  # [B, T] 1 real token; 0 left pad or a finished row's hole (eager path)
    next_pos: torch.Tensor  # [B] position of the next fed token (all three M-RoPE axes for text)
    pending: torch.Tensor  # [B] last chosen token, not yet fed
    rope3d: bool  # model wants [3, B, L] M-RoPE position ids
    engine: Engine | None = None  # None: the eager loop
    static: StaticSlots | None = None  # the static cache lease and its [Bb, Lb] mask
    # select_rows on a static state defers the copy until the needed length is known: (source, rows)
    selected_from: tuple[StaticSlots, list[int]] | None = None


@dataclass
class PrefixResult:
    """The rating prefix of each row (Alg. 3-4 l.1-9) and what IPR needs from it."""

    tokens: list[list[int]]  # B lists of generated prefix token ids (incl. the last, pending one)
    texts: list[str]  # decoded prefix text per row
    stop: list[str]  # per row: "closed" (tag seen), "eos", or "cap" (max_prefix_tokens reached)
    # tag ("confidence" / "target") -> {row: (logits [V] at the tenths digit, tenths digit 0-9)}
    tenths: dict[str, dict[int, tuple[torch.Tensor, int]]] = field(default_factory=dict)
    state: DecodeState | None = None  # the local loop's cache (None for a served draft)
    remote: list | None = None  # a served draft (prp.route.remote_draft): its DraftPrefix per row, and
    queries: list | None = None  # the queries it continues


def eos_ids_of(model, tokenizer) -> set[int]:
    """The ids that end a generation: the generation config's plus the tokenizer's eos."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else ([] if ids is None else [ids]))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _pad_id(model, tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (model.generation_config.pad_token_id or 0)


def _wants_rope3d(model) -> bool:
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "get_rope_index")


@torch.no_grad()
def prefill(model, inputs, *, reserve: int = 0) -> tuple[DecodeState, torch.Tensor]:
    """The one and only prompt forward.  Returns (state without `pending`, last logits [B, V]).

    With a static engine the filled cache moves into a bucket with room for `reserve` more
    tokens (it grows later if a continuation needs more)."""
    from transformers import DynamicCache

    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]  # [B, L]
    rope3d = _wants_rope3d(model)
    if rope3d and inputs.get("image_grid_thw") is not None:
        # [3, B, L] with pads at 0; the next text position is each row's max + 1.
        positions, _ = model.model.get_rope_index(
            input_ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
            attention_mask=attention_mask,
        )
        next_pos = positions.amax(dim=(0, 2)) + 1  # [B]
    else:
        text_pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
        positions = text_pos.unsqueeze(0).expand(3, -1, -1) if rope3d else text_pos
        next_pos = attention_mask.long().sum(-1)  # [B]
    cache = DynamicCache(config=model.config)
    kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
        logits_to_keep=1, **cache_kwargs(model, cache), **kwargs,
    )  # the cache is filled in place (the output's name for it differs across transformers releases)
    state = DecodeState(
        cache=cache, attention_mask=attention_mask, next_pos=next_pos,
        pending=torch.zeros_like(next_pos), rope3d=rope3d,
    )
    engine = engine_for(model)
    if engine is not None:
        state.engine = engine
        state.static = engine.adopt(cache, attention_mask, reserve)
        state.cache = state.static.kv
    return state, out.logits[:, -1, :].float()  # [B, V]


def _ensure_room(state: DecodeState, extra: int) -> None:
    """Static states: materialise a deferred row selection and make room for `extra` more steps."""
    if state.engine is None:
        return
    if state.selected_from is not None:
        source, rows = state.selected_from
        state.selected_from = None
        state.static = state.engine.migrate(source, rows, extra)
    elif state.static.used + extra > state.static.kv.length:
        state.static = state.engine.migrate(state.static, list(range(state.static.rows)), extra)
    state.cache = state.static.kv


@torch.no_grad()
def step(model, state: DecodeState, tokens: torch.Tensor, active: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Feed one token per row ([B]); inactive rows feed a masked pad (a hole).  Returns logits [B, V]."""
    active = active.to(tokens.device)  # callers keep their bookkeeping on the CPU
    if state.engine is not None:
        _ensure_room(state, 1)
        logits = state.engine.step(state.static, tokens, active, state.next_pos, pad_id, state.rope3d)
        state.next_pos = state.next_pos + active.long()
        return logits
    ids = torch.where(active, tokens, torch.full_like(tokens, pad_id)).unsqueeze(1)  # [B, 1]
    state.attention_mask = torch.cat([state.attention_mask, active.long().unsqueeze(1)], dim=1)  # [B, T+1]
    pos = state.next_pos.view(-1, 1)  # [B, 1]
    position_ids = pos.unsqueeze(0).expand(3, -1, -1) if state.rope3d else pos
    out = model(input_ids=ids, attention_mask=state.attention_mask, position_ids=position_ids, use_cache=True,
                **cache_kwargs(model, state.cache))  # appends one column to the cache in place
    state.next_pos = state.next_pos + active.long()  # a hole does not take a position
    return out.logits[:, -1, :].float()


def choose(logits: torch.Tensor, *, temperature: float = 0.0, generator: torch.Generator | None = None,
           suppress: Sequence[int] = (), top_p: float = 1.0) -> torch.Tensor:
    """Greedy (temperature 0) or sampled next tokens: [B, V] -> [B]; `suppress`ed ids are never chosen.

    `top_p` < 1: nucleus sampling, HF's rule: a token stays if the probability mass of the tokens
    ranked above it is below top_p (so the top token always stays)."""
    if suppress:
        logits = logits.index_fill(-1, torch.tensor(list(suppress), device=logits.device), float("-inf"))
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        above = sorted_probs.cumsum(-1) - sorted_probs  # mass ranked strictly above each token
        sorted_probs = sorted_probs.masked_fill(above >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@dataclass(frozen=True)
class RatingTemplate:
    """The forced rating grammar (`--rating forced`) as token slots.

    drl: <confidence>0.DD</confidence;  jrl: <target>0.DD</target><confidence>0.DD</confidence, then one
    closing token.  The scaffold is tokenised as one string, so its tokens are those a trained draft
    wrote (byte-level BPE merges across tags: '</target><confidence>' holds the token '><').  The
    closing '>' is not a fixed token for the same reason: the draft picks it among the tokens that
    start with '>' ('>' alone, '><' before a '<think>' tag, ...), so the tag closes either way.
    """

    slots: list[int | None]  # fixed token ids; None = a free digit (argmax over the ten digits)
    close_ids: list[int]  # the last slot's choices: every token whose text starts with ">"

    def __len__(self) -> int:
        return len(self.slots) + 1


def rating_template(tokenizer, mode: str) -> RatingTemplate:
    """The forced grammar for `mode` (drl / jrl).  Digits are single tokens (Qwen's pre-tokenizer
    isolates them), which the offsets check: each free digit must be a token of its own."""
    text = ("<target>0.00</target>" if mode == "jrl" else "") + "<confidence>0.00" + RATING_CLOSE_TAG[:-1]
    free = {m.start() + k for m in re.finditer(r"0\.(\d\d)", text) for k in (2, 3)}  # the DD characters
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    slots: list[int | None] = []
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if any(a <= c < b for c in free):
            if (a, b) not in {(c, c + 1) for c in free}:
                raise ValueError(f"the tokenizer merges a rating digit with its neighbours ({text[a:b]!r}): "
                                 "the forced grammar needs single-digit tokens")
            slots.append(None)
        else:
            slots.append(tid)
    vocab = tokenizer.get_vocab()
    # byte-level BPE spells ASCII as itself: filter the raw tokens, then check their text
    close_ids = sorted(i for tok, i in vocab.items()
                       if tok.startswith(">") and tokenizer.convert_tokens_to_string([tok]).startswith(">"))
    if not close_ids:
        raise ValueError("no token starts with '>': cannot close the forced rating")
    return RatingTemplate(slots=slots, close_ids=close_ids)


def closed_rating(row: int, token_ids: list[int], text: str) -> bool:
    """Alg. 3-4 l.6, EndsWithStopSeq: the prefix holds the closing tag (a BPE token may run past it)."""
    return RATING_CLOSE_TAG in text


@torch.no_grad()
def generate_prefix(
    model,
    tokenizer,
    inputs,
    *,
    digit_ids: Sequence[int],
    max_prefix_tokens: int = 24,
    forced: RatingTemplate | None = None,
    stop_fn: Callable[[int, list[int], str], bool] = closed_rating,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> PrefixResult:
    """Pre-generating (Alg. 3-4 l.1-9), batched: each row stops on its own.

    A row stops when `stop_fn` says so (default: its text holds `</confidence>`), on EOS, or at
    `max_prefix_tokens` (an untrained draft never closes the tag: the router then sees d=None).
    `forced` (from `rating_template`) forces the scaffold tokens and lets the model pick only the
    digits (argmax over the ten digit logits) and the closing token: `forced_prefix`.
    Logits at every rating's tenths digit are kept for IPR (Eq. 9).
    """
    if forced is not None:
        return forced_prefix(model, tokenizer, inputs, digit_ids=digit_ids, template=forced, stop_fn=stop_fn,
                             temperature=temperature, generator=generator)
    eos = eos_ids_of(model, tokenizer)
    pad_id = _pad_id(model, tokenizer)
    digit_of = {tid: i for i, tid in enumerate(digit_ids)}
    cap = max_prefix_tokens

    state, logits = prefill(model, inputs, reserve=cap)  # step 1: one prompt forward
    bsz = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(bsz)]
    texts = [""] * bsz
    stop = [""] * bsz
    tenths: dict[str, dict[int, tuple[torch.Tensor, int]]] = {"confidence": {}, "target": {}}
    active = torch.ones(bsz, dtype=torch.bool)
    pending = [0] * bsz
    for _ in range(cap):
        chosen = choose(logits, temperature=temperature, generator=generator).tolist()  # step 2
        for b in active.nonzero().flatten().tolist():
            tok = chosen[b]
            # step 3: a tenths digit? keep the logits that produced it (IPR's input)
            match = _BEFORE_TENTHS.search(texts[b]) if tok in digit_of else None
            if match and b not in tenths[match.group(1)]:
                tenths[match.group(1)][b] = (logits[b].clone(), digit_of[tok])
            tokens[b].append(tok)
            texts[b] = tokenizer.decode(tokens[b], skip_special_tokens=True)
            pending[b] = tok
            if tok in eos:
                stop[b] = "eos"
            elif stop_fn(b, tokens[b], texts[b]):
                stop[b] = "closed"
            elif len(tokens[b]) >= cap:
                stop[b] = "cap"
        state.pending = torch.tensor(pending, dtype=torch.long, device=state.next_pos.device)  # one copy per step
        active = torch.tensor([not s for s in stop])
        if not active.any():
            break
        # step 4: feed the rows still rating; finished rows keep their token pending (a hole here)
        logits = step(model, state, state.pending, active, pad_id)
    return PrefixResult(tokens=tokens, texts=texts, stop=stop, tenths=tenths, state=state)


@torch.no_grad()
def forced_prefix(model, tokenizer, inputs, *, digit_ids: Sequence[int], template: RatingTemplate,
                  stop_fn: Callable[[int, list[int], str], bool] = closed_rating, temperature: float = 0.0,
                  generator: torch.Generator | None = None) -> PrefixResult:
    """The rating prefix under the forced grammar, with jump-forward: every row follows the same
    scaffold, so a run of fixed tokens is fed in one forward (`feed`) and the model is asked only
    where it chooses (the digits, the closing token).  jrl: prefill + 5 forwards instead of 18 steps;
    the tokens and logits are those of token-by-token decoding (tests/test_engine.py)."""
    pad_id = _pad_id(model, tokenizer)
    state, logits = prefill(model, inputs, reserve=len(template))  # step 1
    bsz = logits.shape[0]
    dev = logits.device
    digit_t = torch.as_tensor(list(digit_ids), device=dev)
    close_t = torch.as_tensor(template.close_ids, device=dev)
    tenths: dict[str, dict[int, tuple[torch.Tensor, int]]] = {"confidence": {}, "target": {}}
    columns: list[torch.Tensor] = []  # the chosen token of every row, per slot: [B] each
    unfed = 0  # trailing columns chosen but not fed yet
    for slot in [*template.slots, "close"]:
        if slot is not None and slot != "close":  # scaffold: chosen without asking the model
            columns.append(torch.full((bsz,), slot, dtype=torch.long, device=dev))
            unfed += 1
            continue
        if unfed:  # the model chooses here: feed the run since its last choice, in one forward
            logits = feed(model, state, torch.stack(columns[-unfed:], dim=1), pad_id)
            unfed = 0
        allowed = close_t if slot == "close" else digit_t
        pick = choose(logits[:, allowed], temperature=temperature, generator=generator)  # [B] index into allowed
        if slot is None:  # step 3: a tenths digit keeps its logits (IPR's input, Eq. 9)
            match = _BEFORE_TENTHS.search(tokenizer.decode(torch.stack(columns, 1)[0].tolist()))
            if match:
                for b, digit in enumerate(pick.tolist()):
                    tenths[match.group(1)][b] = (logits[b].clone(), digit)
        columns.append(allowed[pick])
        unfed += 1
    state.pending = columns[-1].to(state.next_pos.device)  # the closing token, fed first by a continuation
    tokens = torch.stack(columns, dim=1).tolist()  # [B, slots]
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    stop = ["closed" if stop_fn(b, tokens[b], texts[b]) else "cap" for b in range(bsz)]
    return PrefixResult(tokens=tokens, texts=texts, stop=stop, tenths=tenths, state=state)


@torch.no_grad()
def feed(model, state: DecodeState, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Feed the same number of tokens to every row ([B, k], all rows real): one forward on the eager
    path; k one-token steps on a static engine (its traced step takes one token).  Logits after the
    last [B, V]."""
    bsz, k = tokens.shape
    if k == 1 or state.engine is not None:
        active = torch.ones(bsz, dtype=torch.bool)
        for j in range(k):
            logits = step(model, state, tokens[:, j], active, pad_id)
        return logits
    state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(bsz, k)], dim=1)
    pos = state.next_pos.view(-1, 1) + torch.arange(k, device=state.next_pos.device)  # [B, k]
    position_ids = pos.unsqueeze(0).expand(3, -1, -1) if state.rope3d else pos
    out = model(input_ids=tokens, attention_mask=state.attention_mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1, **cache_kwargs(model, state.cache))
    state.next_pos = state.next_pos + k
    return out.logits[:, -1, :].float()


def select_rows(state: DecodeState, rows: Sequence[int]) -> DecodeState:
    """A new state holding only `rows`; the original stays usable (a later fallback continues it).

    A static state defers the copy to its first step, when the length it needs is known."""
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=state.next_pos.device)
    if state.engine is not None:
        source, base = state.selected_from or (state.static, list(range(state.static.rows)))
        return DecodeState(
            cache=None, attention_mask=state.attention_mask[idx], next_pos=state.next_pos[idx].clone(),
            pending=state.pending[idx].clone(), rope3d=state.rope3d, engine=state.engine,
            selected_from=(source, [base[r] for r in rows]),
        )
    cache = copy.copy(state.cache)
    cache.layers = [copy.copy(layer) for layer in state.cache.layers]  # new tensors land on the copies
    cache.batch_select_indices(idx)
    return DecodeState(
        cache=cache, attention_mask=state.attention_mask[idx], next_pos=state.next_pos[idx].clone(),
        pending=state.pending[idx].clone(), rope3d=state.rope3d,
    )


@torch.no_grad()
def continue_rows(
    model,
    tokenizer,
    state: DecodeState,
    *,
    max_new_tokens: int,
    done: Sequence[bool] | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    suppress: Sequence[int] = (),
    top_p: float = 1.0,
) -> list[list[int]]:
    """ContinueUntilEoS (Alg. 3-4 l.12) from the cache: feed each row's pending token, decode on.

    Returns the NEW tokens per row (the pending token is not repeated; it already belongs to the
    prefix).  Rows in `done` (their pending token was EOS) produce nothing.  The EOS, if reached,
    is included, like HF `generate`.  The state is consumed (a static one may shed finished rows).
    """
    eos = eos_ids_of(model, tokenizer)
    pad_id = _pad_id(model, tokenizer)
    bsz = state.pending.shape[0]
    out: list[list[int]] = [[] for _ in range(bsz)]
    active = torch.tensor([not d for d in done]) if done is not None else torch.ones(bsz, dtype=torch.bool)
    rows = list(range(bsz))  # state row -> output row (a static state may shed finished rows)
    if state.engine is not None:
        _ensure_room(state, max_new_tokens)
    for left in range(max_new_tokens, 0, -1):
        if not active.any():
            break
        if state.engine is not None:
            active, rows = _shed_finished(state, active, rows, left)
        logits = step(model, state, state.pending, active, pad_id)
        chosen = choose(logits, temperature=temperature, generator=generator, suppress=suppress,
                        top_p=top_p).tolist()
        pending = state.pending.tolist()
        for b in active.nonzero().flatten().tolist():
            tok = chosen[b]
            out[rows[b]].append(tok)
            pending[b] = tok
            if tok in eos:
                active[b] = False
        state.pending = torch.tensor(pending, dtype=torch.long, device=state.next_pos.device)
    return out


def _shed_finished(state: DecodeState, active: torch.Tensor, rows: list[int], left: int):
    """Finished rows stop costing work once the live ones fit a smaller batch bucket: the state
    (consumed by `continue_rows`) then moves to a bucket holding only them."""
    live = active.nonzero().flatten().tolist()
    if batch_bucket(len(live)) >= state.static.kv.batch:
        return active, rows
    state.selected_from = (state.static, live)
    _ensure_room(state, left)
    idx = torch.as_tensor(live, dtype=torch.long, device=state.next_pos.device)
    state.next_pos, state.pending = state.next_pos[idx], state.pending[idx]
    state.attention_mask = state.attention_mask[idx]
    return active[live], [rows[b] for b in live]


@torch.no_grad()
def generate(model, tokenizer, inputs, *, max_new_tokens: int, temperature: float = 0.0,
             generator: torch.Generator | None = None, suppress: Sequence[int] = (),
             top_p: float = 1.0) -> list[list[int]]:
    """Plain batched generation with the same loop (the local target, the benchmark baseline).

    `suppress`: token ids never generated (e.g. P2's [CN] / [UN], which only the scorer appends)."""
    if max_new_tokens <= 0:
        return [[] for _ in range(inputs["input_ids"].shape[0])]
    state, logits = prefill(model, inputs, reserve=max_new_tokens)
    state.pending = choose(logits, temperature=temperature, generator=generator, suppress=suppress, top_p=top_p)
    first = state.pending.tolist()
    eos = eos_ids_of(model, tokenizer)
    rest = continue_rows(model, tokenizer, state, max_new_tokens=max_new_tokens - 1, done=[t in eos for t in first],
                         temperature=temperature, generator=generator, suppress=suppress, top_p=top_p)
    return [[f, *r] for f, r in zip(first, rest, strict=True)]
