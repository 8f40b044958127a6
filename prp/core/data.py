"""Records for training and routing, and loaders that skip bad input without losing count.

A `Record` is one (image, question, answer) item.  Loaders never raise on a bad line: they
log it and count it in `LoadResult.skipped` under a reason ("bad_json", "empty_question",
"missing_image", "corrupt_image", ...), so a run reports exactly what it dropped.
Images are opened lazily (`Record.load_image`) but checked for existence and readability
at load time when `check_images=True`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image that is missing or cannot be decoded."""


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


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be before its pixels are decoded (checked from the header alone).

    `max_pixels`: width x height; decoded RGB costs 3 bytes a pixel, so a 259 KB PNG that claims
    13000 x 13000 would cost ~0.5 GB decoded (2.3 GB with the processor's copies).
    `max_aspect_ratio`: long side / short side; the Qwen2-VL processor's `smart_resize` raises
    above 200.  `max_file_bytes`: the encoded file.
    """

    max_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 200.0
    max_file_bytes: int = 32 * 1024 * 1024


DEFAULT_IMAGE_LIMITS = ImageLimits()


def check_image_header(image: Image.Image, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> str | None:
    """The reason an opened (not yet decoded) image breaks `limits`, or None.

    >>> check_image_header(Image.new("RGB", (3000, 1)))
    'image_aspect_ratio: 3000x1 (long/short side 3000 > 200)'
    >>> check_image_header(Image.new("RGB", (20, 10))) is None
    True
    """
    width, height = image.size
    if width < 1 or height < 1:
        return f"image_size: {width}x{height}"
    if width * height > limits.max_pixels:
        return f"image_too_large: {width}x{height} = {width * height} pixels > {limits.max_pixels}"
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        return f"image_aspect_ratio: {width}x{height} (long/short side {ratio:g} > {limits.max_aspect_ratio:g})"
    return None


@contextlib.contextmanager
def _quiet_bomb_warning():
    """PIL warns about a huge image as it reads the header; the limits refuse it by name instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _decode(fp, label: str, limits: ImageLimits, *, formats: tuple[str, ...] | None = None,
            on_header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Open (header only), check the limits, then decode to RGB.  PIL's own decompression-bomb
    guard stays on as a second line; its error is not an OSError, so it is named here.  `formats`:
    the only Pillow formats tried (None: all); `on_header(image)` runs after the checks, before decoding."""
    try:
        with _quiet_bomb_warning(), Image.open(fp, formats=formats) as image:
            problem = check_image_header(image, limits)
            if problem:
                raise ImageError(problem)
            if on_header is not None:
                on_header(image)
            return image.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image_too_large: {label}: {_without_reprs(exc)}") from exc
    except UnidentifiedImageError as exc:
        kinds = f" as {'/'.join(formats)}" if formats else ""
        raise ImageError(f"corrupt_image: {label}: not a readable image{kinds}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt_image: {label}: {_without_reprs(exc)}") from exc


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _without_reprs(exc: BaseException) -> str:
    """The message without object reprs (Pillow names an upload `<_io.BytesIO object at 0x7f...>`).

    >>> _without_reprs(OSError("cannot identify image file <_io.BytesIO object at 0x7f0a12>"))
    'cannot identify image file <data>'
    """
    return _REPR.sub("<data>", str(exc))


def _regular_file(path: Path, limits: ImageLimits) -> None:
    """Only a regular file of bounded size is opened: a FIFO would block the reader forever, and a
    directory or a device is never an image."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ImageError(f"missing_image: {path}") from exc
    except OSError as exc:
        raise ImageError(f"unreadable_image: {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"not_a_file: {path}")
    if info.st_size > limits.max_file_bytes:
        raise ImageError(f"image_file_too_large: {path}: {info.st_size} bytes > {limits.max_file_bytes}")


def open_image(path: str | Path, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image.Image:
    """Open and fully decode an image as RGB; ImageError if it cannot be read or breaks `limits`.

    The message starts with the reason (missing_image, unreadable_image, not_a_file,
    image_file_too_large, image_too_large, image_aspect_ratio, image_size, corrupt_image)."""
    path = Path(path)
    _regular_file(path, limits)
    return _decode(path, str(path), limits)


def decode_image_bytes(raw: bytes, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
                       formats: tuple[str, ...] | None = None,
                       on_header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """`open_image` for bytes already in memory (an uploaded image); `formats` and `on_header` as in `_decode`."""
    if len(raw) > limits.max_file_bytes:
        raise ImageError(f"image_file_too_large: {len(raw)} bytes > {limits.max_file_bytes}")
    return _decode(io.BytesIO(raw), "uploaded image", limits, formats=formats, on_header=on_header)


def image_error_reason(exc: ImageError) -> str:
    """The reason code an ImageError's message starts with.

    >>> image_error_reason(ImageError("corrupt_image: a.png: truncated"))
    'corrupt_image'
    """
    return str(exc).split(":", 1)[0]


def _check_image(path: Path, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> str | None:
    """The skip reason for an unusable image, or None.  The size limits come from the header and
    `verify()` checks the file without decoding the pixels (loading stays cheap); a file that still
    fails to decode later is caught where the image is used."""
    try:
        _regular_file(path, limits)
        with _quiet_bomb_warning(), Image.open(path) as image:
            problem = check_image_header(image, limits)
            if problem:
                return image_error_reason(ImageError(problem))
            image.verify()
    except ImageError as exc:
        return image_error_reason(exc)
    except Image.DecompressionBombError:
        return "image_too_large"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return "corrupt_image"
    return None


def parse_record(raw: dict, *, base_dir: Path, line_no: int, fields: dict[str, str] | None = None) -> Record:
    """One JSON object -> Record.  `fields` renames keys (e.g. ChartQA's query/label)."""
    names = {"id": "id", "question": "question", "answer": "answer", "image": "image", **(fields or {})}
    question = raw.get(names["question"])
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty_question")
    image = raw.get(names["image"])
    image_path = None
    if image:
        image_path = Path(image) if Path(image).is_absolute() else base_dir / image
    answer = raw.get(names["answer"])
    record_id = raw.get(names["id"], f"line-{line_no}")
    meta = {k: v for k, v in raw.items() if k not in names.values()}
    return Record(
        id=str(record_id),
        question=question.strip(),
        answer=None if answer is None else str(answer),
        image=str(image_path) if image_path else None,
        meta=meta,
    )


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line's bytes without its newline) for every non-blank line of a
    JSONL file: the one JSONL line reader.  Bytes, so each caller decides what a line that is not
    UTF-8 or not JSON means (a counted skip, a logged None row, or an error).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write(b'{"a": 1}\\n\\n  \\n{torn')
    >>> list(jsonl_lines(f.name))
    [(1, b'{"a": 1}'), (4, b'{torn')]
    >>> Path(f.name).unlink()
    """
    with Path(path).open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line[:-1] if line.endswith(b"\n") else line


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, object or None if the line is not a JSON object), blank lines left out."""
    for line_no, line in jsonl_lines(path):
        try:
            raw = json.loads(line.decode("utf-8"))  # one non-UTF-8 line is a bad line, not a crash
        except (UnicodeDecodeError, json.JSONDecodeError):
            raw = None
        yield line_no, raw if isinstance(raw, dict) else None


def load_jsonl(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    fields: dict[str, str] | None = None,
    check_images: bool = True,
    require_answer: bool = False,
) -> LoadResult:
    """A generic JSONL file of {"id", "image", "question", "answer", ...} lines.

    Image paths are relative to `image_root` (default: the file's folder).  Error line numbers
    are the file's own.
    """
    path = Path(path)
    return _load_numbered(
        iter_jsonl(path), base_dir=Path(image_root) if image_root else path.parent, source=path.name,
        fields=fields, check_images=check_images, require_answer=require_answer,
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
    data = json.loads(path.read_text(encoding="utf-8"))
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
) -> LoadResult:
    """(line number, dict or None for an unreadable line) -> Records, skipping and counting bad ones."""
    names = {"id": "id", "image": "image", **(fields or {})}
    records: list[Record] = []
    skipped: Counter = Counter()
    errors: list[dict] = []

    def skip(line_no: int, record_id, reason: str) -> None:
        skipped[reason] += 1
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
            record = parse_record(raw, base_dir=base_dir, line_no=line_no, fields=fields)
        except ValueError as exc:
            skip(line_no, record_id, str(exc))
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
