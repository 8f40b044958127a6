"""MathVerse testmini: loader and a rule-based scorer.

Rows follow ZrrSkywalker/MathVerse's ``testmini.json`` (and its Hugging Face parquet):
``sample_index``, ``problem_index``, ``problem_version``, ``question``, ``image``, ``answer``,
``question_type`` ("multi-choice" / "free-form"), ``query_wo`` (the prompt without CoT, which we
feed), ``query_cot``, ``question_for_eval``, ``metadata``.  ``problem_version`` (Text Dominant,
Text Lite, Vision Intensive, Vision Dominant, Vision Only; Text Only in its own file) goes to
``split`` so each version is reported apart.  The options listed after "Choices:" in the
query ("A:40°") become ``choices`` (none in Vision Only, where they are in the image).

Deviation from the official evaluation (documented in docs/scoring.md): MathVerse extracts and
judges answers with GPT-4 (``evaluation/extract_answer_s1.py``, ``score_answer_s2.py``, prompt
``demo_prompt_score``: consistent only on a complete match or, for free-form questions, the same
meaning, "0.5m and 50cm").  Here a rule stands in for the judge:

- multi-choice: a choice letter counts only as the whole answer -- "B", "B.", "(B)", "Option B",
  "**B**", ``\\boxed{B}``, "$B$" -- or as a letter introducing its option ("(B) 60°", "B: 60°");
  never the article of "a triangle"; "A and B" names two letters, which matches only a gold of
  those two ("C\\nD" golds exist).  An answer naming no letter but the text of exactly one
  option ("60°", the judge prompt's own example) picks that option.
- free-form (and a multi-choice gold that is no letter): :func:`prp.eval.bench.mathform.same_answer`
  -- unicode and LaTeX forms, units converted, percentages as values, part counts, math-verify.

Numbers are therefore comparable to other rule-based MathVerse scores, not to the published
GPT-judged ones.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

from prp.core.data import LoadResult, Record
from prp.eval.bench.mathform import same_answer
from prp.eval.bench.records import ScoreResult, attach_image, group_counts, read_rows

log = logging.getLogger(__name__)

# The whole answer is one letter: "B", "(B)", "B)", "B:", "Option B", "choice (b)" (after unwrapping).
_WHOLE_LETTER = re.compile(r"(?:(?:option|choice|answer)\s*:?\s*)?(?:\(\s*([A-Za-z])\s*\)|([A-Za-z]))\s*[.:)]?",
                           re.IGNORECASE)
# A letter introducing its option's text: "(B) 60°", "(b) 60°", "B. 60°", "B: 60°", "B) 60°".
_LETTER_THEN_TEXT = re.compile(r"(?:\(\s*([A-Za-z])\s*\)|([A-Z])\s*[.:)])\s*(\S.*)", re.DOTALL)
_LIST_SEPARATOR = re.compile(r"\s*(?:,|;|&|/|\band\b|\bor\b|\s)\s*", re.IGNORECASE)
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\)?\s*[:.)：]\s*(.*?)\s*$")


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
                Record(id=str(row["sample_index"]), question=row["query_wo"], image=image,
                       answer=str(row["answer"]), choices=parse_choices(row["query_wo"]),
                       split=str(row["problem_version"]),
                       meta={"question_type": row["question_type"],
                             "problem_index": row.get("problem_index"),
                             "question_for_eval": row.get("question_for_eval"),
                             "metadata": row.get("metadata") or {}})
            )
    result.log_summary("mathverse")
    return result


def parse_choices(question: str) -> list[str] | None:
    """The option texts listed after "Choices:" (A, B, C ... in order), or None.

    >>> parse_choices("Question: Find x.\\nChoices:\\nA:40°\\nB:60°")
    ['40°', '60°']
    """
    _, found, tail = question.partition("Choices:")
    if not found:
        return None
    choices = []
    for line in tail.strip().splitlines():
        m = _OPTION_LINE.match(line)
        if not m or ord(m.group(1)) - ord("A") != len(choices):
            break  # options run A, B, C ... without gaps; anything else ends the list
        choices.append(m.group(2))
    return choices or None


def _unwrap(text: str) -> str:
    text = text.replace("**", "").replace("$", "").strip()
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"^\\(?:boxed|text|mathrm|textbf|mathbf)\s*\{(.*)\}$", r"\1", text, flags=re.DOTALL).strip()
        text = text.rstrip(".").strip()
    return text


def choice_letters(text: str | None) -> frozenset[str] | None:
    """The option letters an answer names (upper case), or None when it names none.

    >>> sorted(choice_letters("**B**")), sorted(choice_letters("\\\\boxed{B}")), sorted(choice_letters("Option B"))
    (['B'], ['B'], ['B'])
    >>> sorted(choice_letters("(A) 30°")), sorted(choice_letters("A and B")), choice_letters("a triangle")
    (['A'], ['A', 'B'], None)
    """
    if text is None:
        return None
    text = _unwrap(text)
    whole = _WHOLE_LETTER.fullmatch(text)
    if whole:
        return frozenset({(whole.group(1) or whole.group(2)).upper()})
    tokens = [t for t in _LIST_SEPARATOR.split(text) if t]
    letters = [_WHOLE_LETTER.fullmatch(t) for t in tokens]
    if len(tokens) > 1 and all(letters):
        return frozenset((m.group(1) or m.group(2)).upper() for m in letters)
    lead = _LETTER_THEN_TEXT.fullmatch(text)
    if lead and not re.match(r"(?:and|or|&|,)\b", lead.group(3), re.IGNORECASE):
        return frozenset({(lead.group(1) or lead.group(2)).upper()})
    return None


def choice_letter(text: str | None) -> str | None:
    """The single option letter an answer names; None for none or several.

    >>> choice_letter("(b) 12"), choice_letter("C."), choice_letter("Because"), choice_letter("$D$")
    ('B', 'C', None, 'D')
    """
    letters = choice_letters(text)
    return next(iter(letters)) if letters and len(letters) == 1 else None


def free_form_correct(prediction: str, answer: str) -> bool:
    """The free-form rule, :func:`prp.eval.bench.mathform.same_answer`."""
    return same_answer(prediction, answer)


def _picked_by_text(prediction: str, choices: list[str]) -> frozenset[str] | None:
    """The one option whose text the answer states, as a letter set; None if not exactly one."""
    picked = [chr(ord("A") + i) for i, choice in enumerate(choices) if choice and same_answer(prediction, choice)]
    return frozenset(picked) if len(picked) == 1 else None


def is_correct(prediction: str | None, answer: str, question_type: str, choices: list[str] | None = None) -> bool:
    """One item by the module's rule; a missing or empty prediction is wrong.

    >>> is_correct("(A) 30°", "A", "multi-choice"), is_correct("0.5", "\\\\frac{1}{2}", "free-form")
    (True, True)
    >>> is_correct("a triangle", "A", "multi-choice"), is_correct("60°", "B", "multi-choice", ["40°", "60°"])
    (False, True)
    """
    if prediction is None or not prediction.strip():
        return False
    if question_type == "multi-choice":
        gold = choice_letters(answer)
        if gold is not None:
            named = choice_letters(prediction)
            if named is None and choices:
                named = _picked_by_text(prediction, choices)
            return named == gold
        # a gold that is no letter ("False", "090° T"): compare texts (a named option by its text)
        letter = choice_letter(prediction)
        if letter and choices and ord(letter) - ord("A") < len(choices):
            prediction = choices[ord(letter) - ord("A")]
    return free_form_correct(prediction, answer)


def score_mathverse(records: Iterable[Record], predictions: Mapping[str, str | None]) -> ScoreResult:
    """Accuracy; ``per_group`` by problem version.  ``predictions``: id -> extracted answer."""
    records = list(records)
    per_pid = {r.id: is_correct(predictions.get(r.id), r.answer, r.meta["question_type"], r.choices)
               for r in records}
    per_group = group_counts(per_pid, {r.id: r.split for r in records})
    return ScoreResult(correct=sum(per_pid.values()), total=len(per_pid), per_pid=per_pid, per_group=per_group)
