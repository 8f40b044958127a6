"""Routing scores (Sec. 4.2), their decision direction, and their IPR refinement (Sec. 4.3).

`route_score` works on floats and on tensors alike.  Which way a score points is part of the rule
(`Rule`): under draft-first (and DRL) a high s stays on the draft; under target-first a high s goes to
the target (Sec. 4.2 / A.2: "the target model refines the samples from easy to hard").  Everything
downstream (thresholds, calibration, evaluation metrics) ranks the rule's *keep score*, higher = keep
on the draft, so the direction is decided here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Rule:
    """A scoring rule: its score s (`route_score`) and its decision direction.

    `high_keeps_draft`: True (draft-first, DRL) = keep iff s > T; False (target-first) = keep iff s < T.

    >>> tf = get_rule("target_first")
    >>> tf.score(0.8, 0.4, tau=2.0), tf.keep_score(0.2), tf.keeps_draft(0.2, 0.5), tf.keeps_draft(0.7, 0.5)
    (0.2, -0.2, True, False)
    """

    name: str
    high_keeps_draft: bool

    def score(self, d, t=None, *, tau: float = 2.0):
        """s of this rule; None when a needed rating is missing (target-first needs t: its s ranks
        queries for the target, and d alone points the other way)."""
        if d is None or (t is None and not self.high_keeps_draft):
            return None
        return route_score(d, t, tau=tau, rule=self.name)

    def keep_score(self, s) -> float:
        """Higher = keep on the draft: s, or -s for target-first; None / NaN = -inf (to the target)."""
        if s is None or (isinstance(s, float) and math.isnan(s)):
            return -math.inf
        return float(s) if self.high_keeps_draft else -float(s)

    def from_keep_score(self, k: float) -> float:
        """Inverse of `keep_score` for finite values (a threshold back in s units)."""
        return k if self.high_keeps_draft else -k

    def keeps_draft(self, s, threshold) -> bool:
        """Alg. 3 l.11 / Alg. 4 l.12 in this rule's direction; threshold None = keep every scored query."""
        if threshold is None:
            return self.keep_score(s) > -math.inf
        return self.keep_score(s) > self.keep_score(threshold)


RULE_OBJECTS = {"draft_first": Rule("draft_first", True), "target_first": Rule("target_first", False)}


def get_rule(name: str, *, mode: str = "jrl") -> Rule:
    """The rule object for a rule name; DRL has only d, so it is always draft-first.

    >>> get_rule("target_first", mode="drl").name
    'draft_first'
    """
    if name not in RULE_OBJECTS:
        raise ValueError(f"unknown scoring rule {name!r}; expected one of {RULES}")
    return RULE_OBJECTS["draft_first" if mode == "drl" else name]


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
