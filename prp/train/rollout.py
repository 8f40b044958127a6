"""Rollouts: N sampled completions per prompt, and the padded training batch.

Two generators (`rollout_engine` in the config): HF `generate` on the training model ("hf"), or
the decode engine (`prp.route.engine`, "engine") on an inference copy of the policy, bf16 on GPU,
whose weights are refreshed from the policy before every rollout, i.e. after every optimizer step
(under ZeRO-3 the shards are gathered for the copy, as TRL does for its vLLM weight sync).

Completions come back as per-row Python token lists (through the first EOS, inclusive) rather
than a padded tensor, because Dynamic Score Substitution may rewrite a rating and change a
row's length (Alg. 1 l.13); `build_batch` pads them only once they are final.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prp.core.batches import (  # noqa: F401  (their home is core; re-exported for train's users)
    PromptBatch,
    TrainBatch,
    build_batch,
    build_prompts,
    completion_logprobs,
)
from prp.route.decode import eos_ids_of


def step_seed(*parts: int | str) -> int:
    """A 63-bit seed from (seed, step, rank, ...): sampling at step k never depends on what ran before.

    >>> step_seed(0, 3, 1) == step_seed(0, 3, 1) != step_seed(0, 3, 0)
    True
    """
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Rollout:
    prompts: PromptBatch
    completions: list[list[int]]  # [B*N] token ids through the first EOS (inclusive), or truncated
    truncated: list[bool]  # [B*N] no EOS within max_new_tokens


def vision_token_ids(model) -> list[int]:
    """Image/video placeholder ids.  A sampled completion must never contain them: the training
    forward would count them as image slots ("Image features and image tokens do not match")."""
    cfg = model.config
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [int(v) for v in (getattr(cfg, n, None) for n in names) if v is not None]


def trim_at_eos(row: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """Cut after the first EOS (kept: the model must learn to stop).  (ids, truncated).

    >>> trim_at_eos([5, 6, 2, 0, 0], {2})
    ([5, 6, 2], False)
    """
    for i, tok in enumerate(row):
        if tok in eos:
            return row[: i + 1], False
    return row, True


@torch.no_grad()
def generate_rollout(
    model, processor, prompts: PromptBatch, *, max_new_tokens: int, temperature: float, top_p: float,
    seed: int, synced_gpus: bool = False, suppress: Sequence[int] = (), engine: str = "hf",
    weights_version: int | None = None,
) -> Rollout:
    """Sample one completion per prompt row (Alg. 1 l.3).

    HF sampling draws from torch's global generator, so it is re-seeded from (seed, step, rank)
    right here: sampling is a function of the step, not of everything that ran before (what makes
    --resume bit-exact).  Under ZeRO-3 `synced_gpus=True` keeps every rank stepping until all
    have finished, else ranks with shorter outputs leave the collectives early.  `suppress`: token
    ids never sampled (besides the vision placeholders), e.g. sft-cn's [CN] / [UN].
    `engine="engine"`: sample with the decode engine instead (`engine_rollout`); `weights_version`
    (the optimizer step) lets it skip refreshing its inference copy while the weights are unchanged.
    """
    if engine == "engine":
        return engine_rollout(model, processor, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed, suppress=suppress, weights_version=weights_version)
    if engine != "hf":
        raise ValueError(f"rollout_engine must be hf or engine, got {engine!r}")
    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()  # also turns gradient checkpointing off, so the KV cache is used
    torch.manual_seed(seed)
    out = model.generate(
        **prompts.model_inputs, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
        max_new_tokens=max_new_tokens, use_cache=True, synced_gpus=synced_gpus,
        pad_token_id=tokenizer.pad_token_id, suppress_tokens=[*vision_token_ids(model), *suppress] or None,
    )  # [B*N, P + L']
    model.train(was_training)
    return _rollout_of(prompts, out[:, prompts.input_ids.shape[1]:].tolist(), eos_ids_of(model, tokenizer))


def _rollout_of(prompts: PromptBatch, rows: list[list[int]], eos: set[int]) -> Rollout:
    """Each generated row cut after its first EOS (or marked truncated)."""
    cut = [trim_at_eos(row, eos) for row in rows]
    return Rollout(prompts=prompts, completions=[ids for ids, _ in cut], truncated=[t for _, t in cut])


def inference_copy(model, *, dtype: torch.dtype | None = None, version: int | None = None):
    """The policy's inference twin for the decode engine (built once, cached on the model), with
    the policy's current weights copied in.  dtype: bf16 on CUDA, the policy's own elsewhere.
    `version` (the optimizer step): the copy is skipped when the twin already holds that version's
    weights, so gradient accumulation's micro-steps copy (and gather) once per optimizer step.

    Under ZeRO-3 each rank gathers the full parameters for the copy (`GatheredParameters`), so
    the engine's forwards need no collectives and ranks may finish at different lengths."""
    policy = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    first = next(policy.parameters())
    twin = getattr(policy, "_prp_inference_copy", None)
    if twin is None:
        dtype = dtype or (torch.bfloat16 if first.is_cuda else first.dtype)
        from prp.core.compat import no_zero3_init

        with torch.device(first.device), no_zero3_init():  # full weights, even inside a ZeRO-3 run
            twin = type(policy)(policy.config).to(dtype).eval()
        twin.generation_config = policy.generation_config
        twin.requires_grad_(False)
        object.__setattr__(policy, "_prp_inference_copy", twin)  # not a submodule: not trained, not saved
    elif version is not None and getattr(twin, "_prp_version", None) == version:
        return twin
    params = list(policy.parameters())
    gathered = any(hasattr(p, "ds_id") for p in params)
    if gathered:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx, torch.no_grad():
        mine = dict(twin.named_parameters())
        for name, p in policy.named_parameters():
            mine[name].copy_(p)
        mine_buffers = dict(twin.named_buffers())
        for name, b in policy.named_buffers():
            if name in mine_buffers:
                mine_buffers[name].copy_(b)
    object.__setattr__(twin, "_prp_version", version)
    return twin


def engine_rollout(
    model, processor, prompts: PromptBatch, *, max_new_tokens: int, temperature: float, top_p: float,
    seed: int, suppress: Sequence[int] = (), weights_version: int | None = None,
) -> Rollout:
    """Alg. 1 l.3 with the decode engine on `inference_copy(model)`.  Sampling draws from a generator
    seeded with `seed` (on the model's device), so it is a function of the step, as with HF."""
    from prp.route.decode import generate

    twin = inference_copy(model, version=weights_version)
    device = next(twin.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = prompts.model_inputs
    if inputs.get("pixel_values") is not None:
        inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(next(twin.parameters()).dtype)}
    rows = generate(twin, processor.tokenizer, inputs, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, generator=generator, suppress=[*vision_token_ids(model), *suppress])
    return _rollout_of(prompts, rows, eos_ids_of(twin, processor.tokenizer))


def format_score(value: float) -> str:
    """A rating as the prompts write it (0.00-0.99, two decimals).  >>> format_score(0.5)  -> '0.50'"""
    return f"{value:.2f}"


def rewrite_score(ids: list[int], tokenizer, span: tuple[int, int], new_score: str) -> tuple[list[int], list[int]]:
    """Replace the score string at character `span` of `decode(ids)` by `new_score` (Alg. 1 l.13).

    Only the tokens overlapping the span are re-tokenised: the text they cover, with the score
    swapped, is encoded again and spliced in, so the rest of the completion keeps its exact tokens.
    The new piece may have a different token count (e.g. "0.9" -> "0.37"): the row simply grows or
    shrinks.  Returns (new ids, indices of the spliced tokens).

    >>> # ids of "<confidence>", "0", ".", "9", "</confidence>"  ->  "<confidence>", "0", ".", "3", "7", ...
    """
    from prp.core.parsing import token_char_offsets

    offsets = token_char_offsets(ids, tokenizer, upto_char=span[1])
    touched = [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0]]
    if not touched:
        raise ValueError(f"no token covers characters {span}")
    first, last = touched[0], touched[-1]
    piece_start, piece_end = offsets[first][0], offsets[last][1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    piece = text[piece_start:span[0]] + new_score + text[span[1]:piece_end]
    new_piece = tokenizer.encode(piece, add_special_tokens=False)
    new_ids = ids[:first] + new_piece + ids[last + 1:]
    return new_ids, list(range(first, first + len(new_piece)))
