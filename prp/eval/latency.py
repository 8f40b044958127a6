"""Latency and speedup of routed serving (Tab. 2, Sec. 4.4): per-``p_t`` rows for a signal, the random
row in expectation, and the single-model reference rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prp.eval.curves import target_order
from prp.eval.table import DECISIONS, Instance, as_instances, correctness, for_signal, signal_values
from prp.route.decide import n_routed


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
        np.mean(
            [instance_latency(i, to_target=bool(g), decision=decision) for i, g in zip(insts, to_target, strict=True)]
        )
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
