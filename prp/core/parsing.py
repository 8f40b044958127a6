"""Parse a completion into its ratings, answer and format verdict (Alg. 1 l.6, Alg. 2 l.14).

Grammars (paper Table 4), whitespace allowed between the tagged parts:
    drl:  <confidence>d</confidence><think>...</think><answer>...</answer>
    jrl:  <target>t</target><confidence>d</confidence><think>...</think><answer>...</answer>
    grpo: <think>...</think><answer>...</answer>          (the plain GRPO / target format)

Exactly one structure earns the format reward: no part may repeat, and no structural tag
(`<think>`, `</answer>`, `<confidence>`, ...) may appear inside another part's text.

The ratings are read wherever their tags appear, even when the grammar is broken, so a
rating can still be rewarded or penalised (Eq. 4 gives -1 to a malformed one).  The
character span of each *attempted* rating is kept so its tokens carry the rating advantage
(task-specific optimisation, Eq. 7-8) and so Dynamic Score Substitution can rewrite it.
The span of the first `<tag>` of a rating kind, by what follows it:

    <confidence> 0.87 </confidence>   closed     the stripped content "0.87" (also when it is
                                                 malformed or out of range: "high", "1.7")
    <confidence></confidence>         empty      both tags, "<confidence></confidence>"
    <confidence>0.8<think>...         unclosed   the first word after the tag, up to whitespace
                                                 or "<": "0.8"
    <confidence><think>...            nothing    the opening tag "<confidence>"
    (no <confidence> at all)          missing    None: no token carries A_d (the format reward
                                                 still scores the completion 0)
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from prp.core.answers import ANSWER_TAG

Span = tuple[int, int]  # [start, end) character offsets into the completion text

# A well-formed score: a plain ASCII decimal such as 0.87, 1, .5 or 1.00 (no sign, no exponent).
_SCORE_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
# After a rating's opening tag: its content up to the closing tag (no "<" inside), or else
# (unclosed) the first word, up to whitespace or the next tag.
_CLOSED = {tag: re.compile(rf"([^<]*)</{tag}>") for tag in ("target", "confidence")}
_FIRST_WORD = re.compile(r"\s*([^\s<]+)")

# Free text: any characters, but never a structural tag, so that a second think/answer block
# (or a rating inside the reasoning) cannot hide inside the first one's `.*`.
_FREE = r"(?:(?!</?(?:think|answer|confidence|target)>).)*"
_THINK_ANSWER = rf"\s*<think>{_FREE}</think>\s*<answer>{_FREE}</answer>\s*"
_RATING = r"\s*<{tag}>[^<]*</{tag}>"
_GRAMMARS = {
    "grpo": re.compile(_THINK_ANSWER, re.DOTALL),
    "drl": re.compile(_RATING.format(tag="confidence") + _THINK_ANSWER, re.DOTALL),
    "jrl": re.compile(
        _RATING.format(tag="target") + _RATING.format(tag="confidence") + _THINK_ANSWER, re.DOTALL
    ),
}
MODES = tuple(_GRAMMARS)


@dataclass
class ParsedCompletion:
    """What one completion says.  Scores are floats as written (1.7 stays 1.7; Eq. 4 rejects it)."""

    confidence: float | None  # d: None when the tag is absent or its content is not a number
    target: float | None  # t: None likewise (always None in drl / grpo mode)
    answer: str | None  # stripped text of the last <answer>...</answer>
    format_ok: bool  # the whole completion follows the mode's grammar
    confidence_span: Span | None  # characters of the score string inside <confidence>
    target_span: Span | None  # characters of the score string inside <target>


def _check_mode(mode: str) -> None:
    if mode not in _GRAMMARS:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def _read_score(text: str, tag: str) -> tuple[float | None, Span | None]:
    """The first <tag>: (value, or None if malformed or unclosed; span of the attempted rating).

    The span rule is the module docstring's table.
    """
    opening = f"<{tag}>"
    start = text.find(opening)
    if start < 0:
        return None, None  # missing
    after = start + len(opening)
    closed = _CLOSED[tag].match(text, after)
    if closed is None:  # unclosed: Eq. 4 "otherwise" (-1), carried by what was written
        word = _FIRST_WORD.match(text, after)
        return None, (word.span(1) if word else (start, after))
    raw = closed.group(1)
    stripped = raw.strip()
    if not stripped:  # empty rating: the tags themselves are the attempt
        return None, (start, closed.end())
    lead = len(raw) - len(raw.lstrip())
    span = (after + lead, after + lead + len(stripped))
    if not _SCORE_RE.fullmatch(stripped):
        return None, span
    value = float(stripped)
    return (value if math.isfinite(value) else None), span


def parse_completion(text: str, mode: str) -> ParsedCompletion:
    """Parse one completion.  Never raises on any text.

    >>> p = parse_completion("<confidence>0.87</confidence><think>2+3=5</think><answer>$5$</answer>", "drl")
    >>> p.confidence, p.answer, p.format_ok, p.confidence_span
    (0.87, '$5$', True, (12, 16))
    """
    _check_mode(mode)
    confidence, confidence_span = _read_score(text, "confidence") if mode != "grpo" else (None, None)
    target, target_span = _read_score(text, "target") if mode == "jrl" else (None, None)
    answers = ANSWER_TAG.findall(text)
    answer = answers[-1].strip() if answers else None
    format_ok = _GRAMMARS[mode].fullmatch(text) is not None
    return ParsedCompletion(
        confidence=confidence,
        target=target,
        answer=answer,
        format_ok=format_ok,
        confidence_span=confidence_span,
        target_span=target_span,
    )


def token_char_offsets(token_ids: Sequence[int], tokenizer, *, upto_char: int | None = None) -> list[Span]:
    """Character span of each token in `tokenizer.decode(token_ids, skip_special_tokens=True)`.

    Works for any HF tokenizer by decoding growing prefixes (a token that ends inside a
    multi-byte character shows as one replacement character until the character completes,
    which keeps the lengths monotone).  Stops once `upto_char` is covered: ratings sit at
    the start of a completion, so only a few dozen prefixes are decoded.
    """
    offsets: list[Span] = []
    previous_len = 0
    ids = list(token_ids)
    for i in range(len(ids)):
        current_len = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
        offsets.append((previous_len, max(previous_len, current_len)))
        previous_len = max(previous_len, current_len)
        if upto_char is not None and previous_len >= upto_char:
            break
    return offsets


def span_token_indices(token_ids: Sequence[int], tokenizer, span: Span | None) -> list[int]:
    """Indices of the completion tokens that overlap a character span.

    A token that overlaps the span at all belongs to it, so a score glued to its tag
    ("<confidence>0.8" merged into one token) still gets the rating advantage.

    >>> # ids of "<confidence>", "0", ".", "8", "</confidence>" with span (12, 15) -> [1, 2, 3]
    """
    if span is None or span[1] <= span[0]:
        return []
    start, end = span
    offsets = token_char_offsets(token_ids, tokenizer, upto_char=end)
    return [i for i, (tok_start, tok_end) in enumerate(offsets) if tok_start < end and tok_end > start]
