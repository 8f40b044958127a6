"""The PRP policy loss: Eq. 2 (GRPO, single update), Eq. 7 (DRL) and Eq. 8 (JRL).

Every completion token belongs to one segment:

    PROMPT (and padding)  weight 0
    REST   (r_i: tags, reasoning, answer, EOS)   A_base_i / |r_i|
    DRAFT  (the d_i score string)                alpha * A_d_i / |d_i|
    TARGET (the t_i score string)                beta  * A_t_i / |t_i|

so that   L_i = -E_m[ratio] A_base - alpha E_m[ratio] A_d - beta E_m[ratio] A_t,
each E_m being the mean over that segment's tokens of completion i (docs/decisions.md: "E_m
is the mean over the segment's tokens, per completion").  The batch loss is the mean
of L_i over completions.  With one update per rollout (the paper: no clipping, no KL),
pi_theta_old = pi_theta numerically, the ratio is 1 and the gradient is the
policy gradient  -w_m * grad log pi(o_m).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class Segment(IntEnum):
    PROMPT = 0
    REST = 1
    DRAFT = 2
    TARGET = 3


def token_advantage_map(
    *,
    segments: torch.Tensor,
    a_base: torch.Tensor,
    a_d: torch.Tensor | None = None,
    a_t: torch.Tensor | None = None,
    alpha: float = 1.5,
    beta: float = 1.5,
) -> torch.Tensor:
    """Per-token weights w[i, m] such that L_i = -sum_m ratio[i, m] * w[i, m] (Eq. 7-8).

    segments: [B, L] Segment ids; a_base, a_d, a_t: [B].  An empty segment contributes 0.
    Without a_d (plain GRPO, Eq. 2) the DRAFT tokens count as REST; likewise TARGET without a_t.

    >>> seg = torch.tensor([[0, 2, 2, 1, 1, 1]])
    >>> token_advantage_map(segments=seg, a_base=torch.tensor([0.6]), a_d=torch.tensor([1.0]), alpha=1.5)
    tensor([[0.0000, 0.7500, 0.7500, 0.2000, 0.2000, 0.2000]])
    """
    segments = segments.clone()
    if a_d is None:
        segments[segments == Segment.DRAFT] = Segment.REST
    if a_t is None:
        segments[segments == Segment.TARGET] = Segment.REST
    weights = torch.zeros(segments.shape, dtype=torch.float32, device=segments.device)  # [B, L]
    parts = [(Segment.REST, a_base, 1.0), (Segment.DRAFT, a_d, alpha), (Segment.TARGET, a_t, beta)]
    for segment, advantage, scale in parts:
        if advantage is None:
            continue
        member = (segments == segment).float()  # [B, L]
        count = member.sum(dim=-1, keepdim=True).clamp(min=1.0)  # [B, 1]; empty -> weights stay 0
        weights += member * (scale * advantage.float().to(segments.device)).unsqueeze(-1) / count
    return weights


@dataclass
class LossOutput:
    loss: torch.Tensor  # [] mean over completions of L_i
    per_completion: torch.Tensor  # [B] L_i (detached)


def prp_loss(
    *,
    logprobs: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    a_base: torch.Tensor | None = None,
    a_d: torch.Tensor | None = None,
    a_t: torch.Tensor | None = None,
    alpha: float = 1.5,
    beta: float = 1.5,
) -> LossOutput:
    """L = mean_i L_i with L_i = -sum_m ratio[i, m] * w[i, m] (Eq. 2, 7, 8).

    logprobs:      [B, L] log pi_theta of the sampled tokens (with grad)
    token_weights: [B, L] from `token_advantage_map` (0 on prompt and padding); or give
                   segments [B, L] + a_base [B] (+ a_d, a_t [B], alpha, beta) and it is built here
    old_logprobs:  [B, L] log pi_theta_old; default: logprobs detached (single update, ratio = 1)

    >>> seg = torch.tensor([[0, 2, 1, 1]])
    >>> logp = torch.zeros(1, 4)
    >>> prp_loss(logprobs=logp, segments=seg, a_base=torch.tensor([1.0]), a_d=torch.tensor([2.0]), alpha=1.5).loss
    tensor(-4.)
    """
    if token_weights is None:
        if segments is None or a_base is None:
            raise ValueError("give token_weights, or segments and a_base (plus a_d / a_t)")
        token_weights = token_advantage_map(segments=segments, a_base=a_base, a_d=a_d, a_t=a_t, alpha=alpha, beta=beta)
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    ratio = torch.exp(logprobs - old_logprobs)  # [B, L]
    per_completion = -(ratio * token_weights).sum(dim=-1)  # [B]
    return LossOutput(loss=per_completion.mean(), per_completion=per_completion.detach())
