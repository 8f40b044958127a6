"""The one reader of JSON / JSONL files that a user hands the project (batch files, training and
benchmark data, model outputs to score, metrics logs, checkpoint state, saved thresholds).

Two rules every caller inherits:

- A JSONL file is split on the byte ``\\n`` only.  ``str.splitlines()`` also splits at U+2028,
  U+2029, U+0085, ``\\x1c``-``\\x1e``, ``\\v`` and ``\\f``, which ``json.dumps(ensure_ascii=False)``
  writes literally inside strings: it would tear one valid record into two invalid ones.
- Whatever Python's parser refuses or cannot survive is a :class:`JsonError` (a ValueError) whose
  message is one line starting with a reason code, so a caller turns it into that line's error
  row, a counted skip or a one-line command error — never a traceback:

      bad_utf8          bytes that are not UTF-8
      bad_json          not JSON (including NaN / Infinity where `strict_numbers`)
      json_too_deep     nested deeper than MAX_JSON_DEPTH (a 100,000-level line is a RecursionError)
      number_too_long   an integer over Python's int-digit limit (4300 digits; a ValueError)
      lone_surrogate    a string holding "\\udXXX" without its pair: it cannot be written back as UTF-8,
                        fed to a tokenizer or printed
"""
from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Deeper than any record this project reads (a MathVista output record is 3 levels deep), far below
# the depth at which json.dumps, copy.deepcopy or a recursive walk of the value would overflow.
MAX_JSON_DEPTH = 100


class JsonError(ValueError):
    """One JSON text (a line or a file) that cannot be used; ``reason`` is the message's code."""

    @property
    def reason(self) -> str:
        return str(self).split(":", 1)[0]


def _reject_constant(name: str):
    raise JsonError(f"bad_json: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise JsonError(f"bad_json: {text[:40]} is out of a float's range")
    return value


def _check_value(obj: Any) -> None:
    """Depth and lone surrogates, walked without recursion (the value may be deep)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise JsonError(f"lone_surrogate: a string holds U+{ord(value[exc.start]):04X} "
                                    "without its pair") from None
            continue
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise JsonError(f"json_too_deep: nested more than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def loads(data: str | bytes, *, strict_numbers: bool = False, **kwargs) -> Any:
    """`json.loads` whose every refusal is a one-line JsonError (module docstring).

    `strict_numbers`: NaN / Infinity / -Infinity, and numbers out of a float's range (1e999), are bad_json
    (state files that must hold numbers, a remote model's answer).
    `kwargs` go to json.loads (e.g. object_pairs_hook).

    >>> loads(b'{"a": [1, "x\\xe2\\x80\\xa8y"]}')
    {'a': [1, 'x\\u2028y']}
    >>> for bad in (b'\\xff', b'{"a": ', b'[' * 100000, b'9' * 5000, b'"\\\\ud800"', b'[' * 101 + b']' * 101):
    ...     try:
    ...         loads(bad)
    ...     except JsonError as exc:
    ...         print(exc.reason)
    bad_utf8
    bad_json
    json_too_deep
    number_too_long
    lone_surrogate
    json_too_deep
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError(f"bad_utf8: byte {exc.start}") from None
    if strict_numbers:
        kwargs.setdefault("parse_constant", _reject_constant)
        kwargs.setdefault("parse_float", _finite_float)
    try:
        obj = json.loads(data, **kwargs)
    except json.JSONDecodeError as exc:
        raise JsonError(f"bad_json: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise JsonError(f"json_too_deep: nested more than {MAX_JSON_DEPTH} levels") from None
    except JsonError:
        raise
    except ValueError as exc:  # the int-digit limit (sys.set_int_max_str_digits)
        if "digits" in str(exc):
            raise JsonError("number_too_long: an integer with more digits than Python converts (4300)") from None
        raise JsonError(f"bad_json: {str(exc).splitlines()[0][:200]}") from None
    _check_value(obj)
    return obj


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line's bytes without its newline) for every non-blank line of a
    JSONL file, split on ``\\n`` only: the one JSONL line reader.  Bytes, so each caller decides what
    a bad line means (a counted skip, a logged None row, an error row or an error).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write(b'{"a": 1}\\n\\n  \\n{"b": "x\\xe2\\x80\\xa8y\\xc2\\x85z"}\\n{torn')
    >>> [(n, loads(line) if n < 5 else line) for n, line in jsonl_lines(f.name)]
    [(1, {'a': 1}), (4, {'b': 'x\\u2028y\\x85z'}), (5, b'{torn')]
    >>> Path(f.name).unlink()
    """
    with open_regular(path) as f:
        for line_no, line in enumerate(f, start=1):  # binary file iteration splits on b"\n" alone
            if line.strip():
                yield line_no, line[:-1] if line.endswith(b"\n") else line


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any, JsonError | None]]:
    """(line number, value or None, the JsonError or None) for every non-blank line of `path`."""
    for line_no, line in jsonl_lines(path):
        try:
            yield line_no, loads(line), None
        except JsonError as exc:
            yield line_no, None, exc


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected (refused without opening it)."""


def open_regular(path: str | Path):
    """`path` opened for binary reading, refusing anything but a regular file *before* opening it:
    opening a FIFO blocks until a writer appears, a device may never end."""
    path = Path(path)
    mode = os.stat(path).st_mode  # follows a symlink: a link to a FIFO is a FIFO
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{path}: not a regular file (a directory, FIFO or device)")
    return path.open("rb")


def read_json_file(path: str | Path, *, strict_numbers: bool = False, **kwargs) -> Any:
    """A whole JSON file through `loads` (NotARegularFile for a FIFO or device, JsonError for bad content)."""
    with open_regular(path) as f:
        return loads(f.read(), strict_numbers=strict_numbers, **kwargs)


__all__ = ["MAX_JSON_DEPTH", "JsonError", "NotARegularFile", "iter_json_lines", "jsonl_lines", "loads",
           "open_regular", "read_json_file"]
