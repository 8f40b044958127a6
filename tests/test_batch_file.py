"""Batch files: exactly one output row per input line whatever it holds, resumable after an
interruption, duplicate ids rejected and never cross-judged, --retry-errors; image limits."""
from __future__ import annotations

import json

import pytest
from batch_fixtures import POISON, poison_assets, write_poisoned_file
from route_fixtures import Interrupt, InterruptingPolicy
from serve_fixtures import bomb_png

from prp.core.data import ImageError, ImageLimits, image_error_reason, load_jsonl, open_image
from prp.core.modeling import load_model
from prp.route import run as route_run
from prp.route.batchfile import read_batch_file
from prp.route.decide import BatchFraction
from prp.route.router import LocalTarget, Router, RouterConfig


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
