"""DocVQA validation: loader for ``val_v1.0.json`` and ANLS.

``val_v1.0.json`` is ``{"dataset_name", "dataset_split", "data": [...]}`` with items
``{"questionId", "question", "image": "documents/....png", "answers": [...], ...}``; image paths
are relative to the JSON's folder.

ANLS follows the RRC evaluation script of DocVQA / InfographicVQA (``evaluate_method``):
both strings lower-cased, stripped and whitespace-collapsed for the edit distance, which is
divided by the longer of the *raw* gold and prediction lengths; the question's score is
``1 - min`` over its gold answers, set to 0 when below the 0.5 threshold (so a normalised
distance of exactly 0.5 still scores 0.5, as in the script).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from prp.eval.bench.levenshtein import levenshtein
from prp.eval.bench.records import AnlsResult, BenchRecord, LoadResult, attach_image, read_rows

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
                BenchRecord(id=str(rid), question=row["question"], image=image, answer=list(answers),
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
    distances = []
    for answer in answers:
        length = max(len(answer), len(prediction))  # raw lengths, as the script (len(answer.upper()))
        dist = levenshtein(_normalize(answer), _normalize(prediction))
        distances.append(0.0 if length == 0 else dist / length)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


def score_docvqa(records: Iterable[BenchRecord], predictions: Mapping[str, str | None]) -> AnlsResult:
    """Mean ANLS over the records; a record with no prediction scores 0."""
    per_pid = {r.id: anls(predictions.get(r.id), r.answer) for r in records}
    total = len(per_pid)
    return AnlsResult(score=sum(per_pid.values()) / total if total else 0.0, total=total, per_pid=per_pid)
