"""Steps 5-6 of Alg. 1 / 2 on gathered groups: group advantages, the vanishing test and DSS, and the
token-level glue (rewrite a substituted rating into the completion, label each token's segment).

Everything here runs on group tensors all-gathered from every rank ([G_world, N]), with one DSS
generator seeded by the step, so every rank computes the same result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prp.core.parsing import parse_completion, span_token_indices
from prp.train.advantages import advantage_vanishing, group_advantages, rating_advantages, substitute_scores
from prp.train.config import TrainConfig
from prp.train.loss import Segment
from prp.train.modes import get_mode
from prp.train.rewards import rating_reward
from prp.train.rollout import format_score, rewrite_score


@dataclass
class GroupAdvantages:
    """Advantages of G groups of N completions (the rows of every rank, gathered)."""

    a_base: torch.Tensor  # [G, N] Eq. 1
    a_d: torch.Tensor | None  # [G, N] Eq. 5, or Eq. 6 where DSS fired; None in grpo
    a_t: torch.Tensor | None  # [G, N] likewise for t; None unless jrl
    acc_dft: torch.Tensor  # [G] Eq. 3
    r_dft: torch.Tensor  # [G, N] Eq. 4 of the ratings as generated (logged)
    r_tgt: torch.Tensor  # [G, N]
    new_d: torch.Tensor  # [G, N] substituted d' (NaN = keep the generated rating)
    new_t: torch.Tensor  # [G, N]
    dss_d: torch.Tensor  # [G] bool, DSS fired on d
    dss_t: torch.Tensor  # [G] bool


def _scores(row: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in row.tolist()]


def _rating_part(scores: torch.Tensor, acc: torch.Tensor, *, dss: bool, mu: float, sigma: float,
                 generator: torch.Generator):
    """R (Eq. 4), A (Eq. 5) and, where the advantage vanishes, DSS (Eq. 6) for one rating kind."""
    groups, n = scores.shape
    rewards = torch.tensor([[rating_reward(s, a) for s in _scores(scores[g])] for g, a in enumerate(acc.tolist())],
                           dtype=torch.float64).reshape(groups, n)
    adv = rating_advantages(rewards).float()
    new = torch.full_like(scores, float("nan"))
    fired = torch.zeros(groups, dtype=torch.bool)
    for g in range(groups):
        row, a = _scores(scores[g]), float(acc[g])
        if dss and advantage_vanishing(row, a, mu, sigma):
            sub = substitute_scores(row, a, generator=generator)  # d_N kept, d_1..d_{N-1} redrawn
            adv[g] = sub.advantages
            new[g, : n - 1] = torch.tensor(sub.scores[:-1], dtype=scores.dtype)
            fired[g] = True
    return rewards, adv, new, fired


def compute_advantages(
    *, mode: str, base_rewards: torch.Tensor, correct: torch.Tensor, d: torch.Tensor, t: torch.Tensor,
    acc_tgt: torch.Tensor, valid: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
) -> GroupAdvantages:
    """Steps 5-6 on gathered group tensors: base_rewards/correct/d/t [G, N] (NaN = no rating), acc_tgt/valid [G].

    >>> cfg = TrainConfig(mode="drl", model="m", train_data="x", mu=0.2, sigma=0.05)
    >>> out = compute_advantages(mode="drl", base_rewards=torch.tensor([[2., 1, 1, 1]]),
    ...     correct=torch.tensor([[1., 0, 0, 0]]), d=torch.tensor([[0.9, 0.9, 0.9, 0.9]], dtype=torch.float64),
    ...     t=torch.full((1, 4), float("nan"), dtype=torch.float64), acc_tgt=torch.zeros(1),
    ...     valid=torch.tensor([True]), cfg=cfg, generator=torch.Generator().manual_seed(0))
    >>> bool(out.dss_d[0]), out.new_d[0, 3].isnan().item(), round(out.a_d[0].sum().item(), 6)
    (True, True, 0.0)
    """
    acc_dft = correct.float().mean(-1)  # [G] Eq. 3 (Alg. 1 l.4)
    a_base = group_advantages(base_rewards.float())  # [G, N] Eq. 1
    kw = {"dss": cfg.dss, "mu": cfg.mu, "sigma": cfg.sigma, "generator": generator}
    r_dft, a_d, new_d, dss_d = _rating_part(d, acc_dft, **kw)  # Alg. 1 l.9-16
    r_tgt, a_t, new_t, dss_t = _rating_part(t, acc_tgt, **kw)  # Alg. 2 l.25-32
    zero = ~valid.bool()  # groups that must not train (runtime bad image, prompt too long)
    for a in (a_base, a_d, a_t):
        a[zero] = 0.0
    for new in (new_d, new_t):
        new[zero] = float("nan")
    ratings = get_mode(mode).ratings
    return GroupAdvantages(
        a_base=a_base, a_d=a_d if "d" in ratings else None, a_t=a_t if "t" in ratings else None,
        acc_dft=acc_dft, r_dft=r_dft, r_tgt=r_tgt, new_d=new_d, new_t=new_t,
        dss_d=dss_d & valid.bool(), dss_t=dss_t & valid.bool() & torch.tensor("t" in ratings),
    )


def apply_substitution(ids: list[int], tokenizer, *, mode: str, new_d: float, new_t: float) -> list[int]:
    """Alg. 1 l.13: write the substituted ratings into the completion's tokens (t first, then d)."""
    for tag, value in (("target", new_t), ("confidence", new_d)):
        if math.isnan(value):
            continue
        text = tokenizer.decode(ids, skip_special_tokens=True)
        parsed = parse_completion(text, mode)
        span = parsed.target_span if tag == "target" else parsed.confidence_span
        new_str = format_score(value)
        if span is None or text[span[0]:span[1]] == new_str:
            continue
        ids, _ = rewrite_score(ids, tokenizer, span, new_str)
    return ids


def completion_segments(ids: list[int], tokenizer, mode: str) -> list[int]:
    """Segment of each completion token: DRAFT for d's score tokens, TARGET for t's, REST otherwise
    (tags, reasoning, answer and the EOS)."""
    segs = [int(Segment.REST)] * len(ids)
    if get_mode(mode).ratings:
        parsed = parse_completion(tokenizer.decode(ids, skip_special_tokens=True), mode)
        for span, seg in ((parsed.confidence_span, Segment.DRAFT), (parsed.target_span, Segment.TARGET)):
            for i in span_token_indices(ids, tokenizer, span):
                segs[i] = int(seg)
    return segs
