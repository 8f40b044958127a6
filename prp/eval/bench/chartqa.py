"""ChartQA test: loader for the official folder layout and relaxed accuracy.

Layout (ChartQA's released dataset): ``test/test_human.json`` and ``test/test_augmented.json``,
lists of ``{"imgname", "query", "label"}``, images in ``test/png/``.

Scoring is google-research/pix2struct ``pix2struct/metrics.py`` ``relaxed_correctness`` (the
rule of the ChartQA paper, end of Sec. 5.1), unchanged: if both strings read as numbers
(``float()``; a string ending in "%" loses its "%" signs and is divided by 100, on either side)
and the gold is non-zero, the prediction is correct within 5% *relative* change; otherwise
(text, or a gold of 0, which would divide by zero) it must equal the gold case-insensitively.
Consequences kept on purpose: nothing is stripped ("Yes " != "yes", though ``float`` itself
ignores spaces around a plain number: " 12 " reads as 12, " 12% " does not read as a number);
"45%" is 0.45, so it never matches "45"; the 5% tolerance is relative to the gold, so it is 5%
of 0.45 for a percentage gold.  Reported per split (human / augmented) and overall.

The only difference from the official function: a missing prediction (None) is wrong instead
of an AttributeError, and a non-string gold is read through ``str()``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from prp.core.data import LoadResult, Record
from prp.eval.bench.records import ScoreResult, attach_image, group_counts, read_rows

SPLITS = ("human", "augmented")


def _test_dir(root: str) -> str:
    """Accept the dataset root (holding test/) or the test/ folder itself."""
    return root if os.path.isfile(os.path.join(root, "test_human.json")) else os.path.join(root, "test")


def load_chartqa(root: str, *, splits: Iterable[str] = SPLITS, require_images: bool = True) -> LoadResult:
    """Records of the chosen test splits; ids are ``"<split>/<index in its file>"``."""
    test_dir = _test_dir(root)
    result = LoadResult(records=[])
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown ChartQA split {split!r}; expected one of {SPLITS}")
        for n, row in enumerate(read_rows(os.path.join(test_dir, f"test_{split}.json"))):
            rid = f"{split}/{n}"
            if not isinstance(row, dict) or any(not isinstance(row.get(k), (str, int, float))
                                                for k in ("imgname", "query", "label")):
                result.skip("malformed", rid, "needs imgname, query and label")
                continue
            image, keep = attach_image(result, os.path.join("png", str(row["imgname"])), test_dir, rid, require_images)
            if keep:
                result.records.append(
                    Record(id=rid, question=str(row["query"]), image=image, answer=str(row["label"]),
                           split=split, meta={"imgname": row["imgname"]})
                )
    result.log_summary("chartqa")
    return result


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0  # both sides get the same treatment
        return float(text)
    except ValueError:  # only ValueError, as pix2struct: float() of a str raises nothing else
        return None


def relaxed_correctness(target: str, prediction: str | None, max_relative_change: float = 0.05) -> bool:
    """pix2struct's relaxed correctness; no whitespace is stripped (as the official code).

    >>> relaxed_correctness("100", "104.9"), relaxed_correctness("100", "106"), relaxed_correctness("Yes", "yes")
    (True, False, True)
    """
    if prediction is None:
        return False
    target = str(target)
    prediction_float, target_float = _to_float(prediction), _to_float(target)
    if prediction_float is not None and target_float:  # a gold of 0 falls through to strings
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def score_chartqa(records: Iterable[Record], predictions: Mapping[str, str | None]) -> ScoreResult:
    """Relaxed accuracy; ``per_group`` has "human" and "augmented", the totals are overall.

    ``predictions`` maps record id to the extracted answer; a missing id counts as wrong.
    """
    records = list(records)
    per_pid = {r.id: relaxed_correctness(r.answer, predictions.get(r.id)) for r in records}
    per_group = group_counts(per_pid, {r.id: r.split for r in records})
    return ScoreResult(correct=sum(per_pid.values()), total=len(per_pid), per_pid=per_pid, per_group=per_group)
