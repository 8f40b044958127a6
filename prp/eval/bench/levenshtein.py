"""Levenshtein (edit) distance, used by MathVista's choice matching and DocVQA's ANLS.

Same value as ``Levenshtein.distance`` of the python-Levenshtein package that both official
scripts import (unit cost for insertion, deletion and substitution); written here so the
project needs no extra dependency.
"""
from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Edit distance between two strings.

    >>> levenshtein("kitten", "sitting"), levenshtein("", "abc"), levenshtein("(b)", "(b)")
    (3, 3, 0)
    """
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as the shorter string
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
