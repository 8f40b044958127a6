"""Strict reading of a model-output file for ``eval.py --score``.

An output file is a JSON object ``{pid: record}`` (MathVista's official layout), a JSON list of
records with a ``pid`` field, or JSONL of such records.  Every record must be an object holding
``extraction`` or ``response``.  Anything else is a :class:`ScoreFileError` whose one-line
message names the file (and the pid or line), so the command line can print it without a
traceback.  A pid that occurs more than once is warned about; the last record counts (what
``json.load`` does with a repeated key).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from prp.core.jsonl import JsonError, NotARegularFile, loads, open_regular

log = logging.getLogger(__name__)

ANSWER_FIELDS = ("extraction", "response")


class ScoreFileError(ValueError):
    """A file given to a scorer is missing or malformed; the message names the file."""


def _load_json(path: str, data: bytes) -> tuple[Any, Counter]:
    """The parsed JSON and how often each key of the *top-level* object occurs."""
    top_keys: list[Counter] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
        # Inner objects close first, so the last call is the top-level object.
        top_keys.append(Counter(k for k, _ in pairs))
        return dict(pairs)

    try:
        parsed = loads(data, object_pairs_hook=pairs_hook)
    except JsonError as err:  # not JSON, not UTF-8, too deep, an overlong number, a lone surrogate
        raise ScoreFileError(f"{path}: {_what(err)}") from None
    return parsed, (top_keys[-1] if isinstance(parsed, dict) and top_keys else Counter())


def _what(err: JsonError) -> str:
    """'not JSON (why)' for a syntax error, 'unreadable (reason: why)' for a parser limit."""
    return f"not JSON ({str(err).split(': ', 1)[-1]})" if err.reason == "bad_json" else f"unreadable ({err})"


def _read_bytes(path: str) -> bytes:
    try:
        with open_regular(path) as f:  # a FIFO would block the read forever: refused before opening
            return f.read()
    except NotARegularFile:
        raise ScoreFileError(f"{path}: not a regular file (a directory, FIFO or device)") from None
    except OSError as err:
        raise ScoreFileError(f"{path}: cannot read ({err.strerror or err})") from None


def _records_of(path: str, data: bytes) -> tuple[list[tuple[str, Any, str]], Counter]:
    """(pid, record, where) triples and the pid counts, before the records are checked."""
    if path.endswith(".jsonl"):
        rows = []
        # split on \n only (prp.core.jsonl): a string may hold U+2028 or U+0085, which splitlines() splits at
        for n, line in enumerate(data.split(b"\n"), 1):
            if line.strip():
                try:
                    rows.append((loads(line), f"line {n}"))
                except JsonError as err:
                    raise ScoreFileError(f"{path}: line {n} is {_what(err)}") from None
        parsed, counts = [r for r, _ in rows], Counter()
        where = [w for _, w in rows]
    else:
        parsed, counts = _load_json(path, data)
        where = [f"item {i}" for i in range(len(parsed))] if isinstance(parsed, list) else []
    if isinstance(parsed, dict):
        return [(str(k), v, f"pid {k!r}") for k, v in parsed.items()], counts
    if not isinstance(parsed, list):
        raise ScoreFileError(
            f"{path}: expected an object of pid -> record or a list of records, got {type(parsed).__name__}")
    triples = []
    for record, at in zip(parsed, where, strict=True):
        if not isinstance(record, dict) or record.get("pid") is None:
            raise ScoreFileError(f"{path}: {at} is not a record with a pid")
        triples.append((str(record["pid"]), record, f"{at} (pid {record['pid']!r})"))
    return triples, Counter(pid for pid, _, _ in triples)


def read_output_file(path: str) -> dict[str, dict]:
    """pid -> record of an output file; raises :class:`ScoreFileError` on any malformed part."""
    triples, counts = _records_of(path, _read_bytes(path))
    if not triples:
        raise ScoreFileError(f"{path}: no records")
    outputs = {}
    for pid, record, at in triples:
        if not isinstance(record, dict):
            raise ScoreFileError(f"{path}: {at} is {type(record).__name__}, not a record object")
        if not any(k in record for k in ANSWER_FIELDS):
            raise ScoreFileError(f"{path}: {at} has neither 'extraction' nor 'response'")
        outputs[pid] = record
    repeated = {pid: n for pid, n in counts.items() if n > 1}
    if repeated:
        log.warning("%s: %d pids occur more than once (the last record counts): %s",
                    path, len(repeated), dict(list(repeated.items())[:10]))
    return outputs
