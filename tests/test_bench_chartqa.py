"""ChartQA: pix2struct relaxed correctness (5%, "%" handling, gold 0) and the folder loader."""
import json

import pytest

from prp.eval.bench.chartqa import load_chartqa, relaxed_correctness, score_chartqa


@pytest.mark.parametrize(
    "target, prediction, ok",
    [
        ("100", "105", True),  # exactly 5% off
        ("100", "95", True),
        ("100", "105.1", False),
        ("-10", "-10.4", True),
        ("45%", "45%", True),
        ("45%", "0.45", True),  # "%" is stripped and divided by 100: 0.45 == 0.45
        ("45%", "46%", True),  # 0.46 vs 0.45: 2.2% off
        ("45%", "45", False),  # 45 vs 0.45: the official rule does not forgive this
        ("45", "45%", False),
        ("0", "0", True),  # gold 0: compared as strings, no division by zero
        ("0", "0.0", False),
        ("0", "0.01", False),
        ("0%", "0%", True),
        ("Yes", "YES", True),
        ("Yes", " yes ", False),  # pix2struct strips nothing: " yes " != "yes"
        ("Yes ", "yes", False),
        ("12", " 12 ", True),  # ... but float(" 12 ") is 12.0, so a plain number still reads
        ("12%", " 12% ", False),  # " 12% " does not end with "%": not a number, and not equal text
        ("50%", "50%%", True),  # rstrip("%") takes every trailing "%"
        ("0.45", "45%", True),  # 0.45 == 45/100
        ("45%", "47.25%", True),  # 0.4725 vs 0.45: exactly 5% of the gold off
        ("45%", "47.3%", False),  # 0.473 vs 0.45: 5.1% off
        ("Mexico", "mexico city", False),
        ("12", "twelve", False),
        ("12", None, False),
    ],
)
def test_relaxed_correctness(target, prediction, ok):
    assert relaxed_correctness(target, prediction) is ok


def _layout(tmp_path):
    test = tmp_path / "ChartQA Dataset" / "test"
    (test / "png").mkdir(parents=True)
    (test / "png" / "a.png").write_bytes(b"png")
    (test / "png" / "b.png").write_bytes(b"png")
    human = [
        {"imgname": "a.png", "query": "How many?", "label": "12"},
        {"imgname": "gone.png", "query": "Missing image?", "label": "1"},
        {"imgname": "b.png", "query": "No label"},
    ]
    augmented = [{"imgname": "b.png", "query": "Which country?", "label": "Mexico"},
                 {"imgname": "a.png", "query": "Share?", "label": 30}]
    (test / "test_human.json").write_text(json.dumps(human))
    (test / "test_augmented.json").write_text(json.dumps(augmented))
    return test


def test_loader_layout_and_skips(tmp_path):
    test = _layout(tmp_path)
    result = load_chartqa(str(test.parent))  # the dataset root holding test/
    assert [r.id for r in result] == ["human/0", "augmented/0", "augmented/1"]
    assert result.skipped == {"missing_image": 1, "malformed": 1}
    rec = result.records[0]
    assert (rec.question, rec.answer, rec.split, rec.image) == ("How many?", "12", "human", str(test / "png" / "a.png"))
    assert result.records[2].answer == "30"  # a numeric label is kept as text
    kept = load_chartqa(str(test), splits=["human"], require_images=False)  # the test/ folder itself
    assert len(kept) == 2 and kept.missing_images == 1 and kept.records[1].image is None


def test_score_reports_splits_and_overall(tmp_path):
    records = load_chartqa(str(_layout(tmp_path))).records
    result = score_chartqa(records, {"human/0": "12.5", "augmented/0": "mexico", "augmented/1": "40"})
    assert result.per_group == {"human": (1, 1), "augmented": (1, 2)}
    assert (result.correct, result.total) == (2, 3)
    assert result.format() == "accuracy: 66.7 (2/3)"
    assert score_chartqa(records, {}).correct == 0  # missing predictions are wrong
