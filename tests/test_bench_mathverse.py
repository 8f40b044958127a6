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
