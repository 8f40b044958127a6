"""Extract the final answer from one of our models' completions.

Rule, first match wins:
1. the text inside the last complete ``<answer>...</answer>`` (the PRP output grammar, Table 4);
2. otherwise the content of the last ``\\boxed{...}`` (balanced braces);
3. otherwise what follows the last "the (final) answer is" / "answer:" up to the end of line or
   sentence;
4. otherwise the last number in the text.
The result is stripped of surrounding whitespace, math delimiters (``$...$``, ``$$...$$``,
``\\(...\\)``, ``\\[...\\]``), markdown bold and trailing periods, and unwrapped from a lone
``\\boxed{}``.  Empty or nothing found -> None (scorers count None as wrong).
"""
from __future__ import annotations

import re

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+|correct\s+)?answer\s+is|answer\s*:)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


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


def clean_answer(text: str) -> str | None:
    """Strip delimiters, bold, trailing periods and a lone \\boxed{}; None if nothing is left.

    >>> clean_answer(" $\\\\frac{1}{2}$. "), clean_answer("**B**"), clean_answer("$\\\\boxed{12}$")
    ('\\\\frac{1}{2}', 'B', '12')
    """
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        if text.endswith("."):  # a sentence's period ("5." is never a decimal answer)
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
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return clean_answer(tags[-1])
    boxed = _last_boxed(text)
    if boxed is not None:
        return clean_answer(boxed)
    stated = _ANSWER_IS.findall(text)
    if stated:
        # up to the end of the sentence: a period followed by a space ends it, a decimal point not
        return clean_answer(re.split(r"\.\s", stated[-1], maxsplit=1)[0])
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None
