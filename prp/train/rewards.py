"""Rewards: format, accuracy, the rating rewards R_dft / R_tgt (Eq. 3-4) and DAPO's over-length penalty.

All functions take plain Python values: one completion at a time, so the trainer can log
each reward separately and a bad completion never takes the batch down with it.
"""
from __future__ import annotations

import logging

from prp.core.judge import accuracy_reward, math_equivalent  # noqa: F401 - R_acc lives in core (eval uses it too)
from prp.core.parsing import parse_completion

log = logging.getLogger(__name__)

INVALID_RATING_REWARD = -1.0  # Eq. 4, "otherwise"


def is_rating(score: float | None) -> bool:
    """A rating Eq. 4 scores: 0 <= d <= 1 (None, NaN and infinities are not).

    >>> is_rating(0.0), is_rating(1.0), is_rating(943.0), is_rating(float("nan")), is_rating(None)
    (True, True, False, False, False)
    """
    return score is not None and 0.0 <= score <= 1.0  # NaN fails both comparisons


def rating_reward(score: float | None, acc: float) -> float:
    """Eq. 4: 1 - |d - Acc| for 0 <= d <= 1, else -1 (a missing or malformed rating is -1 too).

    The same rule gives R_tgt with t and Acc_tgt (Sec. 3.3).

    >>> rating_reward(0.8, 0.5), rating_reward(1.2, 0.5), rating_reward(None, 0.5)
    (0.7, -1.0, -1.0)
    """
    if not is_rating(score):
        return INVALID_RATING_REWARD
    return 1.0 - abs(score - acc)


def group_accuracy(correct: list[bool | float | None]) -> float:
    """Eq. 3: Acc = (1/N) sum 1{correct(o_i, A)}; an unscorable completion (None) counts as wrong."""
    if not correct:
        raise ValueError("group_accuracy needs at least one completion")
    return sum(1.0 for c in correct if c) / len(correct)


def format_reward(text: str, mode: str) -> float:
    """1 when the completion follows the mode's Table 4 grammar exactly once, else 0 (R_fmt of Sec. 3.1).

    A second think/answer block, or a structural tag inside one, earns 0 (prp.core.parsing).

    >>> format_reward("<think>a</think><answer>1</answer>", "grpo")
    1.0
    >>> format_reward("<think>a</think><answer>1</answer><think>b</think><answer>2</answer>", "grpo")
    0.0
    """
    return 1.0 if parse_completion(text, mode).format_ok else 0.0


def overlong_reward(length: int, *, max_length: int, cache_length: int) -> float:
    """DAPO's soft over-length punishment [49], Eq. 13 of the DAPO paper.

    0 while length <= max_length - cache_length, then a linear ramp down to -1 at max_length,
    and -1 beyond it.

    >>> overlong_reward(90, max_length=100, cache_length=20)
    -0.5
    """
    if cache_length <= 0 or cache_length > max_length:
        raise ValueError("need 0 < cache_length <= max_length")
    soft_start = max_length - cache_length
    if length <= soft_start:
        return 0.0
    if length <= max_length:
        return (soft_start - length) / cache_length
    return -1.0
