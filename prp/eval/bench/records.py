"""The common score result of every benchmark, plus file readers (records and load results: prp.core.data).

Loaders never crash on one bad record: they skip it, count the reason in
``LoadResult.skipped`` and log a warning, so a partly corrupt download still evaluates.
"""
from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from prp.core.data import LoadResult, read_parquet
from prp.core.jsonl import JsonError, jsonl_lines, loads, read_json_file

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """Accuracy over a benchmark: totals, each item's verdict and per-group counts."""

    correct: int
    total: int
    per_pid: dict[str, bool] = field(default_factory=dict)
    per_group: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (correct, total)

    @property
    def accuracy(self) -> float:
        """Percent correct (0.0 for an empty benchmark)."""
        return 100.0 * self.correct / self.total if self.total else 0.0

    def format(self) -> str:
        return format_accuracy(self.correct, self.total)


@dataclass
class AnlsResult:
    """DocVQA's ANLS: the mean of per-question similarities (0..1), not a count of correct."""

    score: float
    total: int
    per_pid: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        return f"anls: {self.score:.4f} ({self.total} questions)"


def format_accuracy(correct: int, total: int) -> str:
    """The one-line report eval.py prints.

    >>> format_accuracy(348, 1000)
    'accuracy: 34.8 (348/1000)'
    """
    accuracy = 100.0 * correct / total if total else 0.0
    return f"accuracy: {accuracy:.1f} ({correct}/{total})"


def group_counts(per_pid: dict[str, bool], group_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """(correct, total) per group, for the items that have a group."""
    counts: dict[str, list[int]] = {}
    for pid, ok in per_pid.items():
        if pid in group_of:
            c = counts.setdefault(group_of[pid], [0, 0])
            c[0] += bool(ok)
            c[1] += 1
    return {g: (c, t) for g, (c, t) in counts.items()}


def read_rows(path: str) -> list[dict]:
    """Rows of a .json (list, ``{"data": [...]}`` or dict keyed by id), .jsonl or .parquet file.

    A JSONL line that is not valid JSON is left out with a warning (the caller counts rows it
    cannot use); a whole file that cannot be read raises, since nothing could be evaluated.
    """
    if path.endswith(".parquet"):
        return read_parquet(path)
    if path.endswith(".jsonl"):
        rows = []
        for n, line in jsonl_lines(path):
            try:
                rows.append(loads(line))
            except JsonError as err:  # not UTF-8 / JSON, too deep, an overlong number: that row only
                log.warning("%s:%d: %s", path, n, err)
                rows.append(None)  # still a row, so the loader counts it as malformed
        return rows
    data = read_json_file(path)  # a one-line JsonError for bad content
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return data["data"]
    if isinstance(data, dict):
        return [dict(v, _key=k) if isinstance(v, dict) else v for k, v in data.items()]
    if isinstance(data, list):
        return data
    raise ValueError(f"{path}: expected a JSON list or object, got {type(data).__name__}")


def decode_image(value: Any, root: str) -> tuple[Any, bool]:
    """(image, found) from a path string or a Hugging Face image struct {"bytes", "path"}.

    A path is joined to ``root`` and returned as a string; embedded bytes become a PIL image.
    ``found`` is False when a path is given but no such file exists.  No image -> (None, True).
    """
    if isinstance(value, dict):
        if value.get("bytes"):
            from PIL import Image

            return Image.open(io.BytesIO(value["bytes"])), True
        value = value.get("path")
    if value is None or value == "":
        return None, True
    if not isinstance(value, str):  # already a PIL image (datasets' decoded column)
        return value, True
    path = value if os.path.isabs(value) else os.path.join(root, value)
    return (path, True) if os.path.isfile(path) else (None, False)


def attach_image(result: LoadResult, value: Any, root: str, record_id: str, require: bool) -> tuple[Any, bool]:
    """Resolve a record's image; (image, keep).  A missing file skips the record if required."""
    try:
        image, found = decode_image(value, root)
    except (OSError, ValueError) as err:  # corrupt embedded bytes: one bad image, not a dead run
        result.skip("bad_image", record_id, str(err))
        return None, False
    if found:
        return image, True
    if require:
        result.skip("missing_image", record_id, str(value))
        return None, False
    result.missing_images += 1
    return None, True


def as_int_or_none(value: Any) -> int | None:
    """HF stores MathVista's precision as a float (and null as NaN); round() needs an int."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)
