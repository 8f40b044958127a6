"""Decision-making (Sec. 4.2) and the two threshold strategies of Sec. 4.4.

Every policy ranks the rule's keep score (prp.route.scoring.Rule.keep_score: higher = keep on the
draft), so the direction belongs to the rule: draft-first keeps s > T (Alg. 3 l.11, Alg. 4 l.12),
target-first keeps s < T (high s goes to the target, Sec. 4.2 / A.2).  A missing score (the draft
never closed its rating) is -inf: it always goes to the target, because nothing says the draft can
handle it.

Three ways to get T:
- `FixedThreshold(T, rule)`: given.
- `BatchFraction(p_t, rule)`: Dynamic Pre-scoring without a validation set (Sec. 4.4 b): in each batch
  of concurrent queries the round(p_t * n) lowest keep scores go to the target (round half up;
  ties broken by arrival order, earlier queries first to the target).
- `calibrate(...)`: Task-specific Calibration with a validation set (Sec. 4.4 a): on labelled
  validation queries with known draft/target correctness, pick T for a requested p_t or for
  the cheapest p_t that reaches a requested accuracy.  Saved as JSON (with its rule), reused with `load`.

This module is the home of the target count `n_routed`; the evaluation metrics import it from here
(eval may import route, never the other way round).
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prp.core.jsonl import read_json_file
from prp.route.scoring import Rule, get_rule

ROUNDINGS = ("round", "ceil", "floor")
_EPS = 1e-9


def n_routed(p_t: float, n: int, *, rounding: str = "round") -> int:
    """How many of ``n`` instances go to the target at share ``p_t``: ``floor(p_t * n + 0.5)``
    (round half up; ``"ceil"`` / ``"floor"`` available).  A tiny tolerance absorbs float noise,
    so ``0.29 * 100`` gives 29, not 28.

    >>> n_routed(0.5, 5), n_routed(0.5, 5, rounding="floor"), n_routed(0.29, 100)
    (3, 2, 29)
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    if not 0.0 <= p_t <= 1.0:
        raise ValueError(f"p_t must lie in [0, 1], got {p_t}")
    x = p_t * n
    if rounding == "round":
        k = math.floor(x + 0.5 + _EPS)
    elif rounding == "ceil":
        k = math.ceil(x - _EPS)
    else:
        k = math.floor(x + _EPS)
    return min(max(k, 0), n)


def _rule(rule: str | Rule) -> Rule:
    return rule if isinstance(rule, Rule) else get_rule(rule)


@dataclass
class FixedThreshold:
    threshold: float | None  # in s units; None = keep every query that has a score
    rule: str = "draft_first"

    def keep(self, scores: Sequence[float | None]) -> list[bool]:
        """True = the draft continues.

        >>> FixedThreshold(0.5).keep([0.9, 0.5, None, 0.2])
        [True, False, False, False]
        >>> FixedThreshold(0.5, "target_first").keep([0.9, 0.5, None, 0.2])
        [False, False, False, True]
        """
        rule = _rule(self.rule)
        return [rule.keeps_draft(s, self.threshold) for s in scores]


@dataclass
class BatchFraction:
    p_t: float  # share of each batch routed to the target
    rule: str = "draft_first"

    def keep(self, scores: Sequence[float | None]) -> list[bool]:
        """The round(p_t * n) lowest keep scores of this batch go to the target.

        >>> BatchFraction(0.5).keep([0.9, 0.1, 0.5, 0.7]), BatchFraction(0.5, "target_first").keep([0.9, 0.1, 0.5, 0.7])
        ([True, False, False, True], [False, True, True, False])

        A missing score goes to the target whatever the share: when more than round(p_t * n) queries of
        a batch have none, all of them are routed (the share exceeds p_t), none stays on the draft.

        >>> BatchFraction(0.25).keep([None, 0.9, None, 0.5])
        [False, True, False, True]
        """
        rule = _rule(self.rule)
        keys = [rule.keep_score(s) for s in scores]
        order = sorted(range(len(scores)), key=lambda i: (keys[i], i))  # stable: earlier first
        missing = sum(1 for k in keys if k == -math.inf)  # sorted first: no rating, nothing says keep it
        routed = set(order[: max(n_routed(self.p_t, len(scores)), missing)])
        return [i not in routed for i in range(len(scores))]


@dataclass
class Calibration:
    """A threshold chosen on a validation split, with what it achieved there."""

    threshold: float | None  # in s units, direction by `rule`; None = keep every scored query
    p_t: float  # share routed to the target on validation
    accuracy: float  # routed accuracy on validation
    draft_accuracy: float
    target_accuracy: float
    n: int
    requested: dict  # {"pt": ...} or {"target_acc": ...} (+ "confidence")
    # with a confidence: the one-sided lower bound, at that confidence, of the goal's quantity at T (the
    # accuracy, or for a target-relative goal the accuracy minus the target's); None without one
    bound: float | None = None
    mode: str = ""
    rule: str = "draft_first"
    tau: float | None = None
    ipr: str = ""
    judge: str = ""  # the benchmark whose rule judged validation answers

    def policy(self) -> FixedThreshold:
        return FixedThreshold(self.threshold, self.rule or "draft_first")

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**read_json_file(path))  # bad content: a one-line JsonError (prp.core.jsonl)


def target_goal(target_acc: float | str, target_accuracy: float) -> float:
    """A calibration goal: a number, or "target" / "target-<tolerance>" relative to the target's accuracy.

    >>> target_goal(0.7, 0.8), target_goal("target", 0.8), round(target_goal("target-0.01", 0.8), 4)
    (0.7, 0.8, 0.79)
    """
    if isinstance(target_acc, str):
        name, _, tolerance = target_acc.partition("-")
        if name != "target":
            raise ValueError(f"target_acc {target_acc!r}: a number, 'target' or 'target-<tolerance>'")
        return target_accuracy - float(tolerance or 0.0)
    return target_acc


def calibrate(
    scores: Sequence[float | None],
    draft_correct: Sequence[float],
    target_correct: Sequence[float],
    *,
    p_t: float | None = None,
    target_acc: float | str | None = None,
    confidence: float | None = None,
    rule: str | Rule = "draft_first",
) -> Calibration:
    """Choose T on validation (Sec. 4.4 a).  Exactly one of p_t / target_acc.

    Sorting by the rule's keep score, routing the k lowest to the target gives the routing curve
    acc(k) = (sum_{i<k} target_i + sum_{i>=k} draft_i) / n.
    - p_t: k = round(p_t * n).
    - target_acc: the smallest k with acc(k) >= target_acc (fewest target calls); if no k
      reaches it, the k with the best accuracy.  "target": the target's own accuracy on these
      queries (the cheapest threshold that loses nothing against target-only); "target-0.01": one
      point below it.
    - confidence c (with target_acc): the goal must hold with confidence c on new queries, not only
      on these: the smallest k whose one-sided normal lower bound at c reaches it, i.e.
      mean(x) - z_c * sd(x) / sqrt(n) >= goal with x_i the routed answer's correctness (a number
      goal), or its difference with the target's answer (a "target" goal, paired per query:
      >= -tolerance).  A small validation split moves acc(k) by whole queries (one of 200 is half
      a point); without a confidence the cheapest k lands on the goal's edge, and new queries fall
      below it about half the time.
    T is the s of the k-th query sent (k = 0: None).  With tied scores the rule's test can route
    more than k queries on new data: the share achieved on validation is reported in `p_t`.

    >>> c = calibrate([0.9, 0.2, 0.5, 0.7], [1, 0, 0, 1], [1, 1, 1, 0], p_t=0.5)
    >>> c.threshold, c.p_t, c.accuracy
    (0.5, 0.5, 1.0)
    >>> c = calibrate([0.9, 0.2, 0.5, 0.7], [1, 0, 0, 1], [1, 1, 0, 1], target_acc="target")
    >>> c.threshold, c.p_t, c.accuracy, c.target_accuracy
    (0.2, 0.25, 0.75, 0.75)
    >>> scores, dc, tc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]
    >>> calibrate(scores, dc, tc, target_acc="target-0.1").p_t  # the draft alone ties the target here
    0.0
    >>> c = calibrate(scores, dc, tc, target_acc="target-0.1", confidence=0.9)  # 1/6 - 1.28 * 1/6
    >>> c.threshold, round(c.p_t, 4), round(c.bound, 4)
    (0.1, 0.1667, -0.0469)
    >>> c = calibrate([0.9, 0.2, 0.5, 0.7], [0, 1, 1, 0], [1, 1, 1, 0], p_t=0.5, rule="target_first")
    >>> c.threshold, c.p_t, c.accuracy
    (0.7, 0.5, 0.75)
    """
    if (p_t is None) == (target_acc is None):
        raise ValueError("give exactly one of p_t or target_acc")
    if confidence is not None and (target_acc is None or not 0.5 <= confidence < 1):
        raise ValueError(f"confidence {confidence!r}: a level in [0.5, 1), with target_acc")
    rule = _rule(rule)
    n = len(scores)
    if n == 0 or not (n == len(draft_correct) == len(target_correct)):
        raise ValueError("need the same, non-zero number of scores and correctness labels")
    keys = [rule.keep_score(s) for s in scores]
    order = sorted(range(n), key=lambda i: (keys[i], i))
    d = [float(draft_correct[i]) for i in order]
    t = [float(target_correct[i]) for i in order]
    bound = None
    if p_t is not None:
        k = n_routed(p_t, n)
        requested = {"pt": p_t}
    else:
        requested = {"target_acc": target_acc, **({} if confidence is None else {"confidence": confidence})}
        # level[k], k lowest keep scores to the target: acc(k) (confidence 0.5, z = 0) or its lower bound;
        # a "target" goal compares with the target's answers, paired: acc(k) - target accuracy
        relative = isinstance(target_acc, str)
        level = _lower_bounds(t, d, confidence or 0.5, minus=t if relative else None)
        goal = target_goal(target_acc, sum(t) / n) - (sum(t) / n if relative else 0.0)
        reaching = [k for k in range(n + 1) if level[k] >= goal - 1e-12]
        k = reaching[0] if reaching else max(range(n + 1), key=lambda j: (level[j], -j))
        bound = level[k] if confidence is not None else None
    key = None if k == 0 else keys[order[k - 1]]
    threshold = None if key is None or key == -math.inf else rule.from_keep_score(key)
    kept = FixedThreshold(threshold, rule.name).keep(scores)
    routed_acc = sum(
        float(draft_correct[i]) if kept[i] else float(target_correct[i]) for i in range(n)
    ) / n
    return Calibration(
        threshold=threshold, p_t=1 - sum(kept) / n, accuracy=routed_acc,
        draft_accuracy=sum(d) / n, target_accuracy=sum(t) / n, n=n, requested=requested, bound=bound,
        rule=rule.name,
    )


def _lower_bounds(t: list[float], d: list[float], confidence: float, *, minus: list[float] | None) -> list[float]:
    """For every k (the k first queries routed to the target, the rest kept): the one-sided normal
    lower bound at `confidence` of mean(x), x_i = t_i (i < k) else d_i, minus `minus`_i when given
    (at confidence 0.5, z = 0: mean(x) itself, the routing curve acc(k)).

    O(n) with prefix / suffix sums.  A split with no spread (every x equal) has bound = its mean.

    >>> [round(b, 3) for b in _lower_bounds([1, 1], [0, 1], 0.5, minus=None)]
    [0.5, 1.0, 1.0]
    """
    n = len(t)
    m = minus or [0.0] * n
    z = statistics.NormalDist().inv_cdf(confidence)
    routed = [ti - mi for ti, mi in zip(t, m, strict=True)]
    kept = [di - mi for di, mi in zip(d, m, strict=True)]
    s1 = [0.0] * (n + 1)  # s1[k] = sum of x at split k; s2: of x^2
    s2 = [0.0] * (n + 1)
    s1[0], s2[0] = sum(kept), sum(x * x for x in kept)
    for k in range(1, n + 1):
        s1[k] = s1[k - 1] - kept[k - 1] + routed[k - 1]
        s2[k] = s2[k - 1] - kept[k - 1] ** 2 + routed[k - 1] ** 2
    out = []
    for k in range(n + 1):
        mean = s1[k] / n
        var = max(0.0, (s2[k] - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        out.append(mean - z * math.sqrt(var / n))
    return out
