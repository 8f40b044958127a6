"""Records for training and routing, and loaders that skip bad input without losing count.

A `Record` is one (image, question, answer) item.  Loaders never raise on a bad line: they
log it and count it in `LoadResult.skipped` under a reason ("bad_json", "missing_question", "empty_question",
"missing_image", "corrupt_image", ...), so a run reports exactly what it dropped.
Images are opened lazily (`Record.load_image`) but checked for existence and readability
at load time when `check_images=True` (prp.core.images holds the image checks).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from prp.core.images import (  # the image half of loading (prp.core.images), re-exported for the loaders' callers
    DEFAULT_IMAGE_LIMITS,
    ImageError,
    ImageLimits,
    _check_image,
    check_image_header,
    decode_image_bytes,
    image_error_reason,
    open_image,
    resolve_image_path,
)
from prp.core.jsonl import iter_json_lines, jsonl_lines, loads

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One question, for training, routing and every benchmark alike.

    ``question`` is the exact text fed to the model (a benchmark's official query where it has
    one); ``split`` names a split or subset reported apart (ChartQA human/augmented, MathVerse
    version); ``meta`` holds the rest of the source row (MathVista's question_type, ...).
    """

    id: str
    question: str
    answer: str | list[str] | None  # gold, e.g. "$17$" or "B"; DocVQA: the accepted answers; None: unlabelled
    image: str | Image.Image | None  # a file path, a decoded image (parquet downloads), or None for text only
    choices: list[str] | None = None
    split: str = ""
    meta: dict = field(default_factory=dict)

    def load_image(self, limits: ImageLimits | None = None) -> Image.Image | None:
        """The image decoded as RGB (`open_image`'s checks for a path); None for a text-only item."""
        if self.image is None or isinstance(self.image, Image.Image):
            return self.image
        return open_image(self.image, limits=limits or DEFAULT_IMAGE_LIMITS) if self.image else None


@dataclass
class LoadResult:
    """What a loader read (training set, routing input or benchmark): the usable records and why
    the others were skipped."""

    records: list[Record]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    errors: list[dict] = field(default_factory=list)  # {"line": n or None, "id": ..., "error": reason}
    missing_images: int = 0  # benchmarks: kept with image=None because require_images=False

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def skip(self, reason: str, record_id, detail: str = "", *, line: int | None = None) -> None:
        """Count, record and log one skipped record."""
        self.skipped[reason] += 1
        self.errors.append({"line": line, "id": record_id, "error": reason})
        log.warning("skipping record %r: %s%s", record_id, reason, f" ({detail})" if detail else "")

    def summary(self) -> str:
        parts = ", ".join(f"{reason}={n}" for reason, n in sorted(self.skipped.items()))
        return f"{len(self.records)} records" + (f", skipped {sum(self.skipped.values())} ({parts})" if parts else "")

    def log_summary(self, name: str) -> None:
        log.info(
            "%s: %d records loaded, %d skipped %s, %d without their image file",
            name, len(self.records), sum(self.skipped.values()), dict(self.skipped), self.missing_images,
        )


def parse_record(raw: dict, *, base_dir: Path, line_no: int, fields: dict[str, str] | None = None,
                 confine_images: bool = False) -> Record:
    """One JSON object -> Record.  `fields` renames keys (e.g. ChartQA's query/label);
    `confine_images`: `resolve_image_path`'s confine (the image stays under `base_dir`)."""
    names = {"id": "id", "question": "question", "answer": "answer", "image": "image", **(fields or {})}
    if names["question"] not in raw:  # e.g. "text" or "prompt" instead: name what is missing and what was found
        found = ", ".join(f'"{k}"' for k in list(raw)[:8]) or "no fields"
        raise ValueError(f'missing_question: no "{names["question"]}" field (the line has {found}); '
                         f'put the question under "{names["question"]}"')
    question = raw.get(names["question"])
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty_question")
    image_path = resolve_image_path(raw.get(names["image"]), base_dir, confine=confine_images)
    answer = raw.get(names["answer"])
    record_id = raw.get(names["id"], f"line-{line_no}")
    meta = {k: v for k, v in raw.items() if k not in names.values()}
    return Record(
        id=str(record_id),
        question=question.strip(),
        answer=None if answer is None else str(answer),
        image=image_path,
        meta=meta,
    )


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, object or None if the line is not a usable JSON object), blank lines left out
    (prp.core.jsonl: split on \\n only; non-UTF-8, too deep, overlong numbers, lone surrogates -> None)."""
    for line_no, raw, error in iter_json_lines(path):
        if error is not None:
            log.warning("%s line %d: %s", Path(path).name, line_no, error)
        yield line_no, raw if isinstance(raw, dict) else None


def load_jsonl(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    fields: dict[str, str] | None = None,
    check_images: bool = True,
    require_answer: bool = False,
    confine_images: bool = False,
) -> LoadResult:
    """A generic JSONL file of {"id", "image", "question", "answer", ...} lines.

    Image paths are relative to `image_root` (default: the file's folder); `confine_images` keeps
    them under it (`resolve_image_path`).  Error line numbers are the file's own.
    """
    path = Path(path)
    return _load_numbered(
        iter_jsonl(path), base_dir=Path(image_root) if image_root else path.parent, source=path.name,
        fields=fields, check_images=check_images, require_answer=require_answer, confine_images=confine_images,
    )


# --------------------------------------------------------------------------------------------
# Training sets: MMK12 and ChartQA train, plus the gold-answer check the trainer needs
# --------------------------------------------------------------------------------------------


def read_parquet(path: str) -> list[dict]:
    """Rows of a Hugging Face parquet shard; pyarrow is imported only here, as it is optional."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs pyarrow (pip install pyarrow); or use the benchmark's JSON files"
        ) from err
    return pq.read_table(path).to_pylist()


def _read_table(path: Path) -> list:
    """Rows of a .jsonl / .json (list or {"data": [...]}) / .parquet file (pyarrow only if needed)."""
    if path.suffix == ".parquet":
        return read_parquet(str(path))
    if path.suffix == ".jsonl":
        return [raw for _, raw in iter_jsonl(path)]  # None: counted as bad_json below
    data = loads(path.read_bytes())  # a JsonError (one line) for bad content
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of records")
    return data


def _materialise_image(raw: dict, key: str, record_id: str, cache_dir: Path) -> None:
    """Parquet rows embed images as {"bytes", "path"}: write the bytes to a file the Record can point to."""
    value = raw.get(key)
    if isinstance(value, dict):
        if value.get("bytes"):
            cache_dir.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record_id)
            target = cache_dir / f"{safe}.img"
            if not target.exists():
                target.write_bytes(value["bytes"])
            raw[key] = str(target)
        else:
            raw[key] = value.get("path")


def _load_numbered(
    rows: Iterable[tuple[int, dict | None]],
    *,
    base_dir: Path,
    source: str,
    fields: dict[str, str] | None = None,
    check_images: bool = True,
    require_image: bool = False,
    require_answer: bool = False,
    image_cache_dir: Path | None = None,
    confine_images: bool = False,
) -> LoadResult:
    """(line number, dict or None for an unreadable line) -> Records, skipping and counting bad ones."""
    names = {"id": "id", "image": "image", **(fields or {})}
    records: list[Record] = []
    skipped: Counter = Counter()
    errors: list[dict] = []

    def skip(line_no: int, record_id, reason: str) -> None:
        skipped[reason.split(":", 1)[0]] += 1  # counted by the reason's name; its details go to the log
        errors.append({"line": line_no, "id": record_id, "error": reason})
        log.warning("%s row %d (id=%s): skipped, %s", source, line_no, record_id, reason)

    for line_no, raw in rows:
        if not isinstance(raw, dict):
            skip(line_no, None, "bad_json")
            continue
        raw = dict(raw)
        record_id = str(raw.get(names["id"], f"line-{line_no}"))  # as parse_record names it
        if image_cache_dir is not None:
            _materialise_image(raw, names["image"], record_id, image_cache_dir)
        try:
            record = parse_record(raw, base_dir=base_dir, line_no=line_no, fields=fields,
                                  confine_images=confine_images)
        except ValueError as exc:  # ImageError too (bad_image_path): the reason code alone
            skip(line_no, record_id, str(exc).split(":", 1)[0])
            continue
        if require_answer and not (record.answer or "").strip():
            skip(line_no, record.id, "missing_answer")
            continue
        if require_image and not record.image:
            skip(line_no, record.id, "missing_image")
            continue
        reason = _check_image(Path(record.image)) if (check_images and record.image) else None
        if reason:
            skip(line_no, record.id, reason)
            continue
        records.append(record)
    return LoadResult(records=records, skipped=skipped, errors=errors)


def load_rows(rows: list, *, base_dir: Path, source: str, require_answer: bool = True, **kwargs) -> LoadResult:
    """Rows (dicts, or None for an unreadable line) -> Records, skipping and counting bad ones."""
    return _load_numbered(enumerate(rows, start=1), base_dir=base_dir, source=source,
                          require_answer=require_answer, **kwargs)


def load_mmk12(
    path: str | Path, *, image_root: str | Path | None = None, image_cache_dir: str | Path | None = None,
    check_images: bool = True,
) -> LoadResult:
    """MMK12 (id, subject, image, question, answer) as JSONL/JSON + image files, or parquet
    (needs pyarrow; embedded image bytes are written to `image_cache_dir`, default <file>.images/)."""
    path = Path(path)
    cache = Path(image_cache_dir) if image_cache_dir else path.with_suffix(".images")
    return load_rows(
        _read_table(path), base_dir=Path(image_root) if image_root else path.parent, source=path.name,
        check_images=check_images, require_image=True,
        image_cache_dir=cache if path.suffix == ".parquet" else None,
    )


def load_chartqa_train(
    path: str | Path, *, image_root: str | Path | None = None, check_images: bool = True
) -> LoadResult:
    """ChartQA train (train_human.json / train_augmented.json: [{"imgname", "query", "label"}]).

    Images live in <split dir>/png/<imgname> in the official release; ids are `<file stem>-<row>`.
    """
    path = Path(path)
    root = Path(image_root) if image_root else path.parent / "png"
    rows = _read_table(path)
    for i, row in enumerate(rows):
        if isinstance(row, dict) and "id" not in row:
            row["id"] = f"{path.stem}-{i}"
    return load_rows(
        rows, base_dir=root, source=path.name, check_images=check_images, require_image=True,
        fields={"question": "query", "answer": "label", "image": "imgname"},
    )


def drop_unparsable_gold(result: LoadResult) -> LoadResult:
    """Skip records whose gold the accuracy reward cannot read (it would call every answer wrong)."""
    from prp.core.judge import accuracy_reward

    kept = []
    for record in result.records:
        if record.answer is None or accuracy_reward(record.answer, record.answer) is None:
            result.skipped["unparsable_answer"] += 1
            result.errors.append({"line": None, "id": record.id, "error": "unparsable_answer"})
            log.warning("record %s: skipped, unparsable gold %r", record.id, record.answer)
            continue
        kept.append(record)
    result.records = kept
    return result


__all__ = [
    "DEFAULT_IMAGE_LIMITS", "ImageError", "ImageLimits", "LoadResult", "Record", "check_image_header",
    "decode_image_bytes", "drop_unparsable_gold", "image_error_reason", "iter_jsonl", "jsonl_lines",
    "load_chartqa_train", "load_jsonl", "load_mmk12", "load_rows", "open_image", "parse_record", "read_parquet",
    "resolve_image_path",
]
