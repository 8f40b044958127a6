"""prp.core.data: every bad line is counted and reported with its own line number, none is fatal."""
import json

import pytest

from prp.core.data import ImageError, load_jsonl, load_rows
from prp.toy.synthetic import render


def test_load_jsonl_counts_each_kind_of_bad_line(tmp_path):
    (tmp_path / "img").mkdir()
    render([1, 2]).save(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    lines = [
        json.dumps({"id": "a", "image": "img/ok.png", "question": "Q?", "answer": "$3$"}),  # 1
        "",  # 2: blank, ignored
        "{not json",  # 3
        json.dumps({"id": "b", "image": "img/ok.png", "question": "  "}),  # 4
        json.dumps({"id": "c", "image": "img/missing.png", "question": "Q?"}),  # 5
        json.dumps({"id": "d", "image": "img/bad.png", "question": "Q?"}),  # 6
        json.dumps(["a list"]),  # 7
        json.dumps({"question": "text only"}),  # 8: no id, no image: kept
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = load_jsonl(path)
    assert [r.id for r in result.records] == ["a", "line-8"]
    assert result.records[0].image == str(tmp_path / "img" / "ok.png")
    assert result.records[0].load_image().size == (112, 112)
    assert result.records[1].image is None and result.records[1].load_image() is None
    assert dict(result.skipped) == {"bad_json": 2, "empty_question": 1, "missing_image": 1, "corrupt_image": 1}
    assert [(e["line"], e["error"]) for e in result.errors] == [
        (3, "bad_json"), (4, "empty_question"), (5, "missing_image"), (6, "corrupt_image"), (7, "bad_json")]
    assert "2 records, skipped 5" in result.summary()


def test_load_rows_requires_answers_by_default_and_renames_fields(tmp_path):
    rows = [{"query": "How many?", "label": "4"}, {"query": "No label"}, None]
    result = load_rows(rows, base_dir=tmp_path, source="chartqa", fields={"question": "query", "answer": "label"})
    assert [(r.question, r.answer) for r in result.records] == [("How many?", "4")]
    assert dict(result.skipped) == {"missing_answer": 1, "bad_json": 1}


def test_open_image_error_names_the_reason(tmp_path):
    from prp.core.data import open_image

    try:
        open_image(tmp_path / "nope.png")
    except ImageError as exc:
        assert str(exc).startswith("missing_image")
    else:
        raise AssertionError("expected ImageError")


def test_one_record_type_serves_training_routing_and_benchmarks(tmp_path):
    """Record.load_image: a path is opened (and checked), a decoded image is handed back as is,
    None is a text-only item; a benchmark's list gold, choices and split sit on the same class."""
    from PIL import Image

    from prp.core.data import Record
    from prp.eval.bench import Record as BenchExport

    assert BenchExport is Record
    render([1, 2]).save(tmp_path / "ok.png")
    from_path = Record(id="a", question="Q?", answer="$3$", image=str(tmp_path / "ok.png")).load_image()
    assert from_path.mode == "RGB" and from_path.size == render([1, 2]).size
    decoded = Image.new("L", (4, 2))
    assert Record(id="b", question="Q?", answer=None, image=decoded).load_image() is decoded
    assert Record(id="c", question="Q?", answer=None, image=None).load_image() is None
    doc = Record(id="d", question="Date?", image=None, answer=["12/15/89", "1989"], choices=["A", "B"], split="human")
    assert (doc.answer, doc.choices, doc.split, doc.meta) == (["12/15/89", "1989"], ["A", "B"], "human", {})
    with pytest.raises(ImageError, match=r"^missing_image"):
        Record(id="e", question="Q?", answer=None, image=str(tmp_path / "gone.png")).load_image()


def test_one_jsonl_line_reader_each_caller_keeps_its_error_rule(tmp_path):
    """jsonl_lines numbers the file's own lines and leaves blanks out; what a bad line means stays
    each caller's: a None (training/routing input, benchmark rows), an error (routed output), a skip
    (target-accuracy cache)."""
    from prp.core.data import iter_jsonl, jsonl_lines
    from prp.core.jsonl import JsonError
    from prp.eval.bench.records import read_rows as bench_rows
    from prp.route.run import read_rows as routed_rows
    from prp.train.presample import read_cache

    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": "a", "acc": 0.5}\r\n\n  \n{torn\n[1]\n{"id": "b", "acc": 1}')
    assert list(jsonl_lines(path)) == [(1, b'{"id": "a", "acc": 0.5}\r'), (4, b"{torn"), (5, b"[1]"),
                                       (6, b'{"id": "b", "acc": 1}')]
    assert [(n, raw is not None) for n, raw in iter_jsonl(path)] == [(1, True), (4, False), (5, False), (6, True)]
    assert bench_rows(str(path)) == [{"id": "a", "acc": 0.5}, None, [1], {"id": "b", "acc": 1}]
    assert read_cache(path) == {"a": 0.5, "b": 1.0}
    with pytest.raises(JsonError, match=r"^bad_json"):
        routed_rows(path)
    path.write_bytes(b'{"line": 2}\n\n[3]\r\n')
    assert routed_rows(path) == [{"line": 2}, [3]]
    path.write_bytes(b'{"id": "a", "acc": 0.5}\n\xff\xfe\n')
    assert [raw for _, raw in iter_jsonl(path)] == [{"id": "a", "acc": 0.5}, None]  # a bad line, not a crash
    # a user's file (an --acc-tgt-cache, a benchmark's rows): the bad line alone is left out; our output: an error
    assert read_cache(path) == {"a": 0.5} and bench_rows(str(path)) == [{"id": "a", "acc": 0.5}, None]
    with pytest.raises(JsonError, match=r"^bad_utf8"):
        routed_rows(path)


# One record per hostile line kind (issue 26): the shared reader's reason codes, for every reader.
HOSTILE_LINES = {
    b'{"id": "n", "question": "q", "answer": ' + b"9" * 5000 + b"}": "number_too_long",
    b"[" * 100_000: "json_too_deep",
    b'{"a": ' * 200 + b"1" + b"}" * 200: "json_too_deep",
    b'{"id": "s", "question": "\\ud800 lone"}': "lone_surrogate",
    b'{"id": "u", "question": "caf\xe9"}': "bad_utf8",
}


def test_shared_reader_splits_on_newline_only_and_names_every_parser_limit(tmp_path):
    from prp.core.jsonl import iter_json_lines

    ok = {"id": "x", "question": "a\u2028b\u0085c\u2029d\x1ce\x0bf\x0cg"}  # splitlines() splits at each
    path = tmp_path / "h.jsonl"
    path.write_bytes(json.dumps(ok, ensure_ascii=False).encode() + b"\n" + b"\n".join(HOSTILE_LINES) + b"\n")
    got = list(iter_json_lines(path))
    assert got[0][:2] == (1, ok) and got[0][2] is None
    assert [(n, value, err.reason) for n, value, err in got[1:]] == [
        (n, None, reason) for n, reason in enumerate(HOSTILE_LINES.values(), start=2)]
    assert all("\n" not in str(err) for _, _, err in got[1:])  # one line each
    # the training / calibration loader counts each as a skipped bad line, and keeps the good one
    loaded = load_jsonl(path, check_images=False)
    assert [r.question for r in loaded.records] == [ok["question"]] and loaded.skipped == {"bad_json": 5}


def test_loader_skips_an_image_field_that_is_not_a_path(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "question": "q", "image": 5}\n'
                    '{"id": "b", "question": "q", "image": "x\\u0000.png"}\n'
                    '{"id": "c", "question": "q", "image": "' + "d/" * 2500 + 'x.png"}\n'
                    '{"id": "ok", "question": "q"}\n')
    loaded = load_jsonl(path, check_images=False)  # was: TypeError from Path(5)
    assert [r.id for r in loaded.records] == ["ok"]
    assert loaded.skipped == {"bad_image_field": 1, "bad_image_path": 2}
