"""The per-instance evaluation table (Sec. 5.1; Tab. 1-2): one :class:`Instance` per evaluated query.

Input is a per-instance table: a list of :class:`Instance` (or plain dicts with the same keys).
Every routing signal is a *keep score*: higher = keep the instance on the draft model.

Conventions (shared by every function here; the tests pin each one):

- Rounding. At target share ``p_t`` out of ``n`` instances, ``k = floor(p_t * n + 0.5)``
  instances go to the target (round half up; ``rounding="ceil"`` / ``"floor"`` are available).
  A tiny tolerance absorbs float noise, so ``0.29 * 100`` gives 29, not 28.
- Order and ties. The ``k`` *lowest* keep scores go to the target.  Ties are broken stably by
  position: among equal scores, the instance that comes first in the table goes first.
- NaN. A NaN (or missing) signal counts as the *lowest* possible score: such instances are the
  first sent to the target and rank last in the Spearman ranking.
- Accuracies are fractions in [0, 1]; AUC is reported in % like Tab. 1.
- Direction. A PRP signal is stored as its rule's keep score (prp.route.scoring.Rule.keep_score:
  s for draft-first, -s for target-first), so every function here ranks "higher = keep".
- Own answers. A signal may carry its own answers (``Instance.signal_answers[name]``: the P1 / P2
  baselines, Sec. 2.1): its curve, Spearman and Tab. 2 rows then use that model's correctness and
  latency (:meth:`Instance.for_signal`), and its ``decision`` (``post_hoc`` for a baseline that
  decides after a complete answer: a routed query costs its own answer + the target, Fig. 6).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

DEFAULT_GRID = np.linspace(0.0, 1.0, 101)
DECISIONS = ("proactive", "post_hoc")


# ---- the per-instance table -----------------------------------------------------------------
@dataclass
class Instance:
    """One evaluated instance.

    ``draft_latency_s`` is the draft's full generation, rating prefix included; ``prefix_latency_s``
    is the time to produce the rating prefix alone; ``scores`` holds the routing signals (higher =
    keep on draft), e.g. ``{"prp": .., "prp_no_ipr": .., "p1": .., "p2": ..}``; ``d``/``t`` are the
    raw ratings, when known.

    >>> Instance(id="a", draft_correct=True, target_correct=False, scores={"prp": 0.9}).signal("prp")
    0.9
    """

    id: str
    draft_correct: bool
    target_correct: bool
    draft_latency_s: float = math.nan
    target_latency_s: float = math.nan
    prefix_latency_s: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    split: str | None = None
    d: float | None = None
    t: float | None = None
    # signal -> {"model": str, "correct": bool, "latency_s": float, "decision": "post_hoc" | "proactive"}:
    # the answers that produced that signal (P1 / P2), when they are not the routing draft's
    signal_answers: dict[str, dict] = field(default_factory=dict)
    rule: str | None = None  # the PRP scoring rule whose keep scores are in ``scores`` (label only)

    @classmethod
    def from_mapping(cls, record: Mapping[str, Any]) -> Instance:
        """Build from a dict; unknown keys are ignored, ``None`` latencies become NaN.

        >>> Instance.from_mapping({"id": 1, "draft_correct": 1, "target_correct": 0}).id
        '1'
        """
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in record.items() if k in known}
        kw["id"] = str(kw["id"])
        kw["draft_correct"] = bool(kw["draft_correct"])
        kw["target_correct"] = bool(kw["target_correct"])
        for key in ("draft_latency_s", "target_latency_s"):
            kw[key] = _float_or_nan(kw.get(key))
        kw["prefix_latency_s"] = _float_or_nan(kw.get("prefix_latency_s", 0.0))
        kw["scores"] = dict(kw.get("scores") or {})
        kw["signal_answers"] = dict(kw.get("signal_answers") or {})
        return cls(**kw)

    def for_signal(self, name: str) -> Instance:
        """This instance as seen by signal ``name``: its own answers' correctness and latency
        replace the routing draft's when ``signal_answers`` has them (a baseline is judged on the
        answers that produced its signal).

        >>> i = Instance(id="a", draft_correct=True, target_correct=False, draft_latency_s=1.0,
        ...              signal_answers={"p2": {"correct": False, "latency_s": 3.0}})
        >>> v = i.for_signal("p2"); (v.draft_correct, v.draft_latency_s), i.for_signal("prp") is i
        ((False, 3.0), True)
        """
        own = self.signal_answers.get(name)
        if not own:
            return self
        return replace(
            self,
            draft_correct=bool(own["correct"]),
            draft_latency_s=_float_or_nan(own.get("latency_s", self.draft_latency_s)),
        )

    def decision_for(self, name: str) -> str:
        """``proactive`` (decided after the rating prefix) unless the signal's answers say otherwise."""
        return (self.signal_answers.get(name) or {}).get("decision", "proactive")

    def signal(self, name: str) -> float:
        """``scores[name]``, else the raw rating ``d``/``t`` when ``name`` is one; else NaN.

        >>> Instance(id="a", draft_correct=True, target_correct=True, d=0.7).signal("d")
        0.7
        """
        if name in self.scores:
            return _float_or_nan(self.scores[name])
        if name in ("d", "t"):
            return _float_or_nan(getattr(self, name))
        return math.nan


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def as_instances(records: Iterable[Instance | Mapping[str, Any]]) -> list[Instance]:
    """Normalise a table of dicts and/or :class:`Instance` to a list of :class:`Instance`.

    >>> [i.id for i in as_instances([{"id": "x", "draft_correct": 1, "target_correct": 1}])]
    ['x']
    """
    return [r if isinstance(r, Instance) else Instance.from_mapping(r) for r in records]


def signal_values(instances: Sequence[Instance], signal: str) -> np.ndarray:
    """The column of one signal, NaN where an instance lacks it.

    >>> signal_values(as_instances([{"id": 0, "draft_correct": 1, "target_correct": 1}]), "p2")
    array([nan])
    """
    return np.array([inst.signal(signal) for inst in instances], dtype=float)


def for_signal(instances, signal: str) -> tuple[list[Instance], str]:
    """(the instances as seen by ``signal`` (:meth:`Instance.for_signal`), its decision).

    >>> insts, how = for_signal([{"id": 0, "draft_correct": 1, "target_correct": 0,
    ...     "signal_answers": {"p1": {"correct": 0, "latency_s": 2.0, "decision": "post_hoc"}}}], "p1")
    >>> insts[0].draft_correct, how
    (False, 'post_hoc')
    """
    insts = as_instances(instances)
    decisions = {i.decision_for(signal) for i in insts}
    if len(decisions) > 1:
        raise ValueError(f"signal {signal!r} mixes decisions {sorted(decisions)} across instances")
    return [i.for_signal(signal) for i in insts], (decisions.pop() if decisions else "proactive")


def correctness(instances: Sequence[Instance]) -> tuple[np.ndarray, np.ndarray]:
    """(draft_correct, target_correct) as float arrays of 0/1."""
    dc = np.array([inst.draft_correct for inst in instances], dtype=float)
    tc = np.array([inst.target_correct for inst in instances], dtype=float)
    return dc, tc
