"""Routing metrics for the evaluation of PRP (Sec. 4.1, 4.4, 5.2-5.4, A.2, A.7; Tab. 1-2).

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

from prp.route.decide import ROUNDINGS, n_routed  # noqa: F401  (their home is route; eval imports route)

DEFAULT_GRID = np.linspace(0.0, 1.0, 101)
DECISIONS = ("proactive", "post_hoc")
_EPS = 1e-9


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
        return replace(self, draft_correct=bool(own["correct"]),
                       draft_latency_s=_float_or_nan(own.get("latency_s", self.draft_latency_s)))

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


# ---- routing curves (Fig. 7, Tab. 1 AUC) ----------------------------------------------------
def nan_as_lowest(scores: Sequence[float]) -> np.ndarray:
    """Scores as floats with NaN replaced by ``-inf`` (the NaN convention).

    >>> nan_as_lowest([0.5, float("nan")])
    array([ 0.5, -inf])
    """
    x = np.asarray(scores, dtype=float).copy()
    x[np.isnan(x)] = -np.inf
    return x


def target_order(keep_scores: Sequence[float]) -> np.ndarray:
    """Indices in the order they are sent to the target: lowest score first, stable ties.

    >>> target_order([0.9, 0.1, float("nan"), 0.1]).tolist()
    [2, 1, 3, 0]
    """
    return np.argsort(nan_as_lowest(keep_scores), kind="stable")


def curve_from_order(
    order: Sequence[int], draft_correct, target_correct, *, p_t_grid=DEFAULT_GRID, rounding: str = "round"
) -> np.ndarray:
    """Mixture accuracy when the first ``k(p_t)`` indices of ``order`` go to the target.

    >>> curve_from_order([1, 0], [1, 0], [0, 1], p_t_grid=[0, 0.5, 1]).tolist()
    [0.5, 1.0, 0.5]
    """
    dc, tc = _pair(draft_correct, target_correct)
    n = len(dc)
    order = np.asarray(order, dtype=int)
    gain = np.concatenate([[0.0], np.cumsum(tc[order] - dc[order])])
    ks = [n_routed(float(p), n, rounding=rounding) for p in np.asarray(p_t_grid, dtype=float)]
    return (dc.sum() + gain[ks]) / n


def _pair(draft_correct, target_correct) -> tuple[np.ndarray, np.ndarray]:
    dc = np.asarray(draft_correct, dtype=float)
    tc = np.asarray(target_correct, dtype=float)
    if dc.shape != tc.shape or dc.ndim != 1 or len(dc) == 0:
        raise ValueError("draft_correct and target_correct must be equal-length, non-empty 1-D")
    return dc, tc


def routing_curve(
    keep_scores, draft_correct, target_correct, *, p_t_grid=DEFAULT_GRID, rounding: str = "round"
) -> np.ndarray:
    """Accuracy vs target share ``p_t`` when the lowest keep scores go to the target (Fig. 7).

    >>> routing_curve([0.9, 0.1], [1, 0], [0, 1], p_t_grid=[0, 0.5, 1]).tolist()
    [0.5, 1.0, 0.5]
    """
    return curve_from_order(
        target_order(keep_scores), draft_correct, target_correct, p_t_grid=p_t_grid, rounding=rounding
    )


def random_curve(
    draft_correct,
    target_correct,
    *,
    p_t_grid=DEFAULT_GRID,
    seeds: Iterable[int] = range(32),
    rounding: str = "round",
) -> np.ndarray:
    """Random routing (Sec. 5.1 "Random"), averaged over seeded permutations.

    >>> random_curve([1, 1], [0, 0], p_t_grid=[0, 1], seeds=[0, 1]).tolist()
    [1.0, 0.0]
    """
    dc, tc = _pair(draft_correct, target_correct)
    curves = [
        curve_from_order(
            np.random.default_rng(s).permutation(len(dc)), dc, tc, p_t_grid=p_t_grid, rounding=rounding
        )
        for s in seeds
    ]
    if not curves:
        raise ValueError("random_curve needs at least one seed")
    return np.mean(curves, axis=0)


def random_curve_expected(
    draft_correct, target_correct, *, p_t_grid=DEFAULT_GRID, rounding: str = "round"
) -> np.ndarray:
    """Exact expectation of :func:`random_curve`: ``acc_d * (1 - k/n) + acc_t * k/n``.

    ``k`` is the rounded count, so this is exact for uniformly random subsets of size ``k``.

    >>> random_curve_expected([1, 1, 0, 0], [1, 1, 1, 1], p_t_grid=[0, 0.5, 1]).tolist()
    [0.5, 0.75, 1.0]
    """
    dc, tc = _pair(draft_correct, target_correct)
    n = len(dc)
    share = np.array(
        [n_routed(float(p), n, rounding=rounding) / n for p in np.asarray(p_t_grid, dtype=float)]
    )
    return dc.mean() * (1.0 - share) + tc.mean() * share


def oracle_order(draft_correct, target_correct) -> np.ndarray:
    """The oracle's target order: first the items only the target solves (gain), then those where
    routing changes nothing (both right or both wrong), last those only the draft solves (loss);
    stable by position within each group.

    >>> oracle_order([1, 0, 1, 0], [0, 1, 1, 0]).tolist()
    [1, 2, 3, 0]
    """
    dc, tc = _pair(draft_correct, target_correct)
    group = np.where(tc > dc, 0, np.where(tc < dc, 2, 1))
    return np.argsort(group, kind="stable")


def oracle_curve(
    draft_correct, target_correct, *, p_t_grid=DEFAULT_GRID, rounding: str = "round"
) -> np.ndarray:
    """Best achievable accuracy at every ``p_t`` (upper bound of Fig. 7's curves).

    >>> oracle_curve([1, 0], [0, 1], p_t_grid=[0, 0.5, 1]).tolist()
    [0.5, 1.0, 0.5]
    """
    return curve_from_order(
        oracle_order(draft_correct, target_correct),
        draft_correct,
        target_correct,
        p_t_grid=p_t_grid,
        rounding=rounding,
    )


# ---- AUC / APGR (Tab. 1) --------------------------------------------------------------------
def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def auc(curve_x, curve_y) -> float:
    """Area under a routing curve in %, like Tab. 1: trapezoid rule over ``p_t``, divided by the
    span of ``p_t`` (1 for the full [0, 1] grid), times 100 — the mean accuracy over ``p_t``.

    >>> auc([0, 0.5, 1], [0.5, 1.0, 0.5])
    75.0
    """
    x = np.asarray(curve_x, dtype=float)
    y = np.asarray(curve_y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError("curve_x and curve_y must be equal-length, non-empty 1-D")
    if np.any(np.diff(x) <= 0):
        raise ValueError("curve_x must be strictly increasing")
    if len(x) == 1:
        return 100.0 * float(y[0])
    return 100.0 * _trapezoid(x, y) / float(x[-1] - x[0])


def apgr(curve_x, curve_y, *, draft_acc: float, target_acc: float) -> float:
    """Average Performance Gap Recovered (RouteLLM, Ong et al. 2024, arXiv:2406.18665; code:
    lm-sys/RouteLLM ``routellm/evals/evaluate.py::apgr_metric``):
    ``(AUC_router - AUC_weak) / (AUC_strong - AUC_weak)``, where the weak/strong AUCs integrate
    the constant draft/target accuracies over the same ``p_t`` grid.  That equals the mean over
    ``p_t`` of ``PGR(p) = (acc(p) - acc_draft) / (acc_target - acc_draft)``.

    Undefined when ``target_acc == draft_acc`` (no gap to recover): returns NaN.

    >>> apgr([0, 0.5, 1], [0.5, 1.0, 0.5], draft_acc=0.0, target_acc=1.0)
    0.75
    >>> apgr([0, 1], [0.5, 0.5], draft_acc=0.5, target_acc=0.5)
    nan
    """
    gap = float(target_acc) - float(draft_acc)
    if abs(gap) < 1e-12:
        return math.nan
    return (auc(curve_x, curve_y) / 100.0 - float(draft_acc)) / gap


# ---- Spearman (Tab. 1 "Spearman of Rank & Acc.") --------------------------------------------
def average_ranks(values) -> np.ndarray:
    """1-based ranks, ascending, ties share their average rank.

    >>> average_ranks([10, 30, 20, 20]).tolist()
    [1.0, 4.0, 2.5, 2.5]
    """
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho: Pearson correlation of average ranks.  NaN when fewer than 2 values, when
    either side is constant, or when any value is NaN.

    >>> spearman([1, 2, 3], [10, 20, 30]), spearman([1, 2, 3], [3, 1, 2])
    (1.0, -0.5)
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("x and y must be equal-length 1-D")
    if len(a) < 2 or np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    ra = average_ranks(a) - (len(a) + 1) / 2.0
    rb = average_ranks(b) - (len(b) + 1) / 2.0
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return math.nan if denom == 0.0 else float(ra @ rb) / denom


def rating_rank_correlation(ratings, correct) -> float:
    """Tab. 1's "Spearman of Rank & Acc.": Spearman between the *rank* of each rating in
    descending order (rank 1 = highest rating) and correctness (1 = correct, 0 = wrong).

    A rating that ranks the correct instances first gives a NEGATIVE value (low rank number goes
    with correct = 1), matching the paper ("a stronger negative correlation ... more accurately
    reflects its actual performance", Sec. 5.2; DRL -0.49 on ChartQA).  It equals
    ``-spearman(ratings, correct)``.  NaN ratings rank last (lowest).  With binary correctness a
    perfect rater reaches -1 only if its ratings are two-valued; distinct ratings give less.

    >>> round(rating_rank_correlation([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]), 4)
    -0.8944
    """
    return spearman(-nan_as_lowest(ratings), np.asarray(correct, dtype=float))


# ---- score bins (Fig. 4, 9-11) --------------------------------------------------------------
def score_bins(ratings, correct, *, bins: int = 10, lo: float = 0.0, hi: float = 1.0) -> dict:
    """Per-bin counts and accuracy.  ``bins`` equal bins on ``[lo, hi]``, half-open ``[a, b)``
    except the last, which is closed; values outside are clipped into the end bins (IPR or JRL
    scores may leave [0, 1]); NaN ratings are left out and counted in ``n_nan``.  Accuracy of an
    empty bin is NaN.

    >>> b = score_bins([0.05, 0.95, 1.0, float("nan")], [0, 1, 0, 1], bins=2)
    >>> b["count"], b["accuracy"], b["n_nan"]
    ([1, 2], [0.0, 0.5], 1)
    """
    if bins < 1 or not hi > lo:
        raise ValueError("need bins >= 1 and hi > lo")
    r = np.asarray(ratings, dtype=float)
    c = np.asarray(correct, dtype=float)
    ok = ~np.isnan(r)
    idx = np.clip(np.floor((r[ok] - lo) / (hi - lo) * bins + _EPS), 0, bins - 1).astype(int)
    count = np.bincount(idx, minlength=bins)
    hits = np.bincount(idx, weights=c[ok], minlength=bins)
    acc = [float(h / k) if k else math.nan for h, k in zip(hits, count)]
    return {
        "edges": np.linspace(lo, hi, bins + 1).tolist(),
        "count": count.tolist(),
        "accuracy": acc,
        "n_nan": int((~ok).sum()),
    }


# ---- latency / speedup (Tab. 2, Sec. 4.4) ---------------------------------------------------
def instance_latency(inst: Instance, *, to_target: bool, decision: str = "proactive") -> float:
    """End-to-end latency of one instance.  Kept on the draft: ``draft_latency_s`` (prefix
    included).  Sent to the target: ``prefix + target`` for PRP's proactive decision (Sec. 4.4),
    ``draft + target`` for route-after-completion baselines (``decision="post_hoc"``).

    >>> i = Instance(id="a", draft_correct=True, target_correct=True, draft_latency_s=5.0,
    ...              target_latency_s=50.0, prefix_latency_s=0.5)
    >>> instance_latency(i, to_target=True), instance_latency(i, to_target=True, decision="post_hoc")
    (50.5, 55.0)
    """
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; expected one of {DECISIONS}")
    if not to_target:
        return inst.draft_latency_s
    head = inst.prefix_latency_s if decision == "proactive" else inst.draft_latency_s
    return head + inst.target_latency_s


def table2_rows(
    instances,
    signal: str,
    p_t_list: Sequence[float],
    *,
    decision: str | None = None,
    rounding: str = "round",
) -> list[dict]:
    """Tab. 2 rows: for each ``p_t``, draft share ``1 - k/n``, accuracy, mean latency and
    speedup = (target-only mean latency) / (routed mean latency).

    The instances are seen by the signal (:func:`for_signal`: a baseline's own answers and
    latency); ``decision`` defaults to the signal's own (``post_hoc`` for P1 / P2).

    >>> rows = table2_rows([{"id": 0, "draft_correct": 1, "target_correct": 1, "draft_latency_s": 1,
    ...     "target_latency_s": 9, "scores": {"s": 1}}, {"id": 1, "draft_correct": 0,
    ...     "target_correct": 1, "draft_latency_s": 1, "target_latency_s": 9, "scores": {"s": 0}}],
    ...     "s", [0.5])
    >>> rows[0]["accuracy"], rows[0]["mean_latency_s"], rows[0]["speedup"]
    (1.0, 5.0, 1.8)
    """
    insts, own_decision = for_signal(instances, signal)
    decision = decision or own_decision
    dc, tc = correctness(insts)
    order = target_order(signal_values(insts, signal))
    target_only = float(np.mean([i.target_latency_s for i in insts]))
    return [_table2_row(insts, dc, tc, order, p, target_only, decision, rounding) for p in p_t_list]


def _table2_row(insts, dc, tc, order, p_t, target_only, decision, rounding) -> dict:
    n = len(insts)
    k = n_routed(float(p_t), n, rounding=rounding)
    to_target = np.zeros(n, dtype=bool)
    to_target[order[:k]] = True
    acc = float(np.where(to_target, tc, dc).mean())
    lat = float(
        np.mean([instance_latency(i, to_target=bool(g), decision=decision) for i, g in zip(insts, to_target)])
    )
    return {
        "p_t": float(p_t),
        "n_target": k,
        "draft_share": 1.0 - k / n,
        "accuracy": acc,
        "mean_latency_s": lat,
        "speedup": target_only / lat if lat > 0 else math.nan,
    }


def table2_random_rows(
    instances, p_t_list: Sequence[float], *, decision: str = "proactive", rounding: str = "round"
) -> list[dict]:
    """Tab. 2's "Random" row in exact expectation: with ``k`` of ``n`` sent to the target at
    random, accuracy and mean latency are the ``k/n``-weighted mixes of the two columns.

    >>> r = table2_random_rows([{"id": 0, "draft_correct": 1, "target_correct": 0, "draft_latency_s": 2,
    ...     "target_latency_s": 10}, {"id": 1, "draft_correct": 0, "target_correct": 1,
    ...     "draft_latency_s": 2, "target_latency_s": 10}], [0.5])[0]
    >>> r["accuracy"], r["mean_latency_s"], r["speedup"]
    (0.5, 6.0, 1.6666666666666667)
    """
    insts = as_instances(instances)
    dc, tc = correctness(insts)
    n = len(insts)
    d_lat = float(np.mean([instance_latency(i, to_target=False) for i in insts]))
    t_lat = float(np.mean([instance_latency(i, to_target=True, decision=decision) for i in insts]))
    target_only = float(np.mean([i.target_latency_s for i in insts]))
    rows = []
    for p in p_t_list:
        k = n_routed(float(p), n, rounding=rounding)
        share = k / n
        lat = d_lat * (1 - share) + t_lat * share
        rows.append(
            {
                "p_t": float(p),
                "n_target": k,
                "draft_share": 1.0 - share,
                "accuracy": float(dc.mean() * (1 - share) + tc.mean() * share),
                "mean_latency_s": lat,
                "speedup": target_only / lat if lat > 0 else math.nan,
            }
        )
    return rows


def reference_rows(instances) -> list[dict]:
    """Tab. 2's single-model rows (target only, draft only): accuracy and mean latency.

    >>> [r["model"] for r in reference_rows([{"id": 0, "draft_correct": 1, "target_correct": 0}])]
    ['target', 'draft']
    """
    insts = as_instances(instances)
    dc, tc = correctness(insts)
    t_lat = float(np.mean([i.target_latency_s for i in insts]))
    d_lat = float(np.mean([i.draft_latency_s for i in insts]))
    return [
        {
            "model": "target",
            "draft_share": 0.0,
            "accuracy": float(tc.mean()),
            "mean_latency_s": t_lat,
            "speedup": 1.0,
        },
        {
            "model": "draft",
            "draft_share": 1.0,
            "accuracy": float(dc.mean()),
            "mean_latency_s": d_lat,
            "speedup": t_lat / d_lat if d_lat > 0 else math.nan,
        },
    ]


# ---- per-portion curves (Fig. 12) and per-split curves (Fig. 8(f)) -------------------------
def portion_curves(
    keep_scores, draft_correct, target_correct, *, p_t_grid=DEFAULT_GRID, rounding: str = "round"
) -> dict:
    """Fig. 12's five curves (A.2): ``overall`` mixture accuracy; ``draft_on_draft`` and
    ``target_on_target`` (each model on its own portion); ``target_on_draft`` (the target on the
    portion kept on the draft) and ``draft_on_target``.  NaN where a portion is empty.

    >>> c = portion_curves([0.9, 0.1], [1, 0], [1, 1], p_t_grid=[0.5])
    >>> c["draft_on_draft"].tolist(), c["draft_on_target"].tolist()
    ([1.0], [0.0])
    """
    dc, tc = _pair(draft_correct, target_correct)
    n = len(dc)
    order = target_order(keep_scores)
    keys = ("overall", "draft_on_draft", "target_on_target", "target_on_draft", "draft_on_target")
    out = {key: [] for key in keys}
    for p in np.asarray(p_t_grid, dtype=float):
        k = n_routed(float(p), n, rounding=rounding)
        tgt, kept = order[:k], order[k:]
        out["overall"].append((tc[tgt].sum() + dc[kept].sum()) / n)
        out["draft_on_draft"].append(_mean_or_nan(dc[kept]))
        out["target_on_target"].append(_mean_or_nan(tc[tgt]))
        out["target_on_draft"].append(_mean_or_nan(tc[kept]))
        out["draft_on_target"].append(_mean_or_nan(dc[tgt]))
    return {key: np.array(v, dtype=float) for key, v in out.items()}


def _mean_or_nan(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def splits_of(instances) -> list[str]:
    """Distinct non-empty ``split`` values, in first-seen order."""
    seen: dict[str, None] = {}
    for inst in as_instances(instances):
        if inst.split is not None:
            seen.setdefault(str(inst.split), None)
    return list(seen)


def per_split_curves(instances, signal: str, *, p_t_grid=DEFAULT_GRID, rounding: str = "round") -> dict:
    """Routing curve of one signal within each ``split`` (e.g. Fig. 8(f)'s validation vs test,
    or per-subset views of Fig. 12); instances without a split are left out.  ``{}`` when no
    instance has a split.

    >>> recs = [{"id": i, "split": s, "draft_correct": 1, "target_correct": 0, "scores": {"x": 0}}
    ...         for i, s in enumerate("aab")]
    >>> {k: v["routing"].tolist() for k, v in per_split_curves(recs, "x", p_t_grid=[0, 1]).items()}
    {'a': [1.0, 0.0], 'b': [1.0, 0.0]}
    """
    insts = as_instances(instances)
    out = {}
    for split in splits_of(insts):
        sub = [i for i in insts if i.split is not None and str(i.split) == split]
        dc, tc = correctness(sub)
        out[split] = {
            "n": len(sub),
            "routing": routing_curve(
                signal_values(sub, signal), dc, tc, p_t_grid=p_t_grid, rounding=rounding
            ),
            "random": random_curve_expected(dc, tc, p_t_grid=p_t_grid, rounding=rounding),
        }
    return out


# ---- high rating but wrong (A.7, App. D) ----------------------------------------------------
def mislabel_candidates(
    instances, *, min_rating: float = 0.9, rating: str = "d", both: bool = True
) -> list[dict]:
    """Instances rated at least ``min_rating`` yet judged wrong (A.7's "high-score-but-wrong
    filter": possible annotation errors or training gaps).  ``rating`` names the draft rating
    (``d`` or any signal).  With ``both`` and a known target rating ``t``, the target must also be
    rated ``>= min_rating`` and wrong (A.7: "both ... ratings assign high confidence yet produce
    incorrect answers"); instances without ``t`` are judged on the draft side only.  Sorted by
    rating, highest first, stable by position.

    >>> recs = [{"id": "a", "draft_correct": 0, "target_correct": 0, "d": 0.92},
    ...         {"id": "b", "draft_correct": 0, "target_correct": 1, "d": 0.99},
    ...         {"id": "c", "draft_correct": 1, "target_correct": 0, "d": 0.99}]
    >>> [c["id"] for c in mislabel_candidates(recs)]
    ['b', 'a']
    """
    picked = [i for i in as_instances(instances) if _high_but_wrong(i, min_rating, rating, both)]
    picked.sort(key=lambda i: -i.signal(rating))  # list.sort is stable
    return [
        {
            "id": i.id,
            "split": i.split,
            "rating": i.signal(rating),
            "d": i.d,
            "t": i.t,
            "draft_correct": i.draft_correct,
            "target_correct": i.target_correct,
        }
        for i in picked
    ]


def _high_but_wrong(inst: Instance, min_rating: float, rating: str, both: bool) -> bool:
    r = inst.signal(rating)
    if math.isnan(r) or r < min_rating or inst.draft_correct:
        return False
    if both and inst.t is not None and not math.isnan(float(inst.t)):
        return float(inst.t) >= min_rating and not inst.target_correct
    return True
