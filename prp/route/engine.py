"""The static decode engine: a preallocated KV cache and a compiled one-token step (gpt-fast style).

`prp.route.decode` keeps the contract (rating prefix, IPR logits at the tenths digit, kept rows
continue from the same cache); this module only changes HOW a decode step runs:

- The prompt is prefilled once by the eager path (a DynamicCache, variable length, not compiled),
  then copied into a `StaticKV` of a *bucketed* shape: batch rounded up to a power of two, length
  rounded up to a multiple of `length_step`.  Buckets bound the number of compiled graphs a
  serving workload can ask for; padding rows are inert (their outputs are ignored).
- Every decode step writes column `write_at` of all rows (a finished row writes a masked hole,
  exactly like the eager loop), so the one-token forward has fixed shapes:
  ids [Bb, 1], position ids [3, Bb, 1], a [Bb, 1, 1, Lb] additive mask, the static KV buffers.
  Passing the 4-D mask skips transformers' own mask builder, whose cache interface differs
  between the releases we support.
- `torch.compile(mode="reduce-overhead")` turns that step into a CUDA graph on GPU; on CPU the
  same code runs eagerly (or under a light backend in tests).  Caches come from a pool and are
  reused, so their buffers keep static addresses (what CUDA graphs need) and a new request of
  an already-seen bucket does not recompile.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from prp.core.compat import cache_kwargs, cache_layer_tensors

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def batch_bucket(n: int) -> int:
    """Smallest bucket holding n rows (a power of two; beyond the table, n itself).

    >>> [batch_bucket(n) for n in (1, 3, 16, 17, 300)]
    [1, 4, 16, 32, 300]
    """
    return next((b for b in BATCH_BUCKETS if b >= n), n)


def length_bucket(n: int, step: int) -> int:
    """n rounded up to a multiple of `step`.  >>> length_bucket(300, 256)  -> 512"""
    return -(-n // step) * step


class StaticKV:
    """A preallocated KV cache: per layer keys/values [Bb, kv_heads, Lb, head_dim].

    It implements the part of transformers' Cache interface the decoder layers call (`update`),
    writing the one new column at `write_at` (a 0-d tensor, so advancing it never recompiles).
    """

    is_compileable = True

    def __init__(self, n_layers: int, batch: int, kv_heads: int, length: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)  # [1] next column
        self.batch, self.length = batch, length
        for t in (*self.keys, *self.values):
            torch._dynamo.mark_static_address(t)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Store one step's K/V ([Bb, kv_heads, 1, head_dim]) and return the whole buffers."""
        self.keys[layer_idx].index_copy_(2, self.write_at, key_states)
        self.values[layer_idx].index_copy_(2, self.write_at, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> torch.Tensor:
        return self.write_at[0]  # a tensor, as transformers' StaticLayer returns (no host sync)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class StaticSlots:
    """What a static state adds to DecodeState: the cache lease and the full-length mask."""

    kv: StaticKV
    mask: torch.Tensor  # [Bb, Lb] 1 attend; columns >= write_at are 0
    rows: int  # real rows (the first `rows` of the bucket)
    used: int = 0  # columns written: kv.write_at mirrored on the host (reading it back would sync)


class Engine:
    """Pooled static caches + the (optionally compiled) one-token decode step for one model."""

    def __init__(self, model, *, compile: bool = True, backend: str = "inductor", mode: str | None = None,
                 length_step: int = 256):
        self.model = model
        cfg = model.config.get_text_config(decoder=True)
        self.n_layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.length_step = length_step
        self._free: dict[tuple[int, int], list[StaticKV]] = {}
        self.compiled = compile
        if mode is None and backend == "inductor":
            mode = "reduce-overhead" if next(model.parameters()).is_cuda else None
        self._cudagraphs = mode == "reduce-overhead"
        # Buckets x pooled caches is the most graphs a workload can need; dynamo's default limit is 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self._decoder, self._head = model.get_decoder(), model.get_output_embeddings()
        self._embed = model.get_input_embeddings()
        self._cache_kw = next(iter(cache_kwargs(self._decoder, None)))  # resolved here, not in the traced code
        self._step = torch.compile(self._forward, backend=backend, mode=mode, dynamic=False) if compile \
            else self._forward

    # ------------------------------------------------------------------ caches
    def _acquire(self, batch: int, length: int, dtype, device) -> StaticKV:
        free = self._free.setdefault((batch, length), [])
        if free:
            return free.pop()
        return StaticKV(self.n_layers, batch, self.kv_heads, length, self.head_dim, dtype=dtype, device=device)

    def _release(self, key: tuple[int, int], kv: StaticKV) -> None:
        self._free.setdefault(key, []).append(kv)

    def new_slots(self, rows: int, length: int, dtype, device) -> StaticSlots:
        """A pooled cache for `rows` rows and `length` columns (both bucketed); it returns to the
        pool when the StaticSlots holding it is collected."""
        bb, lb = batch_bucket(rows), length_bucket(length, self.length_step)
        kv = self._acquire(bb, lb, dtype, device)
        mask = torch.zeros(bb, lb, dtype=torch.long, device=device)
        mask[rows:, 0] = 1  # padding rows attend to one (junk) column: finite, ignored outputs
        slots = StaticSlots(kv=kv, mask=mask, rows=rows)
        weakref.finalize(slots, self._release, (bb, lb), kv)
        return slots

    def adopt(self, dynamic_cache, attention_mask: torch.Tensor, reserve: int) -> StaticSlots:
        """Copy a prefilled DynamicCache ([B, h, T, d] per layer) into a static bucket with room
        for `reserve` more tokens."""
        rows, used = attention_mask.shape
        k0, _ = cache_layer_tensors(dynamic_cache, 0)
        slots = self.new_slots(rows, used + reserve, k0.dtype, k0.device)
        for layer in range(self.n_layers):
            k, v = cache_layer_tensors(dynamic_cache, layer)
            slots.kv.keys[layer][:rows, :, :used].copy_(k)
            slots.kv.values[layer][:rows, :, :used].copy_(v)
        slots.mask[:rows, :used] = attention_mask
        slots.kv.write_at.fill_(used)
        slots.used = used
        return slots

    def migrate(self, slots: StaticSlots, rows: list[int], reserve: int) -> StaticSlots:
        """A new lease holding only `rows` of `slots`, with room for `reserve` more tokens; the
        source stays valid (a later fallback may still continue it)."""
        used = slots.used
        dev = slots.mask.device
        new = self.new_slots(len(rows), used + reserve, slots.kv.keys[0].dtype, dev)
        idx = torch.as_tensor(rows, dtype=torch.long, device=dev)
        n = len(rows)
        for layer in range(self.n_layers):
            new.kv.keys[layer][:n, :, :used].copy_(slots.kv.keys[layer].index_select(0, idx)[:, :, :used])
            new.kv.values[layer][:n, :, :used].copy_(slots.kv.values[layer].index_select(0, idx)[:, :, :used])
        new.mask[:n, :used] = slots.mask.index_select(0, idx)[:, :used]
        new.kv.write_at.fill_(used)
        new.used = used
        return new

    # ------------------------------------------------------------------ the step
    def _forward(self, kv: StaticKV, ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor):
        """ids [Bb, 1], position_ids [3, Bb, 1], mask [Bb, Lb] -> logits [Bb, V] (float)."""
        dtype = kv.keys[0].dtype
        additive = (1 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # [Bb, 1, 1, Lb]
        # The text decoder + LM head only: a decode step never touches the vision tower, and the
        # smaller traced region compiles faster.  Same ops as the full forward without images.
        hidden = self._decoder(inputs_embeds=self._embed(ids), attention_mask=additive, position_ids=position_ids,
                               use_cache=True, **{self._cache_kw: kv}).last_hidden_state
        return self._head(hidden[:, -1, :]).float()

    def step(self, slots: StaticSlots, tokens: torch.Tensor, active: torch.Tensor, next_pos: torch.Tensor,
             pad_id: int, rope3d: bool) -> torch.Tensor:
        """One fed token per real row ([rows]); inactive rows feed a masked hole.  Logits [rows, V]."""
        bb, rows = slots.kv.batch, slots.rows
        if slots.used >= slots.kv.length:
            raise RuntimeError(f"static cache full ({slots.kv.length} columns): reserve more tokens")
        ids = torch.full((bb,), pad_id, dtype=torch.long, device=tokens.device)
        ids[:rows] = torch.where(active, tokens, torch.full_like(tokens, pad_id))
        pos = torch.zeros(bb, dtype=torch.long, device=tokens.device)
        pos[:rows] = next_pos
        pos = pos.view(1, bb, 1)
        pos = pos.expand(3, -1, -1) if rope3d else pos[0]
        col = torch.zeros(bb, dtype=torch.long, device=tokens.device)
        col[:rows] = active.long()
        slots.mask.index_copy_(1, slots.kv.write_at, col.unsqueeze(1))
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._step(slots.kv, ids.unsqueeze(1), pos.contiguous(), slots.mask)
        slots.kv.write_at.add_(1)
        slots.used += 1
        # a CUDA-graph output is overwritten by the next replay: hand the caller its own copy
        return logits[:rows].clone() if self._cudagraphs else logits[:rows]


def engine_for(model, kind: str | None = None, **options) -> Engine | None:
    """The model's engine: None for the eager loop, else a cached `Engine`.

    kind: "eager" | "compiled" | "static" (static cache, step not compiled: the debugging path);
    None = the model's current choice, by default "compiled" on CUDA and "eager" elsewhere.
    """
    if kind is None:  # the model's choice, with the options it was set with
        kind = getattr(model, "_prp_engine_kind", None)
        options = options or getattr(model, "_prp_engine_options", {})
        if kind is None:
            kind = "compiled" if next(model.parameters()).is_cuda and _takes_4d_mask(model) else "eager"
    if kind == "eager":
        return None
    if kind not in ("compiled", "static"):
        raise ValueError(f"unknown engine {kind!r}: eager, compiled or static")
    key = (kind, tuple(sorted(options.items())))
    cached = getattr(model, "_prp_engines", None)
    if cached is None:
        cached = {}
        object.__setattr__(model, "_prp_engines", cached)  # not a submodule, not in state_dict
    if key not in cached:
        if not _takes_4d_mask(model):
            raise ValueError(f"the {kind} engine needs attn_implementation sdpa or eager (it passes a 4-D mask), "
                             f"not {model.config._attn_implementation!r}: load the model with sdpa "
                             "or use --engine eager")
        cached[key] = Engine(model, compile=kind == "compiled", **options)
    return cached[key]


def _takes_4d_mask(model) -> bool:
    """The static step's [Bb, 1, 1, Lb] mask works with sdpa and eager attention; flash-attention
    takes no such mask, so models loaded with it keep the eager loop by default."""
    return getattr(model.config, "_attn_implementation", "sdpa") in ("sdpa", "eager", None)


def set_engine(model, kind: str, **options) -> None:
    """Choose how `prp.route.decode` generates with `model` from now on (`--engine eager|compiled`)."""
    if kind != "eager":
        engine_for(model, kind, **options)  # validate (and build) before switching, not at the first query
    object.__setattr__(model, "_prp_engine_kind", kind)
    object.__setattr__(model, "_prp_engine_options", options)
