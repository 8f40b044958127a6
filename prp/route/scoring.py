"""Routing scores (Sec. 4.2) and their IPR refinement (Sec. 4.3).

Higher score = keep on the draft.  Works on floats and on tensors alike.
"""
from __future__ import annotations

RULES = ("draft_first", "target_first")
IPR_MODES = ("add", "band", "off")

# |IPR| <= p_max * max variance of 10 probabilities = 1 * 0.09 (a one-hot distribution).
IPR_MAX_ABS = 0.09
RATING_STEP = 0.01  # ratings are written with two decimals ("0.87")


def route_score(d, t=None, *, tau: float = 2.0, rule: str = "draft_first"):
    """The evaluation-stage score s.

    - DRL (t is None): s = d.
    - JRL draft-first: s = d + (d - t) / tau.
    - JRL target-first: s = t + (t - d) / tau.

    >>> route_score(0.8, 0.4, tau=2.0), route_score(0.8, 0.4, tau=2.0, rule="target_first")
    (1.0, 0.2)
    """
    if rule not in RULES:
        raise ValueError(f"unknown scoring rule {rule!r}; expected one of {RULES}")
    if tau <= 0:
        raise ValueError("tau must be positive")
    if t is None:
        return d
    if rule == "draft_first":
        return d + (d - t) / tau
    return t + (t - d) / tau


def apply_ipr(rating, ipr, *, mode: str = "add"):
    """Refine a rating with its IPR value p (Eq. 9).

    - "add"  (the paper's implementation line, default): d' = d + p.  |p| can reach 0.09, so
      a rating can overtake a neighbouring band.
    - "band" (the paper's text, "sort within each score band by p"): p is squeezed into the
      middle of the rating's own 0.01-wide band, so the order across bands never changes:
      d' = d + RATING_STEP * (0.5 + 0.49 * p / IPR_MAX_ABS).
    - "off": d' = d.

    >>> apply_ipr(0.87, 0.09, mode="add"), round(apply_ipr(0.87, 0.09, mode="band"), 6)
    (0.96, 0.8799)
    """
    if mode not in IPR_MODES:
        raise ValueError(f"unknown IPR mode {mode!r}; expected one of {IPR_MODES}")
    if mode == "off" or ipr is None:
        return rating
    if mode == "add":
        return rating + ipr
    return rating + RATING_STEP * (0.5 + 0.49 * ipr / IPR_MAX_ABS)
