"""Batch files: exactly one output row per input line whatever it holds, resumable after an
interruption, duplicate ids rejected and never cross-judged, --retry-errors; image limits."""
from __future__ import annotations

import json

import pytest
from batch_fixtures import POISON, poison_assets, write_poisoned_file
from route_fixtures import Interrupt, InterruptingPolicy, build_queries
from serve_fixtures import bomb_png

from prp.core.data import ImageError, ImageLimits, image_error_reason, load_jsonl, open_image
from prp.core.modeling import load_model
from prp.route import run as route_run
from prp.route.batchfile import read_batch_file
from prp.route.decide import BatchFraction
from prp.route.router import Router, RouterConfig
from prp.route.targets import LocalTarget


@pytest.fixture(scope="module")
def router(pair):
    draft, proc = load_model(pair["draft"])
    tmodel, tproc = load_model(pair["target"])
    return Router(draft, proc, LocalTarget(tmodel, tproc, max_new_tokens=2),
                  RouterConfig(mode="drl", rating="forced", max_new_tokens=2))


def _judge(record, answer):  # any deterministic judge: what matters is whose gold it sees
    return answer == record.answer


def test_open_image_refuses_what_would_hang_or_explode(tmp_path):
    assets = poison_assets(tmp_path)
    reasons = {}
    for kind in ("aspect", "bomb", "fifo", "directory", "corrupt"):
        with pytest.raises(ImageError) as exc:
            open_image(assets[kind])  # a FIFO would block here forever without the check
        reasons[kind] = image_error_reason(exc.value)
    assert reasons == {"aspect": "image_aspect_ratio", "bomb": "image_too_large", "fifo": "not_a_file",
                       "directory": "not_a_file", "corrupt": "corrupt_image"}
    with pytest.raises(ImageError, match="missing_image"):
        open_image(tmp_path / "nope.png")
    # the limits are parameters: 199:1 passes the default (the Qwen processor's bound is 200)
    (tmp_path / "thin.png").write_bytes(bomb_png(199, 1))
    with pytest.raises(ImageError, match=r"image_size|corrupt"):  # header fine, pixel data truncated
        open_image(tmp_path / "thin.png")
    with pytest.raises(ImageError, match="image_aspect_ratio"):
        open_image(tmp_path / "thin.png", limits=ImageLimits(max_aspect_ratio=100))


def test_training_loader_counts_non_utf8_and_bad_images(tmp_path):
    assets = poison_assets(tmp_path / "p")
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"id": "a", "question": "caf\xe9?", "answer": "1"}\n'
                     + json.dumps({"id": "b", "question": "q", "answer": "1", "image": assets["aspect"]}).encode()
                     + b"\n" + json.dumps({"id": "c", "question": "q", "answer": "1", "image": assets["fifo"]}).encode()
                     + b"\n" + json.dumps({"id": "d", "question": "q", "answer": "1"}).encode() + b"\n")
    loaded = load_jsonl(path, check_images=True)
    assert [r.id for r in loaded.records] == ["d"]
    assert loaded.skipped == {"bad_json": 1, "image_aspect_ratio": 1, "not_a_file": 1}


def test_read_batch_file_one_item_per_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"id": "a", "question": "q"}\n\n\xff\n{"question": "q2"}\r\n{"id": "a", "question": "q3"}\n'
                     b'{"id": 7, "question": "q4"}\n{"id": true, "question": "q"}\n{"id": "x", "question": "q", '
                     b'"image": 5}')  # no final newline
    items = read_batch_file(path)
    assert [(i.line, i.id, (i.error or "").split(":")[0]) for i in items] == [
        (1, "a", ""), (2, None, "empty_line"), (3, None, "bad_utf8"), (4, "line-4", ""),
        (5, "a", "duplicate_id"), (6, "7", ""), (7, None, "bad_id"), (8, "x", "bad_image_field")]
    assert items[4].error == "duplicate_id: first on line 1"


def test_poisoned_file_interrupted_then_resumed_loses_and_repeats_nothing(router, tmp_path):
    path, expected = write_poisoned_file(tmp_path, 100)
    assert len(expected) == 11 and set(expected.values()) <= set(POISON.values())  # line 6 + every 10th
    out = tmp_path / "routes.jsonl"
    with pytest.raises(Interrupt):
        route_run.route_file(router, path, out, InterruptingPolicy(at_batch=3), batch_size=16, judge=_judge)
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert 0 < len(written) < 100
    with out.open("a") as f:
        f.write('{"id": "v0004')  # a line torn by the kill
    rows = route_run.route_file(router, path, out, BatchFraction(0.5), batch_size=16, resume=True, judge=_judge)
    assert [r["line"] for r in rows] == list(range(1, 101))  # one row per input line, none twice
    by_line = {r["line"]: r for r in rows}
    for n, reason in expected.items():
        assert by_line[n]["error"].split(":")[0] == reason and by_line[n]["route"] is None, (n, by_line[n])
    ok = [r for r in rows if r["line"] not in expected]
    assert all(r["error"] is None and r["route"] in ("draft", "target") for r in ok)
    assert by_line[7]["id"] == "line-6" and by_line[6]["id"] is None  # the broken line 6 hides nobody
    # the duplicate of v00001 (another gold) was rejected, and v00001 was judged on its own gold
    dup = [r for r in rows if (r["error"] or "").startswith("duplicate_id")]
    assert dup and all(r["id"] == "v00001" and r.get("gold") is None for r in dup)
    assert by_line[1]["gold"] != "$999999$"
    raw = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["line"] for r in raw) == list(range(1, 101))  # the file itself, not just the return value
    # --retry-errors: error rows are routed again, still one row per line
    rows = route_run.route_file(router, path, out, BatchFraction(0.5), batch_size=16, resume=True, retry_errors=True)
    assert sorted(r["line"] for r in rows) == list(range(1, 101))
    assert sum(1 for r in rows if r["error"]) == len(expected)


def test_resume_refuses_an_output_written_for_another_input(router, tmp_path):
    path, _ = write_poisoned_file(tmp_path, 12)
    out = tmp_path / "routes.jsonl"
    route_run.route_file(router, path, out, BatchFraction(0.5), batch_size=16)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="input changed"):
        route_run.route_file(router, other, out, BatchFraction(0.5), batch_size=16, resume=True)


def test_image_limit_flags_apply_to_batch_files(router, tmp_path):
    """route.py's --max-image-pixels / --max-aspect-ratio reach the batch file (they were served-only)."""
    path, _ = write_poisoned_file(tmp_path, 3)
    limits = ImageLimits(max_pixels=10, max_aspect_ratio=200.0)  # every demo image is larger than 10 pixels
    rows = route_run.route_file(router, path, tmp_path / "out.jsonl", BatchFraction(0.5), image_limits=limits)
    with_image = [r for r, rec in zip(rows, map(json.loads, path.read_text().splitlines()), strict=True)
                  if rec.get("image")]
    assert with_image and all((r["error"] or "").startswith("image_too_large") for r in with_image)


def test_an_overlong_question_gets_its_own_error_row(router, tmp_path):
    path, _ = write_poisoned_file(tmp_path, 5)
    lines = path.read_text().splitlines()
    long_q = json.dumps({"id": "long", "question": "1 2 3 4 5 " * 40})  # ~200 tokens
    path.write_text("\n".join([*lines, long_q, json.dumps({"id": "huge", "question": "x" * 5000})]) + "\n")
    rows = route_run.route_file(router, path, tmp_path / "out.jsonl", BatchFraction(0.5), batch_size=16,
                                max_prompt_tokens=50)
    by_id = {r["id"]: r for r in rows}
    assert by_id["long"]["error"].startswith("prompt_too_long") and "> 50" in by_id["long"]["error"]
    assert by_id["huge"]["error"] == "prompt_too_long: 5000 characters for a limit of 50 tokens"
    assert [r["error"] for r in rows if r["line"] <= 5] == [None] * 5  # the neighbours were routed
    assert route_run.default_prompt_limit(router) >= 256


# ------------------------------------------------------------------------------ issue 26: hostile lines


def _hostile_batch(tmp_path):
    """The lines of issue 26 (5) between good ones: {line: the reason its error row starts with}."""
    good = [json.loads(x) for x in build_queries(tmp_path / "imgs", 2).read_text().splitlines()]
    for g in good:
        g["image"] = f"imgs/{g['image']}"  # relative to the batch file's folder
    lines = {
        1: (json.dumps(good[0]).encode(), None),
        2: (b'{"id": "big", "question": "q", "answer": ' + b"9" * 5000 + b"}", "number_too_long"),
        3: (b'{"id": "nul", "question": "q", "image": "ok\\u0000.png"}', "bad_image_path"),
        4: (b'{"id": "sur", "question": "lone \\ud800 surrogate"}', "lone_surrogate"),
        5: (b'{"id": "int", "question": "q", "image": 5}', "bad_image_field"),
        6: (b"[" * 100_000, "json_too_deep"),
        7: (json.dumps({"id": "long", "question": "q", "image": "a" * 5000 + ".png"}).encode(), "bad_image_path"),
        8: (json.dumps({**good[1], "question": "What is the sum\u2028of the numbers?\u0085"},
                       ensure_ascii=False).encode(), None),  # U+2028 / U+0085 inside a string: one line
    }
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(raw for raw, _ in lines.values()) + b"\n")
    return path, {n: reason for n, (_, reason) in lines.items()}


def test_read_batch_file_turns_every_hostile_line_into_its_error(tmp_path):
    path, expected = _hostile_batch(tmp_path)
    items = read_batch_file(path)
    assert [(i.line, (i.error or "").split(":")[0] or None) for i in items] == list(expected.items())
    assert all("\n" not in (i.error or "") for i in items)


def test_hostile_lines_get_error_rows_and_resume_and_report_go_on(router, tmp_path):
    """Issue 26 (5): each line was a crash of the whole run (exit 1, 0 rows) or of the report step."""
    from prp.eval.html import write_routes_html

    path, expected = _hostile_batch(tmp_path)
    out = tmp_path / "routes.jsonl"
    rows = route_run.route_file(router, path, out, BatchFraction(0.5), batch_size=4, judge=_judge)
    assert [(r["line"], (r["error"] or "").split(":")[0] or None) for r in rows] == list(expected.items())
    assert all(r["route"] in ("draft", "target") for r in rows if expected[r["line"]] is None)
    # an interruption after 3 rows, then --resume: it goes past the bad lines again, one row per line
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))
    rows = route_run.route_file(router, path, out, BatchFraction(0.5), batch_size=4, resume=True, judge=_judge)
    assert [r["line"] for r in rows] == list(expected)
    # the report step (route.py's browser page) reads the same lines
    records = [bl.record for bl in read_batch_file(path) if bl.record]
    assert write_routes_html(out, rows, records=records).is_file()
    assert write_routes_html(out, rows, records=path).is_file()  # records_by_id reading the file itself
    from prp.eval.html_page import relative_href  # the crash of the 5000-character path: ENAMETOOLONG

    assert relative_href("a" * 5000 + ".png", tmp_path) is None and relative_href("ok\x00.png", tmp_path) is None


def test_batch_image_paths_stay_under_the_image_root(tmp_path):
    """Issue 26 (6): absolute, `..` and symlinked-outside paths are refused with one message that does
    not tell whether (or what) exists outside; inside paths, --image-root and the opt-out flag work."""
    from serve_fixtures import png_bytes

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    (elsewhere / "real.png").write_bytes(png_bytes(size=(8, 8)))
    (data / "inside.png").write_bytes(png_bytes(size=(8, 8)))
    (data / "passwd.png").symlink_to("/etc/passwd")
    (data / "real-link.png").symlink_to(elsewhere / "real.png")
    (data / "nowhere-link.png").symlink_to(elsewhere / "nothing.png")
    outside = ["../../../../etc/passwd", "/etc/shadow", "passwd.png", "/proc/self/environ", "../elsewhere/real.png",
               "real-link.png", "nowhere-link.png", "/nonexistent/nothing.png", "../nothing-here.png",
               "sub/../../elsewhere/real.png"]
    path = data / "b.jsonl"
    path.write_text("".join(json.dumps({"id": f"i{k}", "question": "q", "image": image}) + "\n"
                            for k, image in enumerate([*outside, "inside.png"])))
    items = read_batch_file(path)
    errors = {i.error for i in items[:-1]}
    assert len(errors) == 1 and errors.pop().startswith("bad_image_path: outside the image root")
    assert all(i.record is None for i in items[:-1])
    assert items[-1].record is not None and open_image(items[-1].record.image).size == (8, 8)
    # --allow-outside-image-paths: the real image elsewhere is routed again
    allowed = {i.id: i for i in read_batch_file(path, allow_outside_images=True)}
    assert open_image(allowed["i4"].record.image).size == (8, 8)
    assert open_image(allowed["i5"].record.image).size == (8, 8)
    # --image-root: paths are relative to it and stay under it
    (data / "c.jsonl").write_text('{"id": "a", "question": "q", "image": "real.png"}\n'
                                  '{"id": "b", "question": "q", "image": "../data/inside.png"}\n')
    rooted = read_batch_file(data / "c.jsonl", image_root=elsewhere)
    assert rooted[0].record is not None and rooted[1].error.startswith("bad_image_path")
