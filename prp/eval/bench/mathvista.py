"""MathVista testmini: loader, official query text and the official score.

Follows lupantech/MathVista:
- ``evaluation/build_query.py`` ``create_one_query`` (zero-shot, shot_type="solution", no caption
  or OCR: exactly ``data/query.json``): hint line, ``Question: ...`` (+ `` (Unit: u)``), then the
  ``Choices:`` list ``(A) ...``.
- ``evaluation/calculate_score.py``: ``get_most_similar``, ``normalize_extracted_answer`` and
  ``safe_equal``; ``score_output_file`` is its ``main`` loop without pandas.

Every value the official functions return is reproduced, edge cases included: an extraction
is read exactly as stored when the ``extraction`` key exists (an empty or null extraction of a
multi-choice item is mapped to the closest choice by ``get_most_similar``, None as the text
"None"; it is never re-extracted from ``response``); a float problem without a precision is
wrong (``int(None)`` fails in the official ``try``); integers truncate (``int(float(x))``).

Deviations, only where the official script has no value to give:
- a record without an ``extraction`` key (a KeyError officially) is scored from ``response``:
  our completions go through :func:`prp.core.answers.extract_answer` (the GPT-4 extractor's
  stand-in), and "" when it finds nothing;
- a testmini pid absent from the output file counts as wrong (the official total is the
  output file's length; identical for complete outputs); output pids not in testmini are
  ignored with a warning;
- a free-form item whose answer type is not integer / float / list (none in testmini; an
  UnboundLocalError officially) compares the extraction as it is;
- the gold answer, choices, types and precision come from the testmini file, not from the
  output record as in the script (identical for output files built from testmini, as the
  official ones are; our own outputs need only pid and response);
- a malformed output file is one :class:`~prp.eval.bench.outputs.ScoreFileError` naming it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from prp.core.answers import extract_answer
from prp.core.data import LoadResult, Record
from prp.eval.bench.levenshtein import levenshtein
from prp.eval.bench.outputs import ScoreFileError, read_output_file
from prp.eval.bench.records import (
    ScoreResult,
    as_int_or_none,
    attach_image,
    group_counts,
    read_rows,
)

log = logging.getLogger(__name__)

_HINTS = {  # build_query.py, shot_type == "solution"
    "multi_choice": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
    "at the end.",
    "integer": "Hint: Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end.",
    ("float", 1): "Hint: Please answer the question requiring a floating-point number with one decimal place "
    "and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    ("float", 2): "Hint: Please answer the question requiring a floating-point number with two decimal places "
    "and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
    "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}
_REQUIRED = ("pid", "question", "answer", "question_type", "answer_type")
_LETTER_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")


def build_query(problem: dict) -> str:
    """The official zero-shot query (``data/query.json``) of one testmini problem.

    >>> print(build_query({"question": "Find x", "unit": "cm", "choices": ["1", "2"],
    ...                    "question_type": "multi_choice", "answer_type": "text", "precision": None}))
    Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
    Question: Find x (Unit: cm)
    Choices:
    (A) 1
    (B) 2
    """
    answer_type = problem["answer_type"]
    if problem["question_type"] == "multi_choice":
        hint = _HINTS["multi_choice"]
    elif answer_type == "float":
        hint = _HINTS.get(("float", as_int_or_none(problem.get("precision"))), "")
    else:
        hint = _HINTS.get(answer_type, "")
    question = f"Question: {problem['question']}"
    if problem.get("unit"):
        question += f" (Unit: {problem['unit']})"
    lines = [hint, question]
    if problem.get("choices"):
        lines.append("\n".join(["Choices:"] + [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(problem["choices"])]))
    # create_one_query strips the final query, so a trailing space in the last choice goes too
    return "\n".join(line for line in lines if line).strip()


def load_mathvista(
    path: str,
    *,
    image_root: str | None = None,
    query_path: str | None = None,
    require_images: bool = True,
) -> LoadResult:
    """Read testmini.json (dict keyed by pid) or the Hugging Face parquet (decoded images).

    Images: JSON ``image`` paths are relative to ``image_root`` (default: the file's folder,
    where the official download keeps ``images/``); the parquet's ``decoded_image`` bytes become
    PIL images.  ``question`` is, in order of preference: ``query_path``'s text for the pid
    (``query.json`` style), the row's own ``query`` field (HF copy), or :func:`build_query`.
    """
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    queries = {}
    if query_path:  # {pid: query text}, as the official data/query.json
        with open(query_path, encoding="utf-8") as f:
            queries = json.load(f)
    result = LoadResult(records=[])
    for n, row in enumerate(read_rows(path)):
        rid = row.get("pid", row.get("_key", n)) if isinstance(row, dict) else n
        if not isinstance(row, dict) or any(row.get(k) in (None, "") for k in _REQUIRED):
            result.skip("malformed", rid, "missing a required field")
            continue
        pid = str(row["pid"])
        multi = row["question_type"] == "multi_choice"
        if multi and not row.get("choices"):
            result.skip("malformed", pid, "multi_choice without choices")
            continue
        try:
            precision = as_int_or_none(row.get("precision"))
        except (TypeError, ValueError):
            result.skip("malformed", pid, f"precision {row.get('precision')!r}")
            continue
        image, keep = attach_image(result, row.get("decoded_image") or row.get("image"), root, pid, require_images)
        if not keep:
            continue
        problem = dict(row, precision=precision, choices=list(row["choices"]) if multi else row.get("choices"))
        question = queries.get(pid) or row.get("query") or build_query(problem)
        result.records.append(
            Record(
                id=pid,
                question=question,
                image=image,
                answer=str(row["answer"]),
                choices=problem["choices"],
                split="testmini",
                meta={
                    "question_type": row["question_type"],
                    "answer_type": row["answer_type"],
                    "precision": precision,
                    "unit": row.get("unit"),
                    "metadata": row.get("metadata") or {},
                },
            )
        )
    result.log_summary("mathvista")
    return result


def get_most_similar(prediction: str, choices: list[str]) -> str:
    """The choice with the smallest edit distance to the prediction (the first one on a tie).

    >>> get_most_similar("", ["abc", "de", "fg"])  # an empty extraction: the shortest choice
    'de'
    """
    distances = [levenshtein(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def normalize_extracted_answer(
    extraction: Any, choices: list[str] | None, question_type: str, answer_type: str, precision: Any,
    ignore_empty_extractions: bool = False,
) -> str | None:
    """calculate_score.py's normalisation of an extracted answer to the gold's form.

    - multi_choice: the text (``str()`` of a non-string, so None is "None") is stripped; the
      first "(x)" letter, upper-cased, selects its choice; a bare option letter too; anything
      else -- the empty string included -- maps to the closest choice by edit distance
      (``ignore_empty_extractions``, off by default as in the script, makes "" None instead).
      So for pid 168 (choices "(c)", "(a)", "(e)", "(d)", "(b)") the extraction "(b)" means
      option B, i.e. the text "(a)", exactly as the official script scores it.
    - integer: ``str(int(float(x)))`` ("2.7" -> "2"); float: ``str(round(float(x), int(precision)))``
      (a missing precision fails: None); list: ``str(x)``; any exception -> None (wrong).
      Other answer types pass through (the script has no value for them).

    >>> normalize_extracted_answer("2.0", None, "free_form", "integer", None)
    '2'
    >>> normalize_extracted_answer("(C) 107", ["97", "102", "107", "122"], "multi_choice", "text", None)
    '107'
    >>> normalize_extracted_answer("1.25", None, "free_form", "float", None) is None
    True
    """
    if question_type == "multi_choice":
        if isinstance(extraction, str):
            extraction = extraction.strip()
        else:
            try:
                extraction = str(extraction)
            except Exception:  # the official code maps an unprintable value to ""
                extraction = ""
        if ignore_empty_extractions and not extraction:
            return None
        letters = _LETTER_IN_PARENS.findall(extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        return get_most_similar(extraction, choices)
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            # int(): HF stores precision as a float (2.0); None or NaN fails, as officially
            return str(round(float(extraction), int(precision)))
        if answer_type == "list":
            return str(extraction)
    except Exception:  # the official try/except catches everything
        return None
    return extraction


def safe_equal(prediction: Any, answer: Any) -> bool:
    """Plain equality, False instead of an exception (calculate_score.py ``safe_equal``)."""
    try:
        return bool(prediction == answer)
    except Exception:  # the official safe_equal swallows any comparison error
        return False


def _read_gold(testmini_path: str) -> dict[str, dict]:
    gold = {}
    for n, row in enumerate(read_rows(testmini_path)):
        if isinstance(row, dict) and row.get("pid") is not None:
            gold[str(row["pid"])] = row
        else:
            log.warning("%s: row %d has no pid; ignored", testmini_path, n)
    return gold


def extraction_of(output: dict) -> Any:
    """The extraction to normalise.

    The ``extraction`` field exactly as stored whenever the key exists ("" and None included:
    the official script normalises those too, never looking at ``response``); only when the
    key is absent, the answer :func:`prp.core.answers.extract_answer` finds in ``response``
    (our models' raw completion: last ``<answer>`` tag, then its fallbacks), "" if none.
    """
    if "extraction" in output:
        return output["extraction"]
    response = output.get("response")
    found = extract_answer(response) if isinstance(response, str) else None
    return "" if found is None else found


def score_problem(output: dict | None, problem: dict) -> bool:
    """One testmini item: normalise the extraction and compare it to the gold answer.

    No output at all (a pid missing from the output file) is wrong.
    """
    if output is None:
        return False
    prediction = normalize_extracted_answer(
        extraction_of(output), problem.get("choices"), problem["question_type"], problem["answer_type"],
        problem.get("precision"),
    )
    return safe_equal(prediction, problem["answer"])


def score_output_file(output_path: str, testmini_path: str) -> ScoreResult:
    """Score an output file ({pid: {"extraction"/"response": ...}}, or a list / JSONL with "pid").

    Raises :class:`~prp.eval.bench.outputs.ScoreFileError` (one line naming the file) when
    either file is missing or malformed; repeated pids are warned about.

    The gold answer, choices, types and precision come from ``testmini_path`` (JSON or parquet),
    not from the output file, so our own outputs need only pid and response.
    ``per_group`` holds (correct, total) per ``question_type`` and ``answer_type`` value.
    """
    outputs = read_output_file(output_path)
    try:
        gold = _read_gold(testmini_path)
    except (OSError, ValueError, ImportError) as err:
        raise ScoreFileError(f"{testmini_path}: cannot read the testmini answers ({err})") from None
    if not gold:
        raise ScoreFileError(f"{testmini_path}: no testmini problems with a pid")
    unknown = sorted(set(outputs) - set(gold))
    if unknown:
        log.warning("%d output pids are not in %s; ignored: %s", len(unknown), testmini_path, unknown[:10])
    missing = [pid for pid in gold if pid not in outputs]
    if missing:
        log.warning("%d testmini pids have no output; counted wrong: %s", len(missing), missing[:10])
    per_pid = {pid: score_problem(outputs.get(pid), problem) for pid, problem in gold.items()}
    per_group = {}
    for key in ("question_type", "answer_type"):
        per_group.update(group_counts(per_pid, {pid: str(p[key]) for pid, p in gold.items()}))
    return ScoreResult(correct=sum(per_pid.values()), total=len(per_pid), per_pid=per_pid, per_group=per_group)
