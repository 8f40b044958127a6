"""Decision-making (Sec. 4.2) and the two threshold strategies of Sec. 4.4.

A query keeps the draft when its score s > T (Alg. 3 l.11, Alg. 4 l.12); otherwise it goes to
the target.  A missing score (the draft never closed its rating) is -inf: it always goes to the
target, because nothing says the draft can handle it.

Three ways to get T:
- `FixedThreshold(T)`: given.
- `BatchFraction(p_t)`: Dynamic Pre-scoring without a validation set (Sec. 4.4 b): in each batch
  of concurrent queries the round(p_t * n) lowest scores go to the target (round half up;
  ties broken by arrival order, earlier queries first to the target).
- `calibrate(...)`: Task-specific Calibration with a validation set (Sec. 4.4 a): on labelled
  validation queries with known draft/target correctness, pick T for a requested p_t or for
  the cheapest p_t that reaches a requested accuracy.  Saved as JSON, reused with `load`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prp.eval.metrics import n_routed

NO_SCORE = float("-inf")


def _score(s: float | None) -> float:
    return NO_SCORE if s is None or (isinstance(s, float) and math.isnan(s)) else float(s)


def n_to_target(p_t: float, n: int) -> int:
    """How many of n queries go to the target for a share p_t: round half up, within [0, n]
    (the same count the evaluation's routing curves use, prp.eval.metrics.n_routed).

    >>> n_to_target(0.6, 5), n_to_target(0.5, 3), n_to_target(0.0, 4)
    (3, 2, 0)
    """
    return n_routed(p_t, n, rounding="round")


@dataclass
class FixedThreshold:
    threshold: float | None  # None = -inf: keep every query that has a score

    def keep(self, scores: Sequence[float | None]) -> list[bool]:
        """True = the draft continues.

        >>> FixedThreshold(0.5).keep([0.9, 0.5, None, 0.2])
        [True, False, False, False]
        """
        t = NO_SCORE if self.threshold is None else self.threshold
        return [_score(s) > t for s in scores]


@dataclass
class BatchFraction:
    p_t: float  # share of each batch routed to the target

    def keep(self, scores: Sequence[float | None]) -> list[bool]:
        """The round(p_t * n) lowest-scored queries of this batch go to the target.

        >>> BatchFraction(0.5).keep([0.9, 0.1, 0.5, 0.7])
        [True, False, False, True]
        """
        order = sorted(range(len(scores)), key=lambda i: (_score(scores[i]), i))  # stable: earlier first
        routed = set(order[: n_to_target(self.p_t, len(scores))])
        return [i not in routed for i in range(len(scores))]


@dataclass
class Calibration:
    """A threshold chosen on a validation split, with what it achieved there."""

    threshold: float | None  # s > threshold keeps the draft; None = -inf
    p_t: float  # share routed to the target on validation
    accuracy: float  # routed accuracy on validation
    draft_accuracy: float
    target_accuracy: float
    n: int
    requested: dict  # {"pt": ...} or {"target_acc": ...}
    mode: str = ""
    rule: str = ""
    tau: float | None = None
    ipr: str = ""

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


def calibrate(
    scores: Sequence[float | None],
    draft_correct: Sequence[float],
    target_correct: Sequence[float],
    *,
    p_t: float | None = None,
    target_acc: float | None = None,
) -> Calibration:
    """Choose T on validation (Sec. 4.4 a).  Exactly one of p_t / target_acc.

    Sorting by score, routing the k lowest to the target gives the routing curve
    acc(k) = (sum_{i<k} target_i + sum_{i>=k} draft_i) / n.
    - p_t: k = round(p_t * n).
    - target_acc: the smallest k with acc(k) >= target_acc (fewest target calls); if no k
      reaches it, the k with the best accuracy.
    T is the k-th lowest score (k = 0: T = -inf).  With tied scores `s > T` can route more than k
    queries on new data: the share achieved on validation is reported in `p_t`.

    >>> c = calibrate([0.9, 0.2, 0.5, 0.7], [1, 0, 0, 1], [1, 1, 1, 0], p_t=0.5)
    >>> c.threshold, c.p_t, c.accuracy
    (0.5, 0.5, 1.0)
    """
    if (p_t is None) == (target_acc is None):
        raise ValueError("give exactly one of p_t or target_acc")
    n = len(scores)
    if n == 0 or not (n == len(draft_correct) == len(target_correct)):
        raise ValueError("need the same, non-zero number of scores and correctness labels")
    order = sorted(range(n), key=lambda i: (_score(scores[i]), i))
    d = [float(draft_correct[i]) for i in order]
    t = [float(target_correct[i]) for i in order]
    # acc[k]: k lowest to the target
    acc = [(sum(t[:k]) + sum(d[k:])) / n for k in range(n + 1)]
    if p_t is not None:
        k = n_to_target(p_t, n)
        requested = {"pt": p_t}
    else:
        reaching = [k for k in range(n + 1) if acc[k] >= target_acc - 1e-12]
        k = reaching[0] if reaching else max(range(n + 1), key=lambda j: (acc[j], -j))
        requested = {"target_acc": target_acc}
    threshold = None if k == 0 else _score(scores[order[k - 1]])
    threshold = None if threshold == NO_SCORE else threshold
    kept = FixedThreshold(threshold).keep(scores)
    routed_acc = sum(
        float(draft_correct[i]) if kept[i] else float(target_correct[i]) for i in range(n)
    ) / n
    return Calibration(
        threshold=threshold, p_t=1 - sum(kept) / n, accuracy=routed_acc,
        draft_accuracy=sum(d) / n, target_accuracy=sum(t) / n, n=n, requested=requested,
    )
