"""How well a rating ranks correctness: Spearman "of Rank & Acc." (Tab. 1, Sec. 5.2), score bins
(Fig. 4, 9-11) and the high-rating-but-wrong filter (A.7, App. D)."""

from __future__ import annotations

import math

import numpy as np

from prp.eval.curves import nan_as_lowest
from prp.eval.table import Instance, as_instances

_EPS = 1e-9


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
    acc = [float(h / k) if k else math.nan for h, k in zip(hits, count, strict=True)]
    return {
        "edges": np.linspace(lo, hi, bins + 1).tolist(),
        "count": count.tolist(),
        "accuracy": acc,
        "n_nan": int((~ok).sum()),
    }


# ---- high rating but wrong (A.7, App. D) ----------------------------------------------------
def mislabel_candidates(instances, *, min_rating: float = 0.9, rating: str = "d", both: bool = True) -> list[dict]:
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


def mislabel_rule(min_rating: float = 0.9, rating: str = "d", *, both: bool = True) -> str:
    """The whole of `mislabel_candidates`' filter in words, for the report's heading (a heading naming
    only the rating hid that a wrong row with d = 0.98 is left out when its t is low or the target right).

    >>> mislabel_rule()
    'd >= 0.9 and the draft wrong, and where t is known also t >= 0.9 and the target wrong'
    """
    text = f"{rating} >= {min_rating:g} and the draft wrong"
    return text + (f", and where t is known also t >= {min_rating:g} and the target wrong" if both else "")


def _high_but_wrong(inst: Instance, min_rating: float, rating: str, both: bool) -> bool:
    r = inst.signal(rating)
    if math.isnan(r) or r < min_rating or inst.draft_correct:
        return False
    if both and inst.t is not None and not math.isnan(float(inst.t)):
        return float(inst.t) >= min_rating and not inst.target_correct
    return True
