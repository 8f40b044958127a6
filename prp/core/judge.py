"""Is a predicted answer the gold one?  Choice letters and math-verify's symbolic equivalence.

Shared by training (R_acc, prp.train.rewards re-exports these), routing's embedded demo and the
evaluation scorers, which must not import prp.train.
"""
from __future__ import annotations

import logging
import re
import threading

log = logging.getLogger(__name__)

# A multiple-choice gold: "B", "(b)", "B." -> the letter.
CHOICE_GOLD = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*\.?\s*$")
# The first standalone letter of a predicted choice: "(B)", "B", "B. 12", "$B$".
CHOICE_PRED = re.compile(r"(?<![A-Za-z])([A-Za-z])(?![A-Za-z])")


def _as_latex(text: str) -> str:
    text = text.strip()
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def accuracy_reward(answer: str | None, gold: str) -> float | None:
    """R_acc: 1 if the predicted answer matches the gold, else 0; None when the gold is unparsable.

    - A single-letter gold ("B", "(b)") is a choice: the first standalone letter of the answer
      must match, case-insensitively.
    - Otherwise both sides are parsed with math-verify (gold and prediction as LaTeX in $...$)
      and compared symbolically.  A gold that math-verify cannot parse gives None (the trainer
      skips the record's accuracy instead of teaching that every answer is wrong).

    >>> accuracy_reward("(b) 12", "B"), accuracy_reward("0.5", "\\\\frac{1}{2}"), accuracy_reward("3", "4")
    (1.0, 1.0, 0.0)
    """
    choice = CHOICE_GOLD.match(gold)
    if choice:
        if answer is None:
            return 0.0
        predicted = CHOICE_PRED.search(answer.replace("$", " "))
        return 1.0 if predicted and predicted.group(1).upper() == choice.group(1).upper() else 0.0

    same = math_equivalent(answer, gold)
    return None if same is None else float(same)


# A plain integer, optionally in $...$: compared as integers without math-verify, which spends
# ~1.5 ms parsing each (1.5 min to check the golds of a 30k-record train split).  Same verdict.
_PLAIN_INT = re.compile(r"\$?\s*(-?\d{1,18})\s*\$?")


def math_equivalent(answer: str | None, gold: str) -> bool | None:
    """math-verify's symbolic equivalence of two answers (each read as LaTeX in $...$).

    None when the gold itself cannot be parsed; False for a missing or unparsable answer.

    >>> math_equivalent("$046$", "46"), math_equivalent("45", "$46$"), math_equivalent(None, "$46$")
    (True, False, False)
    """
    gold_int = _PLAIN_INT.fullmatch(gold.strip())
    answer_int = _PLAIN_INT.fullmatch(answer.strip()) if answer is not None else None
    if gold_int and (answer_int or answer is None or not answer.strip()):
        return bool(answer_int) and int(answer_int.group(1)) == int(gold_int.group(1))

    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works on the main thread (a server
    # answering from worker threads would crash on it): no timeout elsewhere.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout)
    if not gold_parsed:
        log.debug("unparsable gold answer %r", gold)
        return None
    if answer is None or not answer.strip():
        return False
    predicted = parse(_as_latex(answer), parsing_timeout=timeout)
    return bool(predicted) and bool(verify(gold_parsed, predicted, timeout_seconds=timeout))
