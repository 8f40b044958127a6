"""M3CoT test: loader (JSONL / JSON / parquet) and the official ``judge_answer``.

Rows follow LightChen233/M3CoT's data files: ``id``, ``question``, ``choices`` (list),
``answer`` (a letter, or an index), ``context``, ``image`` (a path, or an image struct in the
Hugging Face parquet), ``domain``, ``topic``, ``category``, ``split``.

The model input follows ``utils/data.py`` ``save_as_m3it_format``: ``[Context]`` (when
non-empty), ``[Question]`` and ``[Choices]`` with ``(A) ...`` lines.  Scoring reproduces
``utils/metric.py`` ``judge_answer``; the only change is that option letters run past F
(the official ``ALPHA_MAP`` stops at F and would raise on a 7th choice).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from prp.core.data import LoadResult, Record
from prp.eval.bench.records import ScoreResult, attach_image, group_counts, read_rows

LETTERS = [chr(ord("A") + i) for i in range(26)]
_LETTER_IN_PARENS = re.compile(r"\(([A-Za-z])\)")


def build_question(row: dict) -> str:
    """The m3it-format input of one problem.

    >>> print(build_question({"context": "", "question": "Which is red?", "choices": ["sky", "rose"]}))
    [Question]
    Which is red?
    [Choices]
    (A) sky
    (B) rose
    """
    text = f"[Context]\n{row['context']}\n\n" if row.get("context") else ""
    text += "[Question]\n" + row["question"] + "\n[Choices]\n"
    text += "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(row["choices"]))
    return text


def load_m3cot(path: str, *, image_root: str | None = None, split: str | None = "test",
               require_images: bool = True) -> LoadResult:
    """Records of an M3CoT file; rows of another ``split`` (when the row says) are left out."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    result = LoadResult(records=[])
    for n, row in enumerate(read_rows(path)):
        rid = row.get("id", n) if isinstance(row, dict) else n
        if isinstance(row, dict) and split is not None and row.get("split") not in (None, split):
            continue  # another split of a combined file: not malformed, just not asked for
        choices = row.get("choices") if isinstance(row, dict) else None
        answer = row.get("answer") if isinstance(row, dict) else None
        if isinstance(answer, int) and not isinstance(answer, bool) and choices and 0 <= answer < len(choices):
            answer = LETTERS[answer]  # judge_answer accepts an index the same way
        if (
            not isinstance(row, dict)
            or row.get("id") is None
            or not isinstance(row.get("question"), str)
            or not isinstance(choices, list)
            or not choices
            or not isinstance(answer, str)
            or answer.strip("() ").upper() not in LETTERS[: len(choices)]
        ):
            result.skip("malformed", rid, "needs id, question, choices and an answer letter among them")
            continue
        image, keep = attach_image(result, row.get("image_path") or row.get("image"), root, str(rid), require_images)
        if keep:
            result.records.append(
                Record(id=str(row["id"]), question=build_question(row), image=image,
                       answer=answer.strip("() ").upper(), choices=[str(c) for c in choices],
                       split=str(row.get("split") or split or ""),
                       meta={k: row.get(k) for k in ("domain", "topic", "category")})
            )
    result.log_summary("m3cot")
    return result


def judge_answer(text: str | None, choices: list[str], answer: str | int) -> bool:
    """utils/metric.py ``judge_answer``: is the option the text picks the gold letter?

    In order: the last "(x)" letter (text after "[Answer]" only, if present); else the last
    choice whose text occurs in it (case-insensitive); else the last option letter standing
    alone as a word (upper case, then lower case); else no pick (wrong).

    >>> judge_answer("So the answer is (b).", ["1", "2"], "B"), judge_answer("B", ["1", "2"], "B")
    (True, True)
    """
    if text is None:
        return False
    if isinstance(answer, int):
        answer = LETTERS[answer]
    if "[Answer]" in text:
        text = text.split("[Answer]")[-1].split("[Rationale]")[0].split("[Context]")[0]
    letters = _LETTER_IN_PARENS.findall(text)
    if letters:
        return letters[-1].upper() == answer
    picked = [LETTERS[i] for i, c in enumerate(choices) if c.lower() in text.lower()]
    if not picked:
        words = re.sub(r"[\n.,!?]", " ", text).split(" ")  # the official split keeps empty words
        picked = [LETTERS[i] for i in range(len(choices)) if LETTERS[i] in words]
        if not picked:
            picked = [LETTERS[i] for i in range(len(choices)) if LETTERS[i].lower() in words]
    return bool(picked) and picked[-1] == answer


def score_m3cot(records: Iterable[Record], predictions: Mapping[str, str | None]) -> ScoreResult:
    """Accuracy by judge_answer; ``per_group`` by domain.  A missing prediction is wrong."""
    records = list(records)
    per_pid = {r.id: judge_answer(predictions.get(r.id), r.choices, r.answer) for r in records}
    per_group = group_counts(per_pid, {r.id: str(r.meta.get("domain")) for r in records})
    return ScoreResult(correct=sum(per_pid.values()), total=len(per_pid), per_pid=per_pid, per_group=per_group)
