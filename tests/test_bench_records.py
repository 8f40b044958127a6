"""Shared bench helpers: file formats, image resolution, the one-line accuracy report."""
import io
import json

from PIL import Image

from prp.core.data import LoadResult
from prp.eval.bench.records import attach_image, format_accuracy, read_rows


def test_read_rows_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"7": {"x": 1}, "8": {"x": 2}}))
    (tmp_path / "b.json").write_text(json.dumps({"dataset_name": "d", "data": [{"x": 3}]}))
    (tmp_path / "c.jsonl").write_text('{"x": 4}\n\n{broken\n{"x": 5}\n')
    assert read_rows(str(tmp_path / "a.json")) == [{"x": 1, "_key": "7"}, {"x": 2, "_key": "8"}]
    assert read_rows(str(tmp_path / "b.json")) == [{"x": 3}]
    assert read_rows(str(tmp_path / "c.jsonl")) == [{"x": 4}, None, {"x": 5}]  # None: counted malformed


def test_attach_image(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"png")
    result = LoadResult(records=[])
    assert attach_image(result, "ok.png", str(tmp_path), "1", True) == (str(tmp_path / "ok.png"), True)
    assert attach_image(result, None, str(tmp_path), "2", True) == (None, True)  # text-only item
    assert attach_image(result, "no.png", str(tmp_path), "3", True) == (None, False)
    assert attach_image(result, "no.png", str(tmp_path), "4", False) == (None, True)
    assert attach_image(result, {"bytes": b"not an image"}, str(tmp_path), "5", True) == (None, False)
    buf = io.BytesIO()
    Image.new("L", (4, 5)).save(buf, format="PNG")
    image, keep = attach_image(result, {"bytes": buf.getvalue(), "path": "x.png"}, str(tmp_path), "6", True)
    assert keep and image.size == (4, 5)
    assert result.skipped == {"missing_image": 1, "bad_image": 1} and result.missing_images == 1


def test_format_accuracy():
    assert format_accuracy(261, 1000) == "accuracy: 26.1 (261/1000)"
    assert format_accuracy(1, 3) == "accuracy: 33.3 (1/3)"
    assert format_accuracy(0, 0) == "accuracy: 0.0 (0/0)"


def test_routing_judge_reads_choices_from_a_routed_records_meta():
    """A routed JSONL line keeps MathVista's choices in meta; the judge sees them as the record's
    choices, so "B" (the second choice, "5") is the gold 5 and "A" ("3") is not."""
    from prp.core.data import Record
    from prp.eval.judge import routing_judge

    judge = routing_judge("mathvista")
    meta = {"question_type": "multi_choice", "answer_type": "text", "precision": None}
    routed = Record(id="1", question="?", answer="5", image=None, meta={**meta, "choices": ["3", "5"]})
    loaded = Record(id="1", question="?", answer="5", image=None, choices=["3", "5"], meta=meta)
    for record in (routed, loaded):
        assert [judge(record, p) for p in ("5", "B", "A", "3")] == [True, True, False, False]
    assert routed.choices is None and "choices" in routed.meta  # the judge does not change the record


def test_one_load_result_for_training_and_benchmarks(tmp_path):
    """A benchmark's skip() fills the same counts and error list the training loaders report."""
    from prp.core.data import Record, load_jsonl
    from prp.eval.bench import LoadResult as BenchExport

    assert BenchExport is LoadResult
    result = LoadResult(records=[Record(id="a", question="Q?", answer="1", image=None)])
    result.skip("malformed", "b", "needs question and answer")
    result.skip("missing_image", "c", line=7)
    result.missing_images += 1
    assert len(result) == 1 and [r.id for r in result] == ["a"]
    assert result.skipped == {"malformed": 1, "missing_image": 1}
    assert result.errors == [{"line": None, "id": "b", "error": "malformed"},
                             {"line": 7, "id": "c", "error": "missing_image"}]
    assert result.summary() == "1 records, skipped 2 (malformed=1, missing_image=1)"
    (tmp_path / "d.jsonl").write_text('{"id": "x", "question": "Q?"}\n{broken\n')
    loaded = load_jsonl(tmp_path / "d.jsonl")
    assert type(loaded) is LoadResult and len(loaded) == 1 and loaded.missing_images == 0
