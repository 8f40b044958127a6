"""DocVQA: ANLS as the RRC script computes it, and the val_v1.0.json loader."""
import json

import pytest

from prp.eval.bench.docvqa import anls, load_docvqa, score_docvqa


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("Denver Broncos", ["Denver Broncos", "Denver R. Broncos"], 1.0),
        ("  dear   DR. Lobo ", ["Dear Dr. Lobo"], 1.0),  # case and whitespace do not count
        ("12/15/89", ["12/15/88"], 1 - 1 / 8),
        ("abxy", ["abcd"], 0.5),  # distance exactly 0.5: kept (the script zeroes scores < 0.5)
        ("axyz", ["abcd"], 0.0),  # 3/4 off
        ("lobo", ["Dr. Lobo", "lobo."], 1 - 1 / 5),  # best over the gold answers
        ("  ax  ", ["ab"], 1 - 1 / 6),  # distance on normalised text, length of the raw strings
        (None, ["ab"], 0.0),
        # The length is max(len(gold.upper()), len(pred.upper())): upper() can lengthen a string.
        ("s", ["ß"], 0.5),  # distance 1; "ß".upper() = "SS" -> 1 - 1/2 (with len(): 1 - 1/1 = 0)
        ("f", ["ﬁ"], 0.5),  # ligature: "ﬁ".upper() = "FI" -> 1 - 1/2
        ("x", ["ﬃ"], 1 - 1 / 3),  # "ﬃ".upper() = "FFI"
        ("n", ["ŉ"], 0.5),  # "ŉ".upper() = "ʼN"
        ("strasse", ["Straße"], 1 - 2 / 7),  # straße -> strasse: 2 edits; max(7, 7)
        ("ß", ["ß"], 1.0),
    ],
)
def test_anls(prediction, answers, expected):
    assert anls(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize(
    "prediction, answers, score, ok",
    [
        ("abxy", ["abcd"], 0.5, True),  # 2 of 4 off: exactly the 0.5 threshold, kept, counts as right
        ("abcxyz", ["abcdef"], 0.5, True),
        ("axyz", ["abcd"], 0.0, False),
        ("s", ["ß"], 0.5, True),
        ("abcdefghxyz", ["abcdefgh123"], 1 - 3 / 11, True),
        ("", ["abc"], 0.0, False),
        (None, ["abc"], 0.0, False),
    ],
)
def test_per_item_verdict_agrees_with_the_official_score(prediction, answers, score, ok):
    from prp.core.data import Record
    from prp.eval.bench.docvqa import anls_correct
    from prp.eval.bench.registry import get_benchmark

    assert anls(prediction, answers) == pytest.approx(score)
    assert anls_correct(prediction, answers) is ok
    record = Record(id="1", question="q", image=None, answer=answers)
    assert get_benchmark("docvqa").judge(record, prediction) is ok


def test_loader_and_mean(tmp_path):
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "d1.png").write_bytes(b"png")
    data = [
        {"questionId": 1, "question": "To whom?", "image": "documents/d1.png", "answers": ["Dr. Lobo", "lobo"],
         "question_types": ["form"], "docId": 7, "data_split": "val"},
        {"questionId": 2, "question": "Date?", "image": "documents/d1.png", "answers": ["12/15/88"]},
        {"questionId": 3, "question": "Missing doc?", "image": "documents/none.png", "answers": ["x"]},
        {"questionId": 4, "question": "No answers", "image": "documents/d1.png", "answers": []},
    ]
    path = tmp_path / "val_v1.0.json"
    path.write_text(json.dumps({"dataset_name": "docvqa", "dataset_split": "val", "data": data}))
    result = load_docvqa(str(path))
    assert [r.id for r in result] == ["1", "2"] and result.skipped == {"missing_image": 1, "malformed": 1}
    assert result.records[0].answer == ["Dr. Lobo", "lobo"] and result.records[0].meta["docId"] == 7
    scored = score_docvqa(result.records, {"1": "LOBO", "2": "12/15/89"})
    assert scored.per_pid == pytest.approx({"1": 1.0, "2": 0.875})
    assert scored.score == pytest.approx(0.9375) and scored.total == 2
