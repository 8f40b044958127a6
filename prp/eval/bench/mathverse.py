"""MathVerse testmini: loader and a rule-based scorer.

Rows follow ZrrSkywalker/MathVerse's ``testmini.json`` (and its Hugging Face parquet):
``sample_index``, ``problem_index``, ``problem_version``, ``question``, ``image``, ``answer``,
``question_type`` ("multi-choice" / "free-form"), ``query_wo`` (the prompt without CoT, which we
feed), ``query_cot``, ``question_for_eval``, ``metadata``.  ``problem_version`` (Text Dominant,
Text Lite, Vision Intensive, Vision Dominant, Vision Only; Text Only in its own file) goes to
``split`` so each version is reported apart.

Deviation from the official evaluation: MathVerse extracts and judges answers with GPT-4
(``evaluation/extract_answer_s1.py``, ``score_answer_s2.py``).  Here multi-choice answers are
compared by option letter, and free-form ones with math-verify (``math_verify.parse`` /
``verify``) after a case- and whitespace-insensitive string check.  Numbers are therefore
comparable to other rule-based MathVerse scores, not to the published GPT-judged ones.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

from prp.eval.bench.records import BenchRecord, LoadResult, ScoreResult, attach_image, group_counts, read_rows
from prp.train.rewards import math_equivalent

log = logging.getLogger(__name__)

# An option letter at the start of an answer: "B", "(B)", "B.", "B)", "B: 12", "(B) 12".
_LEADING_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?(?:[.:)]|\s|$)")


def load_mathverse(path: str, *, image_root: str | None = None, require_images: bool = True) -> LoadResult:
    """Records of a MathVerse file (JSON or parquet); ``question`` is ``query_wo``."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    result = LoadResult(records=[])
    for n, row in enumerate(read_rows(path)):
        rid = row.get("sample_index", n) if isinstance(row, dict) else n
        if not isinstance(row, dict) or any(
            row.get(k) in (None, "") for k in ("sample_index", "query_wo", "answer", "question_type", "problem_version")
        ):
            result.skip("malformed", rid, "needs sample_index, query_wo, answer, question_type, problem_version")
            continue
        image, keep = attach_image(result, row.get("image"), root, str(rid), require_images)
        if keep:
            result.records.append(
                BenchRecord(id=str(row["sample_index"]), question=row["query_wo"], image=image,
                            answer=str(row["answer"]), split=str(row["problem_version"]),
                            meta={"question_type": row["question_type"],
                                  "problem_index": row.get("problem_index"),
                                  "question_for_eval": row.get("question_for_eval"),
                                  "metadata": row.get("metadata") or {}})
            )
    result.log_summary("mathverse")
    return result


def choice_letter(text: str | None) -> str | None:
    """The option letter an answer starts with, upper-cased; None if it names none.

    >>> choice_letter("(b) 12"), choice_letter("C."), choice_letter("Because"), choice_letter("$D$")
    ('B', 'C', None, 'D')
    """
    if text is None:
        return None
    match = _LEADING_LETTER.match(text.replace("$", "").strip())
    return match.group(1).upper() if match else None


def free_form_correct(prediction: str, answer: str) -> bool:
    """String match (case and spaces ignored), else math-verify's symbolic equivalence."""
    if "".join(prediction.lower().split()) == "".join(answer.lower().split()):
        return True
    return bool(math_equivalent(prediction, answer))


def is_correct(prediction: str | None, answer: str, question_type: str) -> bool:
    """One item: multi-choice by letter, free-form by :func:`free_form_correct`; None is wrong.

    >>> is_correct("(A) 30°", "A", "multi-choice"), is_correct("0.5", "\\\\frac{1}{2}", "free-form")
    (True, True)
    """
    if prediction is None or not prediction.strip():
        return False
    if question_type == "multi-choice":
        gold = choice_letter(answer)
        return gold is not None and choice_letter(prediction) == gold
    return free_form_correct(prediction, answer)


def score_mathverse(records: Iterable[BenchRecord], predictions: Mapping[str, str | None]) -> ScoreResult:
    """Accuracy; ``per_group`` by problem version.  ``predictions``: id -> extracted answer."""
    records = list(records)
    per_pid = {r.id: is_correct(predictions.get(r.id), r.answer, r.meta["question_type"]) for r in records}
    per_group = group_counts(per_pid, {r.id: r.split for r in records})
    return ScoreResult(correct=sum(per_pid.values()), total=len(per_pid), per_pid=per_pid, per_group=per_group)
