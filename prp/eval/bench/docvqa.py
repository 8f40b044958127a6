"""DocVQA validation: loader for ``val_v1.0.json`` and ANLS.

``val_v1.0.json`` is ``{"dataset_name", "dataset_split", "data": [...]}`` with items
``{"questionId", "question", "image": "documents/....png", "answers": [...], ...}``; image paths
are relative to the JSON's folder.

ANLS follows the RRC evaluation script of DocVQA / InfographicVQA (``evaluate_method``):
both strings stripped, lower-cased and whitespace-collapsed (``' '.join(x.strip().lower().split())``)
for the edit distance, which is divided by ``max(len(gold.upper()), len(pred.upper()))`` -- the
*raw* strings, upper-cased, so "ß" counts 2 ("SS"), the ligature "ﬁ" 2 ("FI"), "ŉ" 2 ("ʼN");
the question's score is ``1 - min`` over its gold answers, set to 0 when below the 0.5
threshold (a normalised distance of exactly 0.5 still scores 0.5, as in the script).
:func:`anls_correct`, the per-item verdict used for routing, is "the official score is not
zeroed", i.e. ANLS >= 0.5.

Differences from the script, only where it has no value: a missing prediction (None) scores 0
(the script rejects the submission), and a question without gold answers raises ValueError
(``min`` of nothing; the loader skips such rows).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from prp.core.data import LoadResult, Record
from prp.eval.bench.levenshtein import levenshtein
from prp.eval.bench.records import AnlsResult, attach_image, read_rows

ANLS_THRESHOLD = 0.5


def load_docvqa(path: str, *, image_root: str | None = None, require_images: bool = True) -> LoadResult:
    """Records of a DocVQA annotation file; ``answer`` is the list of accepted answers."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    result = LoadResult(records=[])
    for n, row in enumerate(read_rows(path)):
        rid = row.get("questionId", n) if isinstance(row, dict) else n
        answers = row.get("answers") if isinstance(row, dict) else None
        if (
            not isinstance(row, dict)
            or row.get("questionId") is None
            or not isinstance(row.get("question"), str)
            or not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) for a in answers)
        ):
            result.skip("malformed", rid, "needs questionId, question and a non-empty answers list")
            continue
        image, keep = attach_image(result, row.get("image"), root, str(rid), require_images)
        if keep:
            result.records.append(
                Record(id=str(rid), question=row["question"], image=image, answer=list(answers),
                       split=str(row.get("data_split", "val")),
                       meta={k: row[k] for k in ("question_types", "docId") if k in row})
            )
    result.log_summary("docvqa")
    return result


def _normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str | None, answers: list[str], threshold: float = ANLS_THRESHOLD) -> float:
    """The ANLS of one question (no prediction scores 0).

    >>> anls("Dear Dr. Lobo", ["dear dr. lobo"]), anls("12/15/89", ["12/15/88"]), anls("x", ["abc"])
    (1.0, 0.875, 0.0)
    """
    if prediction is None:
        return 0.0
    if not answers:
        raise ValueError("ANLS needs at least one gold answer")
    distances = []
    for answer in answers:
        # the script's length: raw strings after upper(), which can lengthen them ("ß" -> "SS")
        length = max(len(answer.upper()), len(prediction.upper()))
        dist = levenshtein(_normalize(answer), _normalize(prediction))
        distances.append(0.0 if length == 0 else float(dist) / float(length))
    score = 1 - min(distances)
    return 0.0 if score < threshold else score


def anls_correct(prediction: str | None, answers: list[str], threshold: float = ANLS_THRESHOLD) -> bool:
    """One item's verdict: the official score was not zeroed (ANLS >= threshold, 0.5 included).

    >>> anls_correct("abxy", ["abcd"]), anls_correct("axyz", ["abcd"])
    (True, False)
    """
    return anls(prediction, answers, threshold) >= threshold


def score_docvqa(records: Iterable[Record], predictions: Mapping[str, str | None]) -> AnlsResult:
    """Mean ANLS over the records; a record with no prediction scores 0."""
    per_pid = {r.id: anls(predictions.get(r.id), r.answer) for r in records}
    total = len(per_pid)
    return AnlsResult(score=sum(per_pid.values()) / total if total else 0.0, total=total, per_pid=per_pid)
