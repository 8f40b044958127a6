"""The rows of the one rating pipeline (docs/routing.md lists every field).

`RatingRow`: what steps 1-2 (Alg. 3-4 l.1-10, Sec. 4.3) know about one query: ratings, IPR, the
rule's score with and without IPR, the prefix and its per-query time.  `Router.rate` returns them;
routing, evaluation and the demo reproduction consume them.

`RouteRow`: one line of the routes JSONL (a `RatingRow` plus the decision and the answer), written
with `to_json` and read back with `from_json`; every field is always present (JSON null when not
applicable).

Latency convention (per query): a batched stage's wall time is divided evenly among the rows that
took part in it; a remote target's time is measured per request.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class RatingRow:
    """Steps 1-2 for one query."""

    id: str
    d: float | None  # raw draft rating; None when the prefix never closed it
    t: float | None  # raw target rating (JRL)
    ipr_d: float | None  # Eq. 9 at d's tenths digit
    ipr_t: float | None
    score: float | None  # the rule's s on d' = d + p_d, t' = t + p_t; None = no usable rating (-inf)
    score_no_ipr: float | None  # the same rule on the raw d, t
    prefix: str = ""
    prefix_stop: str = ""  # "closed" | "eos" | "cap"
    prefix_tokens: int = 0
    prefix_latency_s: float = 0.0  # per query: the prefix batch's wall time / batch size (a served draft: its own)
    ipr_digits_seen: int | None = None  # fewest of the ten digits known at a tenths digit (10 = exact IPR)
    ipr_bound: float | None = None  # largest |IPR error| those digits allow (0.0 when exact; prp.route.ipr)
    error: str | None = None  # why this query has no rating (a served draft that failed: `draft_failed: ...`)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RouteRow(RatingRow):
    """One routed query: its rating, the decision, who answered and what it cost (per query)."""

    mode: str | None = None  # "drl" | "jrl"
    rule: str | None = None  # "draft_first" | "target_first": the score's formula and direction
    route: str | None = None  # "draft" | "target"; None on an error line
    answered_by: str | None = None  # "draft" or the target's model name
    answer: str | None = None
    text: str | None = None
    fallback: bool = False
    line: int | None = None  # input line, on error lines
    continue_latency_s: float | None = None
    target_latency_s: float | None = None
    target_attempts: int | None = None
    latency_s: float | None = None  # prefix + draft continuation (if the draft answered) + target (if routed)
    completion_tokens: int | None = None
    target_only_latency_s: float | None = None  # --measure-target-only
    target_text: str | None = None
    target_answer: str | None = None
    draft_text: str | None = None  # draft_all (calibration)
    draft_answer: str | None = None
    gold: str | None = None
    correct: bool | None = None  # `answer` judged with the benchmark's rule
    target_only_correct: bool | None = None  # `target_answer` judged likewise (--measure-target-only)

    @classmethod
    def from_rating(cls, rating: RatingRow, **kw) -> RouteRow:
        return cls(**{**asdict(rating), **kw})

    @classmethod
    def from_json(cls, obj: dict) -> RouteRow:
        """A routes JSONL line back to a row; unknown keys are ignored, missing ones take defaults.

        >>> RouteRow.from_json({"id": "q1", "error": "bad image", "line": 3, "extra": 1}).route is None
        True
        """
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in obj.items() if k in known}
        kw.setdefault("d", None), kw.setdefault("t", None), kw.setdefault("ipr_d", None)
        kw.setdefault("ipr_t", None), kw.setdefault("score", None), kw.setdefault("score_no_ipr", None)
        kw["id"] = str(kw["id"])
        return cls(**kw)


def error_row(rid: str, error: str, *, line: int | None = None) -> dict:
    """The routes JSONL line of an input that could not be routed (malformed line, unreadable image).

    >>> error_row("q", "unreadable image", line=2)["route"], error_row("q", "x")["line"]
    (None, None)
    """
    return RouteRow(id=rid, d=None, t=None, ipr_d=None, ipr_t=None, score=None, score_no_ipr=None,
                    error=error, line=line).to_json()
