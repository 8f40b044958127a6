"""Advantages: GRPO's group advantage (Eq. 1), the rating advantage (Eq. 5), the
advantage-vanishing test and Dynamic Score Substitution (DSS, Eq. 6 and the interval S).

Groups lie along the last dimension: a [N] tensor is one group of N completions, a
[G, N] tensor is G groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prp.train.rewards import is_rating, rating_reward

# Below this a group's reward spread is treated as zero (rewards are sums of a few
# small rationals, so a real spread is never this small).
_ZERO_STD = 1e-8


def group_advantages(rewards: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Eq. 1: (R_i - mean_j R_j) / std_j R_j within each group.

    `unbiased=True` uses the sample std, as TRL's GRPOTrainer and DeepSeekMath's GRPO do.
    A group whose rewards are all equal (or N = 1) has no signal: its advantages are 0, never NaN.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    tensor([ 0.8660, -0.8660, -0.8660,  0.8660])
    """
    rewards = rewards.to(torch.float32) if not rewards.is_floating_point() else rewards
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    std = rewards.std(dim=-1, keepdim=True, unbiased=unbiased)
    safe_std = torch.where(std > _ZERO_STD, std, torch.ones_like(std))
    return torch.where(std > _ZERO_STD, centred / safe_std, torch.zeros_like(rewards))


def rating_advantages(rating_rewards: torch.Tensor) -> torch.Tensor:
    """Eq. 5: A_d_i = R_dft_i - (1/N) sum_j R_dft_j (mean-centred, no std scaling).

    >>> rating_advantages(torch.tensor([0.9, 0.5, -1.0]))
    tensor([ 0.7667,  0.3667, -1.1333])
    """
    return rating_rewards - rating_rewards.mean(dim=-1, keepdim=True)


def advantage_vanishing(scores: list[float | None], acc: float, mu: float, sigma: float) -> bool:
    """Sec. 3.2: vanishing when |mean(d) - Acc| > mu and std(d) < sigma.

    std is the population std (the ratings' spread within the group).  A group with a
    missing or out-of-range rating is never "vanishing": its -1 reward already separates it,
    and DSS needs a valid d_N to build its interval.

    >>> advantage_vanishing([0.9, 0.9, 0.9, 0.9], 0.25, 0.2, 0.05)
    True
    """
    if not scores or not all(is_rating(s) for s in scores):
        return False
    values = torch.tensor(scores, dtype=torch.float64)
    mean_gap = abs(values.mean().item() - acc)
    spread = values.std(unbiased=False).item()
    return mean_gap > mu and spread < sigma


def substitution_interval(d_last: float, acc: float) -> tuple[float, float]:
    """The DSS sampling interval S, exactly as printed in Sec. 3.2:

        S = [max(0, min(d_N, Acc) - |Acc - d_N|),  min(max(d_N, Acc) + |Acc - d_N|, 1)]

    Note (docs/decisions.md): the text says every d' in S lies closer to Acc than
    d_N, but this interval also reaches |Acc - d_N| beyond Acc on the far side and beyond d_N
    on the near side, so a draw can be as far from Acc as 2|Acc - d_N|.  We implement the
    printed interval.

    >>> substitution_interval(0.9, 0.5)
    (0.09999999999999998, 1.0)
    """
    gap = abs(acc - d_last)
    return max(0.0, min(d_last, acc) - gap), min(max(d_last, acc) + gap, 1.0)


@dataclass
class Substitution:
    """The outcome of DSS on one group of N ratings."""

    scores: list[float]  # [N] new ratings; the last one is d_N unchanged
    rewards: list[float]  # [N] R'_i for i < N, R_N for the last
    advantages: torch.Tensor  # [N] Eq. 6


def dynamic_score_substitution(
    scores: list[float], acc: float, generator: torch.Generator | None = None, *, decimals: int = 2
) -> tuple[list[float], torch.Tensor]:
    """DSS (Alg. 1 l.10-15, Eq. 6): redraw d_1..d_{N-1} uniformly from S, keep d_N.

    The draws are rounded to `decimals` places because they are written back into the
    completion text as "0.xx" (the prompt's format); rewards use the rounded values.
    Advantages (Eq. 6): A'_i = R'_i - R_N for i < N, and A'_N = -sum_{j<N} A'_j.

    Returns (new_scores, advantages[N]).
    """
    result = substitute_scores(scores, acc, generator=generator, decimals=decimals)
    return result.scores, result.advantages


def substitute_scores(
    scores: list[float], acc: float, *, generator: torch.Generator | None = None, decimals: int = 2
) -> Substitution:
    """DSS with the rewards kept too (the trainer logs them)."""
    if len(scores) < 2:
        raise ValueError("Dynamic Score Substitution needs a group of at least 2 ratings")
    d_last = scores[-1]
    if not is_rating(d_last):
        raise ValueError(f"d_N must be a valid rating in [0, 1], got {d_last!r}")
    lo, hi = substitution_interval(d_last, acc)
    draws = lo + (hi - lo) * torch.rand(len(scores) - 1, generator=generator, dtype=torch.float64)
    # Keep the rounded draws inside S: clamp to the grid points at or inside its ends.
    scale = 10**decimals
    grid_lo, grid_hi = math.ceil(lo * scale - 1e-9) / scale, math.floor(hi * scale + 1e-9) / scale
    if grid_lo > grid_hi:  # S is narrower than one grid step: only d_N's own value is safe
        grid_lo = grid_hi = d_last
    new_scores = [min(max(round(v, decimals), grid_lo), grid_hi) for v in draws.tolist()] + [d_last]
    rewards = [rating_reward(s, acc) for s in new_scores]
    head = torch.tensor(rewards[:-1], dtype=torch.float64) - rewards[-1]  # A'_i, i < N
    advantages = torch.cat([head, -head.sum().reshape(1)]).to(torch.float32)
    return Substitution(scores=new_scores, rewards=rewards, advantages=advantages)
