"""A batch file with poisoned lines of every kind (shared by the batch-file tests)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from route_fixtures import build_queries
from serve_fixtures import bomb_png, png_bytes

# poison kind -> the reason its error row must start with
POISON = {  # in the order the 1-in-10 poisoned lines cycle through them
    "duplicate": "duplicate_id", "bad_utf8": "bad_utf8", "aspect": "image_aspect_ratio",
    "bomb": "image_too_large", "fifo": "not_a_file", "directory": "not_a_file", "missing": "missing_image",
    "corrupt": "corrupt_image", "empty_question": "empty_question", "bad_json": "bad_json", "blank": "empty_line",
    "not_object": "not_an_object", "bad_id": "bad_id",
}


def poison_assets(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (root / "aspect.png").write_bytes(png_bytes(size=(3000, 1)))
    (root / "bomb.png").write_bytes(bomb_png(13000, 13000))
    fifo = root / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)  # opening it to read would block forever
    (root / "dir.png").mkdir(exist_ok=True)
    files = {k: str(root / f"{k}.png") for k in ("corrupt", "aspect", "bomb", "fifo")}
    return files | {"directory": str(root / "dir.png")}


def poisoned_line(kind: str, n: int, assets: dict[str, str], valid: dict) -> bytes:
    q = "What is the sum of the numbers in the image?"
    if kind == "bad_utf8":
        return b'{"id": "p' + str(n).encode() + b'", "question": "caf\xe9"}'
    if kind == "bad_json":
        return b'{"id": "broken", "question": '
    if kind == "blank":
        return b"   "
    if kind == "not_object":
        return b'["a", "list"]'
    if kind == "bad_id":
        obj = {"id": {"nested": 1}, "question": q}
    elif kind == "empty_question":
        obj = {"id": f"p{n}", "question": " "}
    elif kind == "missing":
        obj = {"id": f"p{n}", "question": q, "image": "nonexistent/x.png"}
    elif kind == "duplicate":
        obj = {**valid, "answer": "$999999$"}  # the same id as an earlier valid line, another gold
    else:
        obj = {"id": f"p{n}", "question": q, "image": assets[kind]}
    return json.dumps(obj).encode()


def write_poisoned_file(tmp: Path, n_lines: int, *, every: int = 10) -> tuple[Path, dict[int, str]]:
    """n_lines lines; every `every`-th line (1 in 10) is poisoned, cycling through POISON's kinds.

    Returns (path, {line number: expected error reason}).  Line 6 is poisoned and a later valid
    line carries the id "line-6" (it must not vanish).  Image paths are relative to `tmp`, the
    file's folder (batch image paths stay under it).
    """
    base = build_queries(tmp / "imgs", 10)
    good = [json.loads(x) for x in base.read_text().splitlines()]
    for g in good:
        g["image"] = os.path.relpath(base.parent / g["image"], tmp)
    assets = {k: os.path.relpath(v, tmp) for k, v in poison_assets(tmp / "poison").items()}
    kinds = list(POISON)
    lines, expected, k = [], {}, 0
    for n in range(1, n_lines + 1):
        if n == 6 or n % every == 0:
            kind = "bad_json" if n == 6 else kinds[k % len(kinds)]
            k += n != 6
            lines.append(poisoned_line(kind, n, assets, valid={**good[0], "id": "v00001"}))
            expected[n] = POISON[kind]
        else:
            rec = {**good[n % 10], "id": "line-6" if n == 7 else f"v{n:05d}"}
            lines.append(json.dumps(rec).encode())
    path = tmp / "batch.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected
