"""Batch files for `route.py --data`: every input line is one item, whatever it holds.

`read_batch_file` turns each physical line of the file (1-based `line`) into a `BatchLine`: a
record to route, or the reason it cannot be routed.  Nothing here raises on bad content:

    blank line -> "empty_line"          bytes that are not UTF-8 -> "bad_utf8"
    not JSON -> "bad_json"              JSON that is not an object -> "not_an_object"
    nested too deep -> "json_too_deep"  an integer over 4300 digits -> "number_too_long"
    a lone surrogate -> "lone_surrogate" (prp.core.jsonl reads every line)
    id not a string/number -> "bad_id"  a blank question -> "empty_question"
    no "question" field -> "missing_question: no "question" field (the line has "id", "text"); ..."
    image not a string -> "bad_image_field"
    image path with a NUL, overlong, or outside the image root -> "bad_image_path"
    an id seen on an earlier line -> "duplicate_id: first on line K" (the first line keeps the id)
    anything else that fails on one line -> "bad_line: <exception type>" (never the whole file)

Image paths stay under the image root (the file's folder, or --image-root) unless
`allow_outside_images` (--allow-outside-image-paths): prp.core.data.resolve_image_path.
Images are opened later, batch by batch (prp.core.data.open_image: missing, unreadable, FIFO,
directory, oversized, decompression bomb, extreme aspect ratio -> an error row each).

Identity is the line number, not the id: output rows carry `line`, `--resume` skips lines already
written, and gold answers travel with their own line, so two lines can never be judged against
each other's gold.  A line without an `id` field gets `line-N`; the error row of a line whose id
cannot be read has `"id": null`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prp.core.data import Record, parse_record
from prp.core.jsonl import JsonError, loads, open_regular


@dataclass
class BatchLine:
    line: int  # 1-based line number in the input file
    id: str | None  # the id its output row carries (None when it cannot be read)
    record: Record | None  # None on an error line
    error: str | None = None


def _parse_line(raw: bytes, line: int, base_dir: Path, confine: bool) -> BatchLine:
    if not raw.strip():
        return BatchLine(line, None, None, "empty_line")
    try:
        obj = loads(raw)
    except JsonError as exc:
        return BatchLine(line, None, None, str(exc))
    if not isinstance(obj, dict):
        return BatchLine(line, None, None, "not_an_object")
    rid = obj.get("id", f"line-{line}")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
        return BatchLine(line, None, None, "bad_id: the id must be a non-empty string or an integer")
    rid = str(rid)
    try:
        record = parse_record(obj, base_dir=base_dir, line_no=line, confine_images=confine)
    except ValueError as exc:  # empty_question, bad_image_field, bad_image_path (an ImageError)
        return BatchLine(line, rid, None, str(exc) or type(exc).__name__)
    record.id = rid
    return BatchLine(line, rid, record)


def read_batch_file(path: str | Path, *, image_root: str | Path | None = None,
                    allow_outside_images: bool = False) -> list[BatchLine]:
    """One BatchLine per line of `path` (a final newline does not start another line).

    Image paths are relative to `image_root` (default: the file's folder) and stay under it unless
    `allow_outside_images`.
    """
    path = Path(path)
    base_dir = Path(image_root) if image_root else path.parent
    with open_regular(path) as f:
        chunks = f.read().split(b"\n")  # \n only, as prp.core.jsonl (never str.splitlines)
    if chunks and chunks[-1] == b"":
        chunks.pop()
    out, first_line_of = [], {}
    for n, raw in enumerate(chunks, start=1):
        try:
            item = _parse_line(raw.rstrip(b"\r"), n, base_dir, not allow_outside_images)
        except Exception as exc:  # one line never ends the file: it becomes that line's error row
            item = BatchLine(n, None, None, f"bad_line: {type(exc).__name__}")
        if item.record is not None:
            if item.id in first_line_of:
                item = BatchLine(n, item.id, None, f"duplicate_id: first on line {first_line_of[item.id]}")
            else:
                first_line_of[item.id] = n
        out.append(item)
    return out
