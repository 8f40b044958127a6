"""Batch files for `route.py --data`: every input line is one item, whatever it holds.

`read_batch_file` turns each physical line of the file (1-based `line`) into a `BatchLine`: a
record to route, or the reason it cannot be routed.  Nothing here raises on bad content:

    blank line -> "empty_line"          bytes that are not UTF-8 -> "bad_utf8"
    not JSON -> "bad_json"              JSON that is not an object -> "not_an_object"
    id not a string/number -> "bad_id"  a blank question -> "empty_question"
    no "question" field -> "missing_question: no "question" field (the line has "id", "text"); ..."
    an id seen on an earlier line -> "duplicate_id: first on line K" (the first line keeps the id)

Images are opened later, batch by batch (prp.core.data.open_image: missing, unreadable, FIFO,
directory, oversized, decompression bomb, extreme aspect ratio -> an error row each).

Identity is the line number, not the id: output rows carry `line`, `--resume` skips lines already
written, and gold answers travel with their own line, so two lines can never be judged against
each other's gold.  A line without an `id` field gets `line-N`; the error row of a line whose id
cannot be read has `"id": null`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prp.core.data import Record, parse_record


@dataclass
class BatchLine:
    line: int  # 1-based line number in the input file
    id: str | None  # the id its output row carries (None when it cannot be read)
    record: Record | None  # None on an error line
    error: str | None = None


def _parse_line(raw: bytes, line: int, base_dir: Path) -> BatchLine:
    if not raw.strip():
        return BatchLine(line, None, None, "empty_line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BatchLine(line, None, None, f"bad_utf8: byte {exc.start}")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return BatchLine(line, None, None, f"bad_json: {getattr(exc, 'msg', type(exc).__name__)}")
    if not isinstance(obj, dict):
        return BatchLine(line, None, None, "not_an_object")
    rid = obj.get("id", f"line-{line}")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
        return BatchLine(line, None, None, "bad_id: the id must be a non-empty string or an integer")
    rid = str(rid)
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        return BatchLine(line, rid, None, "bad_image_field: the image must be a path")
    try:
        record = parse_record(obj, base_dir=base_dir, line_no=line)
    except (ValueError, TypeError, OSError) as exc:  # e.g. empty_question; a path with a NUL byte
        return BatchLine(line, rid, None, str(exc) or type(exc).__name__)
    record.id = rid
    return BatchLine(line, rid, record)


def read_batch_file(path: str | Path, *, image_root: str | Path | None = None) -> list[BatchLine]:
    """One BatchLine per line of `path` (a final newline does not start another line).

    Image paths are relative to `image_root` (default: the file's folder).
    """
    path = Path(path)
    base_dir = Path(image_root) if image_root else path.parent
    chunks = path.read_bytes().split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    out, first_line_of = [], {}
    for n, raw in enumerate(chunks, start=1):
        item = _parse_line(raw.rstrip(b"\r"), n, base_dir)
        if item.record is not None:
            if item.id in first_line_of:
                item = BatchLine(n, item.id, None, f"duplicate_id: first on line {first_line_of[item.id]}")
            else:
                first_line_of[item.id] = n
        out.append(item)
    return out
