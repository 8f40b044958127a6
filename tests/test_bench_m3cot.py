"""M3CoT: the official judge_answer's stages and quirks, and the JSONL loader."""
import json

import pytest

from prp.eval.bench.m3cot import judge_answer, load_m3cot, score_m3cot

CHOICES = ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "text, answer, ok",
    [
        ("(B)", "B", True),
        ("(b) dog", "B", True),  # parenthesised letters are upper-cased
        ("I think (A), no wait, (B)", "B", True),  # the last one counts
        ("(A) but it is a dog", "B", False),  # a "(x)" letter beats any choice text
        ("B", "B", True),  # no parentheses: a standalone letter
        ("b", "B", True),  # ... lower case as a last resort
        ("The answer is B.", "B", True),
        ("Answer: C!", "C", True),
        ("It is a Dog", "B", True),  # the choice text, case-insensitive
        ("a cat chasing a bird", "C", True),  # several choice texts: the last in choice order
        ("A", 0, True),  # an index gold, as judge_answer accepts
        ("[Answer] (C) [Rationale] not (A)", "C", True),  # only the [Answer] part is read
        ("A fish", "A", True),  # quirk: the article "A" is read as option A
        ("unsure", "A", False),  # nothing picked: wrong
        ("D", "A", False),  # a letter beyond the choices is not picked
        (None, "A", False),
    ],
)
def test_judge_answer(text, answer, ok):
    assert judge_answer(text, CHOICES, answer) is ok


def test_choice_substring_quirk():
    # "red" is inside "reddish": both match and the later choice wins, as in the official code.
    assert judge_answer("reddish", ["red", "reddish"], "B") and not judge_answer("reddish", ["red", "reddish"], "A")


def _row(i, **kw):
    row = {"id": f"q{i}", "question": "Which animal?", "choices": CHOICES, "answer": "B", "context": "",
           "image": f"images/q{i}.png", "domain": "science", "topic": "biology", "category": "c", "split": "test"}
    row.update(kw)
    return row


def test_loader_jsonl(tmp_path):
    (tmp_path / "images").mkdir()
    for i in (1, 2, 5):
        (tmp_path / "images" / f"q{i}.png").write_bytes(b"png")
    lines = [json.dumps(_row(1, context="A zoo.")), "{not json", json.dumps(_row(2, answer=2, domain="commonsense")),
             json.dumps(_row(3, answer=None)), json.dumps(_row(4, split="train")), json.dumps(_row(5, answer="F")),
             json.dumps(_row(6))]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = load_m3cot(str(path))
    assert [r.id for r in result] == ["q1", "q2"]
    assert result.skipped == {"malformed": 3, "missing_image": 1}  # bad line, no answer, "F" of 3 choices; q6
    assert result.records[1].answer == "C"  # index 2
    assert result.records[0].question == (
        "[Context]\nA zoo.\n\n[Question]\nWhich animal?\n[Choices]\n(A) cat\n(B) dog\n(C) bird"
    )
    scored = score_m3cot(result.records, {"q1": "(B)", "q2": "dog"})
    assert scored.per_pid == {"q1": True, "q2": False}
    assert scored.per_group == {"science": (1, 1), "commonsense": (0, 1)}
