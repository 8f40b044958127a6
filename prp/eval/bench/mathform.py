"""Free-form math answers compared by rule: the stand-in for MathVerse's GPT judge.

MathVerse's judge (``evaluation/prompts.py`` ``demo_prompt_score``) calls two answers consistent
when they match completely, or, for non-multiple-choice questions, when "the meaning is
expressed in the same way, for example, 0.5m and 50cm".  :func:`same_answer` approximates it:

1. both texts are put in one LaTeX form (:func:`to_latex`): unicode maths (``2√3``, ``x²``,
   ``½``, ``12π``, ``30°``, ``×``, ``≤`` ...) becomes LaTeX; ``$``, ``\\(...\\)``, ``\\text{}``,
   ``\\mathrm{}``, ``\\left``/``\\right`` and spacing commands go;
2. equal text (case and spaces ignored) is a match;
3. the answers are split into top-level parts (newline, ";", ",", "and", "or" outside brackets;
   :func:`split_parts`): a different number of parts is no match, so a repeated answer ("5, 5"
   for 5) or a multi-part gold ("-4.9\\n-4.9", "(2, 3)" is one part, "2, 3" two) reduced to
   one number fails; parts match in order, or in any order;
4. per part: a label ("Area =", "Perimeter:", "S.A. =") is dropped (two different labels do
   not match); a trailing unit of length, area, volume, mass or time converts to the other
   side's unit (50 cm = 0.5 m; different dimensions do not match; a unit on one side only is
   ignored; "units", "square units" are no unit); a percentage is its value / 100 on its side
   only (5% = 0.05, never 5); then math-verify decides (``prp.core.judge.math_equivalent``).
"""
from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

from prp.core.judge import math_equivalent

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾ⁿ", "0123456789+-()n")
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_SYMBOLS = {
    "掳": "°",  # "°" read in the wrong code page, as in some MathVerse golds ("35掳")
    "π": "\\pi ", "×": "\\times ", "·": "\\cdot ", "⋅": "\\cdot ", "÷": "\\div ", "−": "-", "–": "-",
    "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "∞": "\\infty ", "∪": "\\cup ", "∩": "\\cap ", "±": "\\pm ",
    "∠": "\\angle ", "′": "'", "θ": "\\theta ", "α": "\\alpha ", "β": "\\beta ", "γ": "\\gamma ",
    "λ": "\\lambda ", "φ": "\\phi ", "ω": "\\omega ", "Δ": "\\Delta ", "，": ",", "：": ":", "％": "%",
}
_WRAPPERS = re.compile(r"\\(?:text|mathrm|textrm|mathbf|textbf|mathit|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad\b|~|\\displaystyle|\\left\b|\\right\b|\\[()\[\]]|\$")


def _unicode_roots(text: str) -> str:
    """√3 -> \\sqrt{3}, √{x} / √(x+1) -> \\sqrt{...}, √x -> \\sqrt{x}; ∛ likewise with [3]."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch not in "√∛":
            out.append(ch)
            i += 1
            continue
        head, i = ("\\sqrt[3]" if ch == "∛" else "\\sqrt"), i + 1
        if i < len(text) and text[i] in "({":
            close, depth, j = {"(": ")", "{": "}"}[text[i]], 0, i
            while j < len(text):
                depth += text[j] == text[i]
                depth -= text[j] == close
                if depth == 0:
                    break
                j += 1
            out.append(f"{head}{{{text[i + 1:j]}}}")
            i = j + 1
        else:
            m = re.match(r"\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+", text[i:])
            arg = m.group(0) if m else ""
            out.append(f"{head}{{{arg}}}")
            i += len(arg)
    return "".join(out)


def _vulgar_fraction(match: re.Match) -> str:
    whole, char = match.group(1), match.group(2)
    parts = unicodedata.decomposition(char).split()  # "<fraction> 0031 2044 0032"
    num = "".join(chr(int(h, 16)) for h in parts[1:parts.index("2044")])
    den = "".join(chr(int(h, 16)) for h in parts[parts.index("2044") + 1:])
    value = Fraction(int(num or 1), int(den)) + int(whole or 0)  # "2½" is a mixed number: 5/2
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


_FRACTION_CHARS = "".join(c for c in map(chr, range(0x2150, 0x2190)) if "<fraction>" in unicodedata.decomposition(c))
_FRACTION_CHARS += "½¼¾"
_VULGAR = re.compile(rf"(\d+)?([{_FRACTION_CHARS}])")


def to_latex(text: str) -> str:
    """One LaTeX spelling of a (possibly unicode) answer; wrappers and spacing removed.

    >>> to_latex("2√3"), to_latex("x²+y²=4"), to_latex("½"), to_latex("$12π$ cm³")
    ('2\\\\sqrt{3}', 'x^{2}+y^{2}=4', '\\\\frac{1}{2}', '12\\\\pi cm^{3}')
    """
    text = unicodedata.normalize("NFC", text)
    for char, latex in _SYMBOLS.items():
        text = text.replace(char, latex)
    text = _VULGAR.sub(_vulgar_fraction, text)
    text = re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾ⁿ]+", lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", text)
    text = re.sub(r"[₀₁₂₃₄₅₆₇₈₉]+", lambda m: "_{" + m.group(0).translate(_SUBSCRIPTS) + "}", text)
    text = _unicode_roots(text)
    text = text.replace("°", "^{\\circ}").replace("\\%", "%").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    previous = None
    while previous != text:  # nested wrappers: \text{\mathrm{cm}}
        previous, text = text, _WRAPPERS.sub(r" \1 ", text)
    text = _SPACING.sub(" ", text)
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "^{\\\\circ}", text)
    lines = (" ".join(line.split()) for line in text.split("\n"))  # newlines separate parts
    return "\n".join(line for line in lines if line).strip().rstrip(".").strip()


def squash(text: str) -> str:
    """Case- and space-insensitive key for plain text equality."""
    return "".join(text.lower().split()).replace("{", "").replace("}", "")


# ---- parts ----------------------------------------------------------------------------------

_SEPARATOR = re.compile(r"\n|;|,|\s+and\s+|\s+or\s+", re.IGNORECASE)


def split_parts(text: str) -> list[str]:
    """Top-level parts of an answer (separators inside (), [], {} do not split).

    A comma between digits followed by exactly three digits is a thousands separator.

    >>> split_parts("2, 3"), split_parts("(2, 3)"), split_parts("x=1 and y=2"), split_parts("1,000")
    (['2', '3'], ['(2, 3)'], ['x=1', 'y=2'], ['1000'])
    """
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif depth == 0:
            m = _SEPARATOR.match(text, i)
            if m:
                parts.append(text[start:i])
                i = start = m.end()
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


# ---- labels, units, percentages -------------------------------------------------------------

_LABEL = re.compile(r"^\s*([A-Za-z][A-Za-z. ]*[A-Za-z.])\s*[=:]\s*(?=\S)")


def strip_label(part: str) -> tuple[str | None, str]:
    """("area", "12") from "Area = 12"; a single-letter name ("x = 2") is maths, not a label."""
    m = _LABEL.match(part)
    if not m or len(re.sub(r"[^A-Za-z]", "", m.group(1))) < 2:
        return None, part
    return " ".join(m.group(1).lower().replace(".", "").split()), part[m.end():].strip()


@dataclass(frozen=True)
class Unit:
    dimension: str  # "length", "area", "volume", "mass", "time", or "none" (units, square units)
    factor: Fraction  # in SI base units of the dimension (m, m^2, m^3, g, s)


_LENGTHS = {"mm": "1/1000", "cm": "1/100", "dm": "1/10", "m": "1", "km": "1000", "in": "127/5000",
            "ft": "381/1250", "yd": "1143/1250", "mi": "201168/125"}
_LENGTH_WORDS = {"millimet": "mm", "centimet": "cm", "decimet": "dm", "kilomet": "km", "met": "m",
                 "inch": "in", "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi"}
_OTHER = {"l": ("volume", "1/1000"), "ml": ("volume", "1/1000000"), "cc": ("volume", "1/1000000"),
          "mg": ("mass", "1/1000"), "g": ("mass", "1"), "kg": ("mass", "1000"),
          "s": ("time", "1"), "sec": ("time", "1"), "min": ("time", "60"), "h": ("time", "3600"),
          "hr": ("time", "3600")}
_OTHER_WORDS = {"millilit": "ml", "lit": "l", "milligram": "mg", "kilogram": "kg", "gram": "g",
                "second": "s", "minute": "min", "hour": "h"}
_UNIT_WORD = (r"(?:millimet|centimet|decimet|kilomet|met)(?:er|re)s?|inch(?:es)?|foot|feet|yards?|miles?"
              r"|(?:millilit|lit)(?:er|re)s?|(?:milli|kilo)?grams?|seconds?|minutes?|hours?|units?")
_UNIT_SYMBOL = r"mm|cm|dm|km|m|in|ft|yd|mi|mL|ml|L|l|cc|mg|kg|g|sec|min|hr|h|s"
_UNIT = re.compile(
    rf"(?:(?<=[\d}})\s.])|^)\s*(?:(square|sq\.?|cubic|cu\.?)\s+)?"
    rf"(?:(?i:({_UNIT_WORD}))|({_UNIT_SYMBOL}))\s*(?:\^\s*\{{?\s*([23])\s*\}}?)?\s*$")


def split_unit(part: str) -> tuple[str, Unit | None]:
    """(value, unit) of a part ending in a unit; a one-letter symbol needs a number before it.

    >>> split_unit("50cm"), split_unit("12 m^{2}")[1].dimension, split_unit("2x + m")
    (('50', Unit(dimension='length', factor=Fraction(1, 100))), 'area', ('2x + m', None))
    """
    m = _UNIT.search(part)
    value = part[: m.start()].strip() if m else ""
    if not m or not value:
        return part, None
    prefix, word, symbol, power = m.groups()
    if symbol and len(symbol) == 1 and not re.search(r"[\d}).]\s*$", value):
        return part, None  # "2x + m": a variable, not metres
    name = (word or symbol).lower()
    if word:
        if name.startswith("unit"):
            return value, Unit("none", Fraction(1))
        name = next(short for stem, short in {**_LENGTH_WORDS, **_OTHER_WORDS}.items() if name.startswith(stem))
    power = int(power) if power else {"square": 2, "sq": 2, "sq.": 2, "cubic": 3, "cu": 3, "cu.": 3}.get(
        (prefix or "").lower(), 1)
    if name in _LENGTHS:
        dimension = {1: "length", 2: "area", 3: "volume"}[power]
        return value, Unit(dimension, Fraction(_LENGTHS[name]) ** power)
    dimension, factor = _OTHER[name]
    return value, Unit(dimension if power == 1 else f"{dimension}^{power}", Fraction(factor) ** power)


def _scaled(value: str, ratio: Fraction) -> str:
    """``value`` times ``ratio``; for "C = 4" the right-hand side only.

    A plain number is multiplied exactly here (math-verify leaves "C = 0.4 \\cdot 100"
    unevaluated inside an equation); anything else gets a ``\\cdot`` factor.

    >>> _scaled("C = 0.4084", Fraction(100)), _scaled("3\\pi", Fraction(1, 100))
    ('C =\\\\frac{1021}{25}', '\\\\left(3\\\\pi\\\\right)\\\\cdot\\\\frac{1}{100}')
    """
    if ratio == 1:
        return value
    lhs, eq, rhs = value.rpartition("=")
    try:
        number = Fraction(rhs.strip()) * ratio
    except (ValueError, ZeroDivisionError):
        return f"{lhs}{eq}\\left({rhs.strip()}\\right)\\cdot\\frac{{{ratio.numerator}}}{{{ratio.denominator}}}"
    return f"{lhs}{eq}\\frac{{{number.numerator}}}{{{number.denominator}}}"


def _percent(value: str) -> tuple[str, bool]:
    if value.endswith("%"):
        return value[:-1].strip(), True
    return value, False


def same_part(prediction: str, gold: str) -> bool:
    """One part of each answer: labels, units, percentages, then math-verify."""
    pred_label, prediction = strip_label(prediction)
    gold_label, gold = strip_label(gold)
    if pred_label and gold_label and pred_label != gold_label:
        return False
    if squash(prediction) == squash(gold):
        return True
    prediction, pred_unit = split_unit(prediction)
    gold, gold_unit = split_unit(gold)
    prediction, pred_pct = _percent(prediction)
    gold, gold_pct = _percent(gold)
    if pred_pct != gold_pct:  # 5% is 0.05 on its own side: never the bare 5
        prediction = f"\\frac{{{prediction}}}{{100}}" if pred_pct else prediction
        gold = f"\\frac{{{gold}}}{{100}}" if gold_pct else gold
    if pred_unit and gold_unit and "none" not in (pred_unit.dimension, gold_unit.dimension):
        if pred_unit.dimension != gold_unit.dimension:
            return False
        prediction = _scaled(prediction, pred_unit.factor / gold_unit.factor)
    if not prediction or not gold:
        return False
    try:
        return math_equivalent(prediction, gold) is True
    except Exception:  # a parser failure on odd text is no match, not a crash
        return False


def same_answer(prediction: str, gold: str) -> bool:
    """The module's rule: text equality, else part by part (same count, in order or, with no
    labels, in any order).

    >>> same_answer("0.5m", "50cm"), same_answer("5", "5%"), same_answer("5, 5", "5")
    (True, False, False)
    """
    prediction, gold = to_latex(prediction), to_latex(gold)
    if not prediction or not gold:
        return False
    if squash(prediction) == squash(gold):
        return True
    pred_parts, gold_parts = split_parts(prediction), split_parts(gold)
    if len(pred_parts) != len(gold_parts) or not pred_parts:
        return False
    if all(same_part(p, g) for p, g in zip(pred_parts, gold_parts, strict=True)):
        return True
    if len(gold_parts) == 1 or len(gold_parts) > 6:
        return False
    return any(all(same_part(p, g) for p, g in zip(order, gold_parts, strict=True))
               for order in itertools.permutations(pred_parts))
