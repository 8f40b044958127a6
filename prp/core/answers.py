"""Extract the final answer from one of our models' completions.

:func:`extract_answer` (math benchmarks, training rewards, routing), first match wins:
1. the text inside the last complete ``<answer>...</answer>`` (the PRP output grammar, Table 4);
2. otherwise the content of the last ``\\boxed{...}`` (balanced braces);
3. otherwise what follows the last "the (final) answer is" / "answer:" up to the end of line or
   sentence;
4. otherwise the last number in the text.
The result is stripped of surrounding whitespace, math delimiters (``$...$``, ``$$...$$``,
``\\(...\\)``, ``\\[...\\]``), markdown bold and trailing periods, and unwrapped from a lone
``\\boxed{}``.  Empty or nothing found -> None (scorers count None as wrong).

:func:`extract_short_answer` (short-answer benchmarks: ChartQA, DocVQA, M3CoT) keeps steps 1-3
and replaces step 4: with no tag, box or "the answer is", the whole stripped completion is the
answer ("The date is 12/15/89" stays whole; its last number "89" would be a different answer).
It also keeps a trailing "." that belongs to the answer: an abbreviation made of dotted letters
("U.S.", "a.m.", "Ph.D.") or a common one ("Inc.", "Co.", "Ltd.", "Jr.", ... :data:`ABBREVIATIONS`);
any other final period ends a sentence and goes.
"""
from __future__ import annotations

import re

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # also prp.core.parsing's
_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+|correct\s+)?answer\s+is|answer\s*:)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
# A period inside the answer, not ending a sentence: "U.S.", "a.m.", "Ph.D.", or a known word.
_DOTTED = re.compile(r"(?:[^\W\d_]{1,3}\.){2,}")
# ("No." is left out: as a whole answer it is the word "No" ending a sentence.)
ABBREVIATIONS = frozenset({
    "inc", "co", "corp", "ltd", "llc", "jr", "sr", "st", "dr", "mr", "mrs", "ms", "prof", "bros", "etc", "vs",
    "dept", "univ", "assn", "ave", "blvd",
})


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, matching nested braces (a regex cannot)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: no usable box


def ends_with_abbreviation(text: str) -> bool:
    """Whether the final "." of ``text`` belongs to an abbreviation (so is part of the answer).

    >>> ends_with_abbreviation("U.S."), ends_with_abbreviation("Acme Inc."), ends_with_abbreviation("Mexico.")
    (True, True, False)
    """
    if not text.endswith("."):
        return False
    last = text.split()[-1] if text.split() else ""
    last = last.lstrip("([{\"'")
    return bool(_DOTTED.fullmatch(last)) or last[:-1].lower() in ABBREVIATIONS


def clean_answer(text: str, *, keep_abbreviations: bool = False) -> str | None:
    """Strip delimiters, bold, trailing periods and a lone \\boxed{}; None if nothing is left.

    ``keep_abbreviations`` (short answers) keeps a final period that :func:`ends_with_abbreviation`.

    >>> clean_answer(" $\\\\frac{1}{2}$. "), clean_answer("**B**"), clean_answer("$\\\\boxed{12}$")
    ('\\\\frac{1}{2}', 'B', '12')
    >>> clean_answer("U.S."), clean_answer("U.S.", keep_abbreviations=True)
    ('U.S', 'U.S.')
    """
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        # a sentence's period ("5." is never a decimal answer), unless it is the answer's own
        if text.endswith(".") and not (keep_abbreviations and ends_with_abbreviation(text)):
            text, changed = text[:-1].rstrip(), True
        for left, right in _DELIMS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text, changed = text[len(left) : len(text) - len(right)].strip(), True
                break
        if text.startswith("\\boxed{") and _last_boxed(text) is not None and text.endswith("}"):
            inner = _last_boxed(text)
            if text == "\\boxed{" + inner + "}":
                text, changed = inner.strip(), True
    return text or None


def _first_sentence(text: str, keep_abbreviations: bool) -> str:
    """``text`` up to its first sentence end: a period followed by a space (a decimal point is
    no sentence end; with ``keep_abbreviations``, neither is the period of "U.S. ")."""
    for match in re.finditer(r"\.\s", text):
        head = text[: match.start() + 1]
        if not (keep_abbreviations and ends_with_abbreviation(head)):
            return head[:-1]
    return text


def _stated_answer(text: str, keep_abbreviations: bool) -> str | bool | None:
    """Steps 1-3 of the module's rule; False when none of them applies."""
    tags = ANSWER_TAG.findall(text)
    if tags:
        return clean_answer(tags[-1], keep_abbreviations=keep_abbreviations)
    boxed = _last_boxed(text)
    if boxed is not None:
        return clean_answer(boxed, keep_abbreviations=keep_abbreviations)
    stated = _ANSWER_IS.findall(text)
    if stated:
        return clean_answer(_first_sentence(stated[-1], keep_abbreviations), keep_abbreviations=keep_abbreviations)
    return False


def extract_answer(text: str | None) -> str | None:
    """The final answer of a completion, by the module's rule.

    >>> extract_answer("<think>2+3</think><answer>$5$</answer>")
    '5'
    >>> extract_answer("so x = \\\\boxed{\\\\frac{1}{2}} is it"), extract_answer("The answer is (B).")
    ('\\\\frac{1}{2}', '(B)')
    >>> extract_answer("about 3 apples, then 4.5") , extract_answer("no idea")
    ('4.5', None)
    """
    if not text:
        return None
    stated = _stated_answer(text, keep_abbreviations=False)
    if stated is not False:
        return stated
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def extract_short_answer(text: str | None) -> str | None:
    """The answer of a completion for a short-answer benchmark (ChartQA, DocVQA, M3CoT).

    Tag, box and "the answer is" as :func:`extract_answer`; otherwise the whole completion,
    stripped (never its last number); abbreviation periods are kept.

    >>> extract_short_answer("The date is 12/15/89"), extract_short_answer("<answer>U.S.</answer>")
    ('The date is 12/15/89', 'U.S.')
    >>> extract_short_answer("So the answer is U.S. Steel. Done."), extract_short_answer("  **Mexico**. ")
    ('U.S. Steel', 'Mexico')
    """
    if not text:
        return None
    stated = _stated_answer(text, keep_abbreviations=True)
    return clean_answer(text, keep_abbreviations=True) if stated is False else stated
