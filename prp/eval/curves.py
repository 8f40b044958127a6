"""Routing curves (Fig. 7, 12, 8(f)) and their summaries AUC / APGR (Tab. 1), with the random and
oracle references (Sec. 5.1).  Conventions (rounding, ties, NaN): :mod:`prp.eval.table`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from prp.eval.table import DEFAULT_GRID, as_instances, correctness, signal_values
from prp.route.decide import n_routed


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
        curve_from_order(np.random.default_rng(s).permutation(len(dc)), dc, tc, p_t_grid=p_t_grid, rounding=rounding)
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
    share = np.array([n_routed(float(p), n, rounding=rounding) / n for p in np.asarray(p_t_grid, dtype=float)])
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


def oracle_curve(draft_correct, target_correct, *, p_t_grid=DEFAULT_GRID, rounding: str = "round") -> np.ndarray:
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
    """Distinct non-empty ``split`` values: in natural order when every split carries a number (levels 1,
    2, ..., 10, or "level 1" ... "level 5"; the demo's test file starts with levels 1, 5, 4, 2, 3), else in
    first-seen order (e.g. val, test).

    >>> splits_of([{"id": i, "split": f"level {s}", "draft_correct": 1, "target_correct": 0}
    ...            for i, s in enumerate("15423")])
    ['level 1', 'level 2', 'level 3', 'level 4', 'level 5']
    >>> def rows(splits):
    ...     return [{"id": i, "split": s, "draft_correct": 1, "target_correct": 0} for i, s in enumerate(splits)]
    >>> splits_of(rows(["10", "9"])), splits_of(rows(["val", "test"]))
    (['9', '10'], ['val', 'test'])
    """
    seen = list(dict.fromkeys(str(inst.split) for inst in as_instances(instances) if inst.split is not None))

    def natural(text: str) -> list:
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]

    if all(re.search(r"\d", x) for x in seen):
        return sorted(seen, key=natural)
    return seen


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
            "routing": routing_curve(signal_values(sub, signal), dc, tc, p_t_grid=p_t_grid, rounding=rounding),
            "random": random_curve_expected(dc, tc, p_t_grid=p_t_grid, rounding=rounding),
        }
    return out
