"""Routing metrics for the evaluation of PRP (Sec. 4.1, 4.4, 5.2-5.4, A.2, A.7; Tab. 1-2): one import for
the whole "table -> metrics" step.  The code lives in short modules, one seam each:

- :mod:`prp.eval.table` the per-instance table (:class:`Instance`) and the shared conventions
  (rounding, ties, NaN, direction, a signal's own answers);
- :mod:`prp.eval.curves` routing / random / oracle / per-portion / per-split curves (Fig. 7, 8(f), 12)
  and AUC / APGR (Tab. 1);
- :mod:`prp.eval.correlation` Spearman "of Rank & Acc." (Tab. 1), score bins (Fig. 4, 9-11) and the
  high-rating-but-wrong filter (A.7);
- :mod:`prp.eval.latency` latency and speedup rows (Tab. 2, Sec. 4.4);
- :func:`n_routed` (the target count ``k``) has its home in :mod:`prp.route.decide`.
"""

from __future__ import annotations

from prp.eval.correlation import (
    average_ranks,
    mislabel_candidates,
    mislabel_rule,
    rating_rank_correlation,
    score_bins,
    spearman,
)
from prp.eval.curves import (
    apgr,
    auc,
    curve_from_order,
    nan_as_lowest,
    oracle_curve,
    oracle_order,
    per_split_curves,
    portion_curves,
    random_curve,
    random_curve_expected,
    routing_curve,
    splits_of,
    target_order,
)
from prp.eval.latency import instance_latency, reference_rows, table2_random_rows, table2_rows
from prp.eval.table import (
    DECISIONS,
    DEFAULT_GRID,
    Instance,
    as_instances,
    correctness,
    for_signal,
    signal_values,
)
from prp.route.decide import ROUNDINGS, n_routed

__all__ = [
    "DECISIONS",
    "DEFAULT_GRID",
    "ROUNDINGS",
    "Instance",
    "apgr",
    "as_instances",
    "auc",
    "average_ranks",
    "correctness",
    "curve_from_order",
    "for_signal",
    "instance_latency",
    "mislabel_candidates",
    "mislabel_rule",
    "n_routed",
    "nan_as_lowest",
    "oracle_curve",
    "oracle_order",
    "per_split_curves",
    "portion_curves",
    "random_curve",
    "random_curve_expected",
    "rating_rank_correlation",
    "reference_rows",
    "routing_curve",
    "score_bins",
    "signal_values",
    "spearman",
    "splits_of",
    "table2_random_rows",
    "table2_rows",
    "target_order",
]
