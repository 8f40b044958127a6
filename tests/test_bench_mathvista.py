"""MathVista: the official score on the shipped Bard / GPT-4 outputs, edge cases, query, loader."""
import json
import os
import re

import pytest

from prp.eval.bench.mathvista import (
    build_query,
    get_most_similar,
    load_mathvista,
    normalize_extracted_answer,
    score_output_file,
)
from prp.eval.bench.records import group_counts

DATA = os.path.join(os.path.dirname(__file__), "data", "mathvista")
TESTMINI = os.path.join(DATA, "testmini.json")


def _load(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def testmini():
    return _load("testmini.json")


@pytest.fixture(scope="module",
                params=[("bard", 348, "accuracy: 34.8 (348/1000)"), ("gpt4", 261, "accuracy: 26.1 (261/1000)")])
def scored(request):
    model, correct, line = request.param
    return model, correct, line, score_output_file(os.path.join(DATA, f"output_{model}.json"), TESTMINI)


def test_published_totals(scored):
    _, correct, line, result = scored
    assert (result.correct, result.total) == (correct, 1000)
    assert result.format() == line


def test_every_verdict_matches_the_official_true_false(scored):
    model, _, _, result = scored
    official = {pid: row["true_false"] for pid, row in _load(f"output_{model}.json").items()}
    assert result.per_pid == official


# ("grade" is left out: the published file names testmini's "not applicable" grade "daily life".)
@pytest.mark.parametrize("key", ["question_type", "answer_type", "source", "category", "task", "context", "language"])
def test_published_per_category_counts(scored, testmini, key):
    model, _, _, result = scored
    published = _load(f"scores_{model}.json")[key]

    def value(problem):
        return problem[key] if key in problem else problem["metadata"][key]

    counts = group_counts(result.per_pid, {pid: value(p) for pid, p in testmini.items()})
    assert counts == {name: (v["correct"], v["total"]) for name, v in published.items()}


def test_per_group_in_the_result(scored):
    model, _, _, result = scored
    published = _load(f"scores_{model}.json")["answer_type"]
    assert result.per_group["float"] == (published["float"]["correct"], published["float"]["total"])


def _score_one(tmp_path, pid, output):
    path = tmp_path / "out.json"
    path.write_text(json.dumps({pid: output}))
    return score_output_file(str(path), TESTMINI)


# pid 168: choices ["(c)", "(a)", "(e)", "(d)", "(b)"], gold "(b)" = option E.
# pid 849: choices ["(c)", "(d)", "(a)", "(b)", "(e)"], gold "(b)" = option D.
@pytest.mark.parametrize(
    "pid, extraction, ok",
    [
        ("168", "E", True),  # the option letter of "(b)"
        ("168", "(b)", False),  # "(b)" is read as option B, whose text is "(a)"
        ("168", "b", True),  # a lower-case letter is no option: closest choice text is "(b)"
        ("849", "(b)", False),  # Bard's own extraction, officially wrong
        ("849", "(D)", True),
        ("849", "D", True),
    ],
)
def test_gold_letter_inside_choice_texts(tmp_path, pid, extraction, ok):
    result = _score_one(tmp_path, pid, {"extraction": extraction})
    assert result.per_pid[pid] is ok


def test_only_the_listed_pids_score_the_rest_count_wrong(tmp_path):
    result = _score_one(tmp_path, "168", {"extraction": "E"})
    assert (result.correct, result.total) == (1, 1000)


@pytest.mark.parametrize(
    "pid, output, ok",
    [
        ("16", {"extraction": "2.0"}, True),  # integer gold "2": str(int(float("2.0")))
        ("16", {"extraction": "2.7"}, True),  # int() truncates (no rounding), as the official script does
        ("16", {"extraction": "two"}, False),
        ("144", {"extraction": "13.80"}, True),  # precision 1, gold "13.8"
        ("1", {"extraction": "0.11"}, False),  # precision 1, gold "1.2"
        ("1", {"extraction": "1.24"}, True),
        ("199", {"extraction": "0.214"}, True),  # precision 2, gold "0.21"
        ("199", {"extraction": "0.2"}, False),
        ("5", {"extraction": "(A) 97"}, True),  # multi-choice, gold "97"
        ("5", {"extraction": "102"}, False),
        ("5", {"extraction": "(A) or (C)"}, True),  # the first "(x)" letter counts
        # pid 5: choices ["97", "102", "107", "122"], gold "97" (option A).
        # An empty extraction is normalised, never re-extracted from response: edit distances
        # from "" are the lengths 2, 3, 3, 3 -> "97", the shortest (official get_most_similar).
        ("5", {"extraction": ""}, True),
        ("5", {"extraction": "", "response": "<answer>C</answer>"}, True),  # response ignored
        ("5", {"extraction": "   "}, True),  # stripped to "" first
        # null: str(None) = "None", distances 4, 4, 4, 4 -> the first choice on the tie, "97"
        ("5", {"extraction": None}, True),
        ("5", {"response": "<think>..</think><answer>A</answer>"}, True),  # no key: from response
        ("5", {"response": "Hence the answer is (C)."}, False),
        ("5", {"response": "no idea"}, True),  # nothing found -> "" -> the shortest choice
        ("16", {"extraction": ""}, False),  # integer: float("") fails
        ("16", {"extraction": None}, False),
        ("16", {"extraction": 2}, True),  # a JSON number: int(float(2))
        ("16", {"response": "so 2 apples"}, True),
        ("506", {"extraction": "[2014, 2016]"}, True),  # list compared as its string
        ("506", {"extraction": "[2014,2016]"}, False),
    ],
)
def test_normalisation_edge_cases(tmp_path, pid, output, ok):
    assert _score_one(tmp_path, pid, output).per_pid[pid] is ok


def test_normalize_direct():
    assert normalize_extracted_answer("3.14159", None, "free_form", "float", 2.0) == "3.14"  # HF float precision
    assert normalize_extracted_answer("3.14159", None, "free_form", "float", "2") == "3.14"  # int("2")
    assert normalize_extracted_answer(None, None, "free_form", "integer", None) is None
    assert normalize_extracted_answer("c", ["a", "b"], "multi_choice", "text", None) == "a"  # a tie: the first
    assert get_most_similar("tokio", ["hong kong", "osaka", "tokyo"]) == "tokyo"
    assert normalize_extracted_answer("1e3", None, "free_form", "integer", None) == "1000"
    assert normalize_extracted_answer("nan", None, "free_form", "integer", None) is None  # int(nan) fails
    assert normalize_extracted_answer("inf", None, "free_form", "float", 1) == "inf"  # round(inf, 1) is inf


@pytest.mark.parametrize("precision", [None, float("nan"), "1.0"])
def test_float_without_a_usable_precision_is_wrong(precision):
    # int(None), int(nan) and int("1.0") all raise inside the official try: prediction None.
    # (This module used to round to an integer here: "2.4" would have become "2".)
    assert normalize_extracted_answer("2.4", None, "free_form", "float", precision) is None


def test_empty_multi_choice_extraction_maps_to_the_closest_choice():
    choices = ["triangle", "sq", "circle"]  # lengths 8, 2, 6: "" is closest to "sq"
    assert normalize_extracted_answer("", choices, "multi_choice", "text", None) == "sq"
    assert normalize_extracted_answer("", choices, "multi_choice", "text", None, ignore_empty_extractions=True) is None
    # "None" vs "Nine" (1 substitution) beats "sq" (4) and the rest
    assert normalize_extracted_answer(None, ["sq", "Nine"], "multi_choice", "text", None) == "Nine"


def test_list_output_file_with_pid_field(tmp_path):
    path = tmp_path / "out.json"
    path.write_text(json.dumps([{"pid": "16", "response": "<answer>2</answer>"}, {"pid": "nope", "extraction": "1"}]))
    result = score_output_file(str(path), TESTMINI)
    assert result.per_pid["16"] and result.correct == 1 and "nope" not in result.per_pid


def test_build_query_matches_the_official_query_file(testmini):
    queries = _load("query_testmini.json")
    assert {pid: build_query(p) for pid, p in testmini.items()} == queries


def test_loader_json(testmini):
    result = load_mathvista(TESTMINI, require_images=False, query_path=os.path.join(DATA, "query_testmini.json"))
    assert len(result) == 1000 and not result.skipped and result.missing_images == 1000
    rec = {r.id: r for r in result}["168"]
    assert rec.answer == "(b)" and rec.choices == ["(c)", "(a)", "(e)", "(d)", "(b)"] and rec.image is None
    assert rec.question.endswith("Choices:\n(A) (c)\n(B) (a)\n(C) (e)\n(D) (d)\n(E) (b)")
    assert rec.meta["question_type"] == "multi_choice"


def test_loader_images_and_malformed(tmp_path, testmini, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.jpg").write_bytes(b"jpg")
    rows = {"1": testmini["1"], "2": testmini["2"], "3": dict(testmini["3"], answer=None), "4": "junk"}
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(rows))
    result = load_mathvista(str(path))  # require_images: pid 2's image is not there
    assert [r.id for r in result] == ["1"]
    assert result.records[0].image == str(tmp_path / "images" / "1.jpg")
    assert result.records[0].question == build_query(testmini["1"])  # no query file: built
    assert result.skipped == {"malformed": 2, "missing_image": 1}
    assert "missing_image" in caplog.text


def test_parquet_needs_pyarrow_with_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_mathvista(str(tmp_path / "testmini-00000.parquet"))


def test_parquet_hf_layout(tmp_path, testmini):
    pa = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buf, format="PNG")
    rows = []
    for pid in ("1", "168"):
        p = testmini[pid]
        rows.append({
            "pid": pid, "question": p["question"], "image": p["image"],
            "decoded_image": {"bytes": buf.getvalue(), "path": p["image"]}, "choices": p["choices"],
            "unit": p["unit"], "precision": float(p["precision"]) if p["precision"] else None,
            "answer": p["answer"], "question_type": p["question_type"], "answer_type": p["answer_type"],
            "query": "HF query " + pid,
        })
    path = tmp_path / "testmini.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    result = load_mathvista(str(path))
    assert [r.id for r in result] == ["1", "168"] and not result.skipped
    assert result.records[0].image.size == (3, 2) and result.records[0].meta["precision"] == 1
    assert result.records[1].question == "HF query 168"
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"1": {"extraction": "1.21"}, "168": {"extraction": "E"}}))
    scored = score_output_file(str(out), str(path))  # gold from the parquet, float precision
    assert (scored.correct, scored.total) == (2, 2)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("out.json", "{not json", "not JSON"),
        ("out.json", "[1, 2]", "item 0 is not a record with a pid"),
        ("out.json", '"just a string"', "expected an object of pid -> record"),
        ("out.json", '{"5": "A"}', "pid '5' is str, not a record object"),
        ("out.json", '{"5": {"answer": "97"}}', "pid '5' has neither 'extraction' nor 'response'"),
        ("out.json", "{}", "no records"),
        ("out.jsonl", '{"pid": "5", "extraction": "A"}\n{oops', "line 2 is not JSON"),
        ("missing.json", None, "cannot read"),
    ],
)
def test_malformed_output_files_raise_one_clear_error(tmp_path, name, text, message):
    from prp.eval.bench.outputs import ScoreFileError

    path = _write(tmp_path, name, text) if text is not None else str(tmp_path / name)
    with pytest.raises(ScoreFileError, match=message) as err:
        score_output_file(path, TESTMINI)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_directory_or_fifo_output_file_is_refused_without_blocking(tmp_path):
    from prp.eval.bench.outputs import ScoreFileError

    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)  # reading it would block forever: no writer ever opens it
    for path in (str(fifo), str(tmp_path)):
        with pytest.raises(ScoreFileError, match="not a regular file") as err:
            score_output_file(path, TESTMINI)
        assert path in str(err.value)


def test_repeated_pids_are_warned_and_the_last_counts(tmp_path, caplog):
    path = _write(tmp_path, "out.json", '{"5": {"extraction": "B"}, "5": {"extraction": "A"}}')
    result = score_output_file(path, TESTMINI)
    assert result.per_pid["5"] and "occur more than once" in caplog.text
    caplog.clear()
    path = _write(tmp_path, "out.jsonl", '{"pid": 5, "extraction": "A"}\n{"pid": "5", "extraction": "B"}\n')
    assert not score_output_file(path, TESTMINI).per_pid["5"] and "'5': 2" in caplog.text


def test_eval_score_cli_exits_2_with_one_line(tmp_path, capsys):
    import eval as eval_script

    path = _write(tmp_path, "out.json", "[1, 2]")
    with pytest.raises(SystemExit) as stop:
        eval_script.main(["--bench", "mathvista", "--score", path, "--data-dir", TESTMINI])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.strip().splitlines() == [f"eval.py: error: {path}: item 0 is not a record with a pid"]
    good = _write(tmp_path, "good.json", '{"168": {"extraction": "E"}}')
    eval_script.main(["--bench", "mathvista", "--score", good, "--data-dir", TESTMINI])
    assert capsys.readouterr().out.strip() == "accuracy: 0.1 (1/1000)"


def test_score_jsonl_splits_on_newline_only(tmp_path):
    """Issue 26 (10): what json.dumps(ensure_ascii=False) writes (U+2028, U+0085 raw inside a string) is
    one valid line; str.splitlines() tore it in two and the file was refused."""
    path = tmp_path / "out.jsonl"
    rows = [{"pid": "168", "extraction": "E", "response": "first\u2028second\u0085third\u2029end"},
            {"pid": "849", "extraction": "D", "response": "x\x1cy"}]
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    result = score_output_file(str(path), TESTMINI)
    assert result.per_pid["168"] is True and result.per_pid["849"] is True and result.correct == 2


@pytest.mark.parametrize("name, data, message", [
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
    ("deep.jsonl", b'{"pid": "5", "extraction": "A"}\n' + b"[" * 100_000, "line 2 is unreadable .json_too_deep"),
    ("digits.json", b'{"5": {"extraction": ' + b"9" * 5000 + b"}}", "number_too_long"),
    ("digits.jsonl", b'{"pid": "5", "extraction": ' + b"9" * 5000 + b"}", "line 1 is unreadable .number_too_long"),
    ("surrogate.json", b'{"5": {"extraction": "\\ud800"}}', "lone_surrogate"),
])
def test_score_parser_limits_are_one_line_exit_2(tmp_path, capsys, name, data, message):
    """Issue 26 (10): a 100,000-level nesting or a 5000-digit number was a traceback, not the one line."""
    import eval as eval_script

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SystemExit) as stop:
        eval_script.main(["--bench", "mathvista", "--score", str(path), "--data-dir", TESTMINI])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"eval.py: error: {path}: ")
    assert re.search(message, err[0]), err
