"""MathVerse: letter matching, math-verify free-form answers, versions kept apart, loader."""
import json

import pytest

from prp.eval.bench.mathverse import choice_letter, is_correct, load_mathverse, score_mathverse


@pytest.mark.parametrize(
    "text, letter",
    [("B", "B"), ("(b)", "B"), ("C. 30°", "C"), ("D: 12", "D"), ("(A) 2\\sqrt{3}", "A"), ("$E$", "E"),
     ("Because 3", None), ("12", None), ("", None), (None, None)],
)
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter


@pytest.mark.parametrize(
    "prediction, answer, qtype, ok",
    [
        ("B", "B", "multi-choice", True),
        ("(b) 60°", "B", "multi-choice", True),
        ("C", "B", "multi-choice", False),
        ("60°", "B", "multi-choice", False),  # no letter: wrong (no GPT to map the text)
        ("0.5", "\\frac{1}{2}", "free-form", True),
        ("\\sqrt{12}", "2\\sqrt{3}", "free-form", True),
        ("y = 2x+1", "y=2x+1", "free-form", True),  # string match, spaces ignored
        ("Increasing", "increasing", "free-form", True),  # case-insensitive text; math-verify alone says no
        ("3", "4", "free-form", False),
        ("", "4", "free-form", False),
        (None, "4", "free-form", False),
    ],
)
def test_is_correct(prediction, answer, qtype, ok):
    assert is_correct(prediction, answer, qtype) is ok


def _row(i, version, **kw):
    row = {"sample_index": str(i), "problem_index": "1", "problem_version": version, "question": "q",
           "image": "images_version_1-4/image_1.png", "answer": "B", "question_type": "multi-choice",
           "metadata": {"subject": "plane geometry"}, "query_wo": f"query {i}", "query_cot": "cot",
           "question_for_eval": "q"}
    row.update(kw)
    return row


def test_loader_and_versions_reported_apart(tmp_path):
    (tmp_path / "images_version_1-4").mkdir()
    (tmp_path / "images_version_1-4" / "image_1.png").write_bytes(b"png")
    rows = [_row(1, "Text Dominant"), _row(2, "Vision Only"),
            _row(3, "Text Only", image="", answer="2\\sqrt{3}", question_type="free-form"),
            _row(4, "Vision Dominant", image="images_version_1-4/none.png"), _row(5, "Text Lite", query_wo="")]
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(rows))
    result = load_mathverse(str(path))
    assert [r.id for r in result] == ["1", "2", "3"] and result.skipped == {"missing_image": 1, "malformed": 1}
    assert result.records[0].question == "query 1" and result.records[2].image is None  # text-only: no image
    scored = score_mathverse(result.records, {"1": "B", "2": "A", "3": "\\sqrt{12}"})
    assert scored.per_group == {"Text Dominant": (1, 1), "Vision Only": (0, 1), "Text Only": (1, 1)}
    assert (scored.correct, scored.total) == (2, 3)


# Item-by-item rule of the GPT judge's stand-in (see prp.eval.bench.mathverse's docstring).
@pytest.mark.parametrize(
    "prediction, answer, ok",
    [
        # a choice letter counts only as the whole answer (or a letter introducing its option)
        ("B", "B", True), ("B.", "B", True), ("(B)", "B", True), ("Option B", "B", True),
        ("**B**", "B", True), ("\\boxed{B}", "B", True), ("$\\boxed{B}$", "B", True), ("b", "B", True),
        ("a triangle", "A", False),  # the article "a" is no letter
        ("A and B", "A", False), ("A, B", "B", False), ("A or B", "A", False),  # two letters
        ("Option C", "B", False),
        ("C and D", "C\nD", True), ("D, C", "C\nD", True), ("C", "C\nD", False),  # a two-letter gold
        ("(C)", "(C)", True), ("C", "(C)", True),
    ],
)
def test_multi_choice_letters(prediction, answer, ok):
    assert is_correct(prediction, answer, "multi-choice") is ok


def test_multi_choice_by_option_text():
    choices = ["40°", "60°", "120°", "140°"]  # as parsed from "Choices:\nA:40°\nB:60°..."
    assert is_correct("60°", "B", "multi-choice", choices)  # the judge prompt's own example
    assert is_correct("60^\\circ", "B", "multi-choice", choices)
    assert not is_correct("40°", "B", "multi-choice", choices)
    assert not is_correct("50°", "B", "multi-choice", choices)  # no option says 50°
    assert not is_correct("a triangle", "A", "multi-choice", ["a triangle is", "square"])  # text must match whole


@pytest.mark.parametrize(
    "prediction, answer, ok",
    [
        # a percentage never equals the bare number; it is its value / 100
        ("5%", "5", False), ("5", "5\\%", False), ("5\\%", "5%", True), ("5%", "0.05", True),
        ("13%", "$13 \\%$", True),
        # a repeated answer, or a multi-part gold reduced to one number, is no match
        ("5, 5", "5", False), ("5 and 5", "5", False), ("-4.9", "-4.9\n-4.9", False),
        ("-4.9, -4.9", "-4.9\n-4.9", True), ("2", "2, 3", False), ("2", "(2, 3)", False),
        ("2", "x=2, y=3", False), ("3, 2", "2, 3", True),
        ("1,000", "1000", True),  # a thousands separator is no list
        # unicode forms
        ("2√3", "2\\sqrt{3}", True), ("x²+y²=4", "x^2+y^2=4", True), ("½", "0.5", True),
        ("1½", "1.5", True), ("12π", "12\\pi", True), ("7√3", "\\sqrt{147}", True), ("35°", "35掳", True),
        # units: the same quantity in another unit matches, another dimension does not
        ("50cm", "0.5m", True), ("0.5 m", "50 \\mathrm{~cm}", True), ("3799000 m", "3799 km", True),
        ("18630 g", "Weight $=18.63 \\mathrm{~kg}$", True), ("0.01045 L", "10.45 cm^3", True),
        ("10.45", "Volume $=10.45 \\mathrm{~cm}^{3}$", True),  # label and unit dropped
        ("10.45 cm²", "Volume $=10.45 \\mathrm{~cm}^{3}$", False), ("50cm", "0.5", False),
        ("range: [-4, 0) and domain: (-3, 1]", "domain: [-4, 0) and range: (-3, 1]", False),
        ("(-2, 1)", "(-2,1]", False), ("6", "5", False),
    ],
)
def test_free_form_rule(prediction, answer, ok):
    assert is_correct(prediction, answer, "free-form") is ok


def test_choices_parsed_into_the_record(tmp_path):
    from prp.eval.bench.mathverse import parse_choices

    query = "Please answer.\nQuestion: angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°"
    assert parse_choices(query) == ["40°", "60°", "120°", "140°"]
    assert parse_choices("Question: no options here") is None
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps([_row(1, "Text Dominant", query_wo=query, image="")]))
    record = load_mathverse(str(path)).records[0]
    assert record.choices == ["40°", "60°", "120°", "140°"]
    assert score_mathverse([record], {"1": "60°"}).correct == 1
