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
    ],
)
def test_anls(prediction, answers, expected):
    assert anls(prediction, answers) == pytest.approx(expected)


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
