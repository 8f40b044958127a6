"""Micro-steps: from a rank's records to one typed `MicroStepResult` (the batch, per-token weights and
objective the loss needs, plus metrics and sample completions).  One function per `StepKind`.

A micro-step of the RL modes (line numbers of Alg. 1 / Alg. 2):
    # step 2: this rank's prompts x = (P, I, Q)                             (Alg. 1 l.2,  Alg. 2 l.9)
    # step 3: N sampled completions per prompt                              (Alg. 1 l.3,  Alg. 2 l.10)
    # step 4: parse d, t, r; R_fmt + R_acc, Acc_dft, R_dft, R_tgt             (Alg. 1 l.4-8, Alg. 2 l.11-16)
    # step 5: all-gather; vanishing test, DSS, rewrite the score tokens      (Alg. 1 l.9-16, Alg. 2 l.17-32)
    # step 6: A_base (Eq. 1), A_d / A_t (Eq. 5, Eq. 6 after DSS)              (Alg. 1 l.17, Alg. 2 l.33)
    # step 7: per-token advantage map (Eq. 7-8)                              (Alg. 1 l.18, Alg. 2 l.34)
"""
from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field

import torch

from prp.core.batches import PromptBatch, TrainBatch, build_batch, build_prompts
from prp.core.data import Record
from prp.core.parsing import parse_completion
from prp.core.prompts import CN_TOKEN, UN_TOKEN, build_messages
from prp.train.config import TrainConfig
from prp.train.dist import Dist
from prp.train.groups import GroupAdvantages, apply_substitution, completion_segments, compute_advantages
from prp.train.loss import Segment, token_advantage_map
from prp.train.modes import Mode, Objective, StepKind
from prp.train.policy import NonFiniteError, Policy
from prp.train.rewards import accuracy_reward, is_rating, overlong_reward
from prp.train.rollout import Rollout, format_score, step_seed
from prp.train.sampler import safe_image

SFT_FORMATS = ("none", "drl", "jrl")  # sft_rating=mixed picks one per record


@dataclass
class MicroStepResult:
    """What one micro-step hands to the loss (step 7) and to the log."""

    batch: TrainBatch  # prompts + completions, [B, P+L]; B = prompts * completions per prompt
    weights: torch.Tensor  # [B, L] per-token weight of each completion position (0 on padding)
    objective: Objective  # PG: -sum(w logp) (Eq. 2/7/8); CE: -sum(w logp) / sum(w)
    temperature: float  # the sampling temperature the log-probs are taken at
    metrics: dict[str, list[float]] = field(default_factory=dict)  # global where gathered
    samples: list[dict] = field(default_factory=list)  # rows for samples.jsonl


@dataclass
class StepContext:
    """Everything a micro-step reads; `skipped` is the run's counter of what was not trained, and why."""

    cfg: TrainConfig
    mode: Mode
    d: Dist
    policy: Policy
    acc_tgt: dict[str, float]  # record id -> Acc_tgt (JRL)
    skipped: Counter


def prompts_for(ctx: StepContext, records: list[Record], kinds: list[str],
                repeat: int) -> tuple[PromptBatch, torch.Tensor]:
    """Step 2: each record prompted as `kinds[i]`, `repeat` times; and which groups are trainable [G] bool."""
    images, ok = zip(*(safe_image(r) for r in records), strict=True)
    msgs = [build_messages(r.question, mode=k, with_image=True) for r, k in zip(records, kinds, strict=True)]
    prompts = build_prompts(ctx.policy.processor, msgs, list(images), repeat=repeat, device=ctx.policy.device)
    too_long = (prompts.attention_mask.sum(1) > ctx.cfg.max_prompt_length).view(len(records), repeat).any(1)
    valid = torch.tensor(ok) & ~too_long.cpu()
    ctx.skipped["runtime_bad_image"] += sum(1 for x in ok if not x)
    ctx.skipped["prompt_too_long"] += int(too_long.sum())
    return prompts, valid


def rollout(ctx: StepContext, prompts: PromptBatch, micro: int, suppress: tuple[int, ...] = ()) -> Rollout:
    """Step 3: sampled completions; the seed depends on (seed, micro-step, rank) only (resume replays it)."""
    from prp.train import rollout as ro  # looked up at call time: tests replace generate_rollout

    cfg = ctx.cfg
    try:
        return ro.generate_rollout(
            ctx.policy.model, ctx.policy.processor, prompts, max_new_tokens=cfg.max_completion_length,
            temperature=cfg.temperature, top_p=cfg.top_p, seed=step_seed(cfg.seed, "rollout", micro, ctx.d.rank),
            synced_gpus=ctx.d.deepspeed, suppress=suppress, engine=cfg.rollout_engine,
            weights_version=micro // cfg.gradient_accumulation_steps,  # weights change once per optimizer step
        )
    except RuntimeError as exc:  # torch.multinomial's refusal: finite but huge weights overflow the logits
        if "inf" in str(exc) and "nan" in str(exc):
            raise NonFiniteError(f"the sampling probabilities are not finite ({exc})") from exc
        raise


def rl_micro(ctx: StepContext, micro: int, records: list[Record]) -> MicroStepResult:
    """GRPO / DRL / JRL: steps 2-7 above."""
    cfg, tok, n, mode = ctx.cfg, ctx.policy.tok, ctx.cfg.num_generations, ctx.mode
    kind = mode.parse_kind
    prompts, valid = prompts_for(ctx, records, [mode.prompt] * len(records), n)  # step 2
    ro = rollout(ctx, prompts, micro)  # step 3
    texts = tok.batch_decode(ro.completions, skip_special_tokens=True)
    # step 4: parse and reward every completion (Alg. 1 l.6-7)
    parsed = [parse_completion(t, kind) for t in texts]
    fmt = [1.0 if p.format_ok else 0.0 for p in parsed]  # R_fmt (prp.train.rewards.format_reward)
    acc = []
    for i, p in enumerate(parsed):
        a = accuracy_reward(p.answer, records[i // n].answer or "")
        if a is None:  # e.g. a math-verify timeout: Acc would be wrong, so the group is not trained
            ctx.skipped["runtime_unparsable_gold"] += 1
            valid[i // n] = False
        acc.append(a or 0.0)
    lengths = [len(c) for c in ro.completions]
    over = [overlong_reward(x, max_length=cfg.max_completion_length, cache_length=cfg.overlong_cache_length)
            if cfg.overlong_cache_length else 0.0 for x in lengths]
    g = len(records)
    shape = (g, n)
    nan = float("nan")
    local = {  # this rank's groups: [g, n] per completion, [g] per prompt
        "base": torch.tensor([f + a + o for f, a, o in zip(fmt, acc, over, strict=True)]).view(shape),
        "fmt": torch.tensor(fmt).view(shape), "acc": torch.tensor(acc).view(shape),
        "over": torch.tensor(over).view(shape),
        "d": torch.tensor([nan if p.confidence is None else p.confidence for p in parsed],
                          dtype=torch.float64).view(shape),
        "t": torch.tensor([nan if p.target is None else p.target for p in parsed], dtype=torch.float64).view(shape),
        "acc_tgt": torch.tensor([ctx.acc_tgt.get(r.id, 0.0) for r in records], dtype=torch.float64),
        "valid": valid.to(torch.float32),
        "len": torch.tensor(lengths, dtype=torch.float32).view(shape),
        "trunc": torch.tensor(ro.truncated, dtype=torch.float32).view(shape),
    }
    # step 5-6: gather every rank's groups, then the same advantage computation on every rank
    glob = {k: ctx.d.gather(v) for k, v in local.items()}  # [G_world, n] / [G_world]
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, "dss", micro))
    adv = compute_advantages(
        mode=mode.name, base_rewards=glob["base"], correct=glob["acc"] > 0.5, d=glob["d"], t=glob["t"],
        acc_tgt=glob["acc_tgt"], valid=glob["valid"] > 0.5, cfg=cfg, generator=gen,
    )
    rows = slice(ctx.d.rank * g, (ctx.d.rank + 1) * g)  # this rank's groups
    new_d, new_t = adv.new_d[rows].reshape(-1).tolist(), adv.new_t[rows].reshape(-1).tolist()
    completions = [
        apply_substitution(ids, tok, mode=kind, new_d=new_d[i], new_t=new_t[i])
        if not (math.isnan(new_d[i]) and math.isnan(new_t[i])) else ids
        for i, ids in enumerate(ro.completions)
    ]  # Alg. 1 l.13
    # step 7: one per-token advantage map over prompt + completion
    batch = build_batch(prompts, completions, pad_id=tok.pad_token_id)
    segments = torch.full(batch.input_ids.shape, int(Segment.PROMPT), dtype=torch.long)  # [B*N, P+L]
    for i, ids in enumerate(completions):
        segments[i, batch.prompt_len:batch.prompt_len + len(ids)] = torch.tensor(completion_segments(ids, tok, kind))
    weights = token_advantage_map(
        segments=segments, a_base=adv.a_base[rows].reshape(-1),
        a_d=None if adv.a_d is None else adv.a_d[rows].reshape(-1),
        a_t=None if adv.a_t is None else adv.a_t[rows].reshape(-1), alpha=cfg.alpha, beta=cfg.beta,
    )[:, batch.prompt_len:].to(ctx.policy.device)  # [B*N, L]
    samples = [
        {"id": records[i // n].id, "gold": records[i // n].answer, "completion": texts[i],
         "format": fmt[i], "accuracy": acc[i], "d": parsed[i].confidence, "t": parsed[i].target,
         "acc_dft": float(adv.acc_dft[rows][i // n]), "a_base": float(adv.a_base[rows].reshape(-1)[i]),
         "substituted_d": None if math.isnan(new_d[i]) else new_d[i]}
        for i in range(min(len(texts), cfg.num_samples_logged))
    ]
    return MicroStepResult(batch, weights, Objective.PG, cfg.temperature, rl_metrics(glob, adv, mode), samples)


def rl_metrics(glob: dict[str, torch.Tensor], adv: GroupAdvantages, mode: Mode) -> dict[str, list[float]]:
    """Rewards per segment, rating MAE / std, DSS rate, advantage stats and lengths of one micro-step."""
    a_base = adv.a_base
    m: dict = {
        "reward/format": [glob["fmt"].mean().item()], "reward/accuracy": [glob["acc"].mean().item()],
        "reward/overlong": [glob["over"].mean().item()], "reward/base": [glob["base"].mean().item()],
        "zero_std_frac": [(glob["base"].std(-1, unbiased=False) < 1e-8).float().mean().item()],
        "advantage/base_abs_mean": [a_base.abs().mean().item()],
        "completion_len_mean": [glob["len"].mean().item()], "completion_len_max": [glob["len"].max().item()],
        "truncated_frac": [glob["trunc"].mean().item()], "tokens": [glob["len"].sum().item()],
    }
    for key, scores, rewards, acc, fired, a in (
        ("d", glob["d"], adv.r_dft, adv.acc_dft, adv.dss_d, adv.a_d),
        ("t", glob["t"], adv.r_tgt, glob["acc_tgt"], adv.dss_t, adv.a_t),
    ):
        if key not in mode.ratings:
            continue
        m[f"reward/rating_{key}"] = [rewards.mean().item()]
        for name, value in rating_stats(scores, acc).items():
            m[f"rating_{key}_{name}"] = [value]
        m[f"dss_{key}_rate"] = [fired.float().mean().item()]
        m[f"advantage/{key}_abs_mean"] = [a.abs().mean().item()]
    return m


def rating_stats(scores: torch.Tensor, acc: torch.Tensor) -> dict[str, float]:
    """The logged rating columns of one kind: `scores` [G, N] (NaN = no rating), `acc` [G] the group's target.

    Only ratings Eq. 4 accepts (0 <= d <= 1) count: a "943" is a malformed rating (reward -1), not a
    rating 942 points off.  mae = mean |d - Acc| over them; std = the mean over groups (with >= 2 of
    them) of their population std, the within-group spread DSS watches; valid_frac = their share.

    >>> s = torch.tensor([[0.5, 0.5, 943.0, float("nan")], [0.2, 0.6, 0.4, 0.8]], dtype=torch.float64)
    >>> {k: round(v, 4) for k, v in rating_stats(s, torch.tensor([1.0, 0.5])).items()}
    {'mae': 0.3, 'std': 0.1118, 'valid_frac': 0.75}
    """
    ok = torch.tensor([is_rating(x) for x in scores.flatten().tolist()], dtype=torch.bool,
                      device=scores.device).view(scores.shape)  # Eq. 4's domain, one definition
    gap = (scores - acc.unsqueeze(-1).to(scores.dtype)).abs()
    count = ok.sum(-1)  # [G]
    mean = torch.where(ok, scores, 0.0).sum(-1) / count.clamp(min=1)  # [G]
    var = torch.where(ok, (scores - mean.unsqueeze(-1)) ** 2, 0.0).sum(-1) / count.clamp(min=1)  # [G]
    spread = var[count >= 2].sqrt()
    return {"mae": gap[ok].mean().item() if ok.any() else float("nan"),
            "std": spread.mean().item() if spread.numel() else float("nan"),
            "valid_frac": ok.float().mean().item()}


def sft_micro(ctx: StepContext, micro: int, records: list[Record]) -> MicroStepResult:
    """Supervised warm start: `[rating]<think>{trace}</think><answer>{answer}</answer>` + EOS, the trace
    from the record's `cfg.sft_reasoning` field."""
    cfg, tok, eos = ctx.cfg, ctx.policy.tok, ctx.policy.eos_id
    # "mixed": each record in one of the three formats (fixed per record id), so one warm start
    # follows whichever prompt it is given (P, P_draft or P_joint), as the paper's base draft does.
    formats = [SFT_FORMATS[zlib.crc32(r.id.encode()) % 3] if cfg.sft_rating == "mixed" else cfg.sft_rating
               for r in records]
    prompts, valid = prompts_for(ctx, records, [f if f != "none" else "target" for f in formats], 1)
    # sft_rating_value < 0: a fresh uniform 0.00-0.99 rating per record and step, like the base
    # model's "randomly evaluate" ratings (P_draft); a constant teaches the model one rating only.
    rng = random.Random(step_seed(cfg.seed, "sft_rating", micro, ctx.d.rank))
    completions = []
    for r, fmt in zip(records, formats, strict=True):
        default = [rng.randrange(100) / 100 if cfg.sft_rating_value < 0 else cfg.sft_rating_value for _ in "dt"]
        d = format_score(float(r.meta.get("confidence", default[0])))
        t = format_score(float(r.meta.get("target_rating", default[1])))
        prefix = {"none": "", "drl": f"<confidence>{d}</confidence>",
                  "jrl": f"<target>{t}</target><confidence>{d}</confidence>"}[fmt]
        text = f"{prefix}<think>{r.meta[cfg.sft_reasoning]}</think><answer>{r.answer}</answer>"
        completions.append([*tok.encode(text, add_special_tokens=False)[:cfg.max_completion_length - 1], eos])
    batch = build_batch(prompts, completions, pad_id=tok.pad_token_id)
    weights = batch.completion_mask.float() * valid.float().unsqueeze(-1).to(ctx.policy.device)  # [B, L]
    lengths = [len(c) for c in completions]
    metrics = {"completion_len_mean": [sum(lengths) / len(lengths)], "completion_len_max": [max(lengths)],
               "tokens": [sum(lengths) * ctx.d.world]}
    return MicroStepResult(batch, weights, Objective.CE, 1.0, metrics, [])


def cn_sequence(body: list[int], correct: bool, cn: int, un: int, eos: int) -> tuple[list[int], list[float]]:
    """Paradigm 2's training sequence for one answer and its per-token weights: `body + [CN] + EOS`, all
    trained, if correct; `body + [UN] + EOS` with only the [UN] token trained if not (an incorrect
    answer is not taught, only that it is incorrect).

    >>> cn_sequence([5, 6], True, 1, 2, 0), cn_sequence([5, 6], False, 1, 2, 0)
    (([5, 6, 1, 0], [1.0, 1.0, 1.0, 1.0]), ([5, 6, 2, 0], [0.0, 0.0, 1.0, 0.0]))
    """
    seq = [*body, cn if correct else un, eos]
    return seq, [1.0] * len(seq) if correct else [0.0] * len(body) + [1.0, 0.0]


def _cn_batch(ctx: StepContext, prompts: PromptBatch, seqs: list[tuple[list[int], list[float]]],
              valid: torch.Tensor, per_prompt: int) -> tuple[TrainBatch, torch.Tensor]:
    """The batch and [B, L] weights of `cn_sequence` rows; rows of an untrainable prompt weigh 0."""
    batch = build_batch(prompts, [seq for seq, _ in seqs], pad_id=ctx.policy.tok.pad_token_id)
    weights = torch.zeros(batch.completion_mask.shape)  # [B, L]
    for i, (_, w) in enumerate(seqs):
        if bool(valid[i // per_prompt]):
            weights[i, : len(w)] = torch.tensor(w)
    return batch, weights.to(ctx.policy.device)


def sft_cn_micro(ctx: StepContext, micro: int, records: list[Record]) -> MicroStepResult:
    """Paradigm 2 baseline (Sec. 2.1, Sec. 5), `cfg.sft_cn_sampling` picks the variant:
    - "presampled" (the paper): `records` are examples of the labelled set built once before training
      (prp.train.presample.presample_cn: N answers per question from the starting model, judged with
      evaluation's rule); each is trained as `cn_sequence` of its stored answer and label;
    - "online": N answers per question sampled from the current policy at this step, judged, then trained
      the same way (no separate stage, labels follow the policy as it learns)."""
    if ctx.cfg.sft_cn_sampling == "online":
        return _sft_cn_online(ctx, micro, records)
    cfg, tok, eos = ctx.cfg, ctx.policy.tok, ctx.policy.eos_id
    prompts, valid = prompts_for(ctx, records, [ctx.mode.prompt] * len(records), 1)
    cn, un = tok.convert_tokens_to_ids(CN_TOKEN), tok.convert_tokens_to_ids(UN_TOKEN)
    seqs, correct = [], []
    for r in records:
        ok = r.meta["cn_label"] == CN_TOKEN
        body = tok.encode(r.meta["cn_text"], add_special_tokens=False)[: cfg.max_completion_length - 2]
        seqs.append(cn_sequence(body, ok, cn, un, eos))
        correct.append(float(ok))
    batch, weights = _cn_batch(ctx, prompts, seqs, valid, 1)
    lengths = torch.tensor([len(seq) for seq, _ in seqs], dtype=torch.float32)
    glob_acc, glob_len = ctx.d.gather(torch.tensor(correct)), ctx.d.gather(lengths)
    metrics = {"reward/accuracy": [glob_acc.mean().item()], "completion_len_mean": [glob_len.mean().item()],
               "completion_len_max": [glob_len.max().item()], "tokens": [glob_len.sum().item()]}
    return MicroStepResult(batch, weights, Objective.CE, 1.0, metrics, [])


def _sft_cn_online(ctx: StepContext, micro: int, records: list[Record]) -> MicroStepResult:
    """sft_cn_sampling=online: N samples from the current policy per record, judged, `cn_sequence`."""
    cfg, tok, n, eos = ctx.cfg, ctx.policy.tok, ctx.cfg.num_generations, ctx.policy.eos_id
    prompts, valid = prompts_for(ctx, records, [ctx.mode.prompt] * len(records), n)
    cn, un = tok.convert_tokens_to_ids(CN_TOKEN), tok.convert_tokens_to_ids(UN_TOKEN)
    # The body is the policy's own answer; only the trainer appends [CN] / [UN], so they are never
    # sampled (a sampled [UN] would end the answer early, and the scorer reads P[CN] after it).
    ro = rollout(ctx, prompts, micro, suppress=(cn, un))
    seqs, correct = [], []
    for i, ids in enumerate(ro.completions):
        text = tok.decode(ids, skip_special_tokens=True)
        ok = accuracy_reward(parse_completion(text, "grpo").answer, records[i // n].answer or "") == 1.0
        body = ids[:-1] if ids and ids[-1] == eos else ids
        seqs.append(cn_sequence(body, ok, cn, un, eos))
        correct.append(float(ok))
    batch, weights = _cn_batch(ctx, prompts, seqs, valid, n)
    lengths = torch.tensor([len(c) for c in ro.completions], dtype=torch.float32)
    glob_acc, glob_len = ctx.d.gather(torch.tensor(correct)), ctx.d.gather(lengths)
    metrics = {"reward/accuracy": [glob_acc.mean().item()], "completion_len_mean": [glob_len.mean().item()],
               "completion_len_max": [glob_len.max().item()], "tokens": [glob_len.sum().item()],
               "truncated_frac": [sum(ro.truncated) / len(ro.truncated)]}
    return MicroStepResult(batch, weights, Objective.CE, cfg.temperature, metrics, [])


MICRO_STEPS = {StepKind.RL: rl_micro, StepKind.SFT: sft_micro, StepKind.SFT_CN: sft_cn_micro}

__all__ = ["MICRO_STEPS", "SFT_FORMATS", "MicroStepResult", "StepContext", "cn_sequence", "rl_micro", "sft_cn_micro",
           "sft_micro"]
