"""Route a JSONL file: batches in, one JSONL line out per input line, resumable, then a summary.

- Every input line yields exactly one output line (its `line` number): routed queries, and also
  blank, non-UTF-8 or malformed lines, duplicate ids and unusable images (an `error` field, no
  crash; prp.route.batchfile lists the reasons).  Lines are written with flush + fsync, so an
  interrupted run (even `kill -9`) loses at most the batches in flight (those whose routed queries
  wait for a full target batch, at most MAX_WAITING_BATCHES + 1); `--resume` skips the input
  lines already written (dropping a torn last line), `--retry-errors` routes error and fallback
  rows again.
- The embedded default (no model/data flags) is resolved by the entry scripts (prp.toy.demo): this
  module only routes the paths it is given.
- Importing this module stays cheap (no torch, no transformers): the entry scripts import it to build
  their parsers, so `eval.py --help` or a missing-files message prints at once; the router is imported
  by the functions that route.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prp.core.data import ImageError, load_jsonl
from prp.core.jsonl import JsonError, jsonl_lines, loads
from prp.route.batchfile import read_batch_file
from prp.route.isolate import run_isolated
from prp.route.progress import RouteProgress
from prp.route.rows import error_row

if TYPE_CHECKING:  # the router pulls in torch + transformers: imported where a query is routed
    from prp.route.router import PendingBatch, Router

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ output


class JsonlSink:
    """Append-only JSONL with flush + fsync per line, keyed by input line number.

    `done` maps each input line already written to the id its row carries.  On `resume`, rows
    are read back: a torn last line (the interruption) is dropped, and with `retry_errors` so are
    error and fallback rows (they are routed again); the kept rows are rewritten atomically.
    Rows without a `line` (an older format) are dropped and routed again.
    """

    def __init__(self, path: str | Path, *, resume: bool, retry_errors: bool = False, on_row=None):
        self.path = Path(path)
        self.on_row = on_row  # called with each row written (the progress bar)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[int, str | None] = {}
        if resume and self.path.exists():
            keep, dropped = [], {"torn": 0, "no_line": 0, "retry": 0, "repeat": 0}
            for _, raw in jsonl_lines(self.path):
                try:
                    row = loads(raw)
                except JsonError:  # a line torn by the interruption
                    dropped["torn"] += 1
                    continue
                line = row.get("line") if isinstance(row, dict) else None
                if not isinstance(line, int) or isinstance(line, bool):
                    dropped["no_line"] += 1
                    continue
                if line in self.done:
                    dropped["repeat"] += 1
                    continue
                if retry_errors and (row.get("error") or row.get("fallback")):
                    dropped["retry"] += 1
                    continue
                self.done[line] = row.get("id")
                keep.append(raw)
            if any(dropped.values()):
                log.warning("%s: resuming without %s", self.path, {k: v for k, v in dropped.items() if v})
            tmp = self.path.with_name(self.path.name + ".tmp")
            with tmp.open("wb") as f:  # rewrite atomically: a kill now leaves the old file or the new one
                f.write(b"".join(r + b"\n" for r in keep))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()
        self._f = self.path.open("a", encoding="utf-8")

    def check_input(self, lines, data) -> None:
        """Refuse to resume into rows written for another input (a line's id changed)."""
        ids = {bl.line: bl.id for bl in lines}
        for line, rid in self.done.items():
            if line not in ids or ids[line] != rid:
                raise SystemExit(f"{self.path}: line {line} was written for id {rid!r}, but {data} line {line} "
                                 f"{'is ' + repr(ids[line]) if line in ids else 'does not exist'}: the input changed "
                                 "since the first run; route into a new --out")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[row["line"]] = row.get("id")
        if self.on_row is not None:
            self.on_row(row)

    def close(self) -> None:
        self._f.close()


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a routed output file; a line that is not UTF-8 JSON raises JsonError (the file is ours)."""
    return [loads(line) for _, line in jsonl_lines(path)]


# ------------------------------------------------------------------------------ scoring


def score_row(row: dict, record, judge=None) -> None:
    """Add gold / correct: `row["answer"]` judged by `judge(record, answer)` (the benchmark's own rule,
    passed in by the entry script, e.g. prp.eval.judge.routing_judge; prp/route never imports prp/eval).
    No judge, or no gold: `correct` stays None."""
    if record.answer is None:
        return
    row["gold"] = record.answer
    row["correct"] = None if judge is None else bool(judge(record, row.get("answer")))
    if judge is not None and row.get("target_text") is not None:  # the measured target-only baseline
        row["target_only_correct"] = bool(judge(record, row.get("target_answer")))


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _prompt_problem(router: Router, question: str, limit: int) -> str | None:
    """`prompt_too_long` when the question alone is over `limit` tokens (a cheap character gate
    first: no tokenizer PRP serves packs more than 16 characters into a token)."""
    if len(question) > 16 * limit:
        return f"prompt_too_long: {len(question)} characters for a limit of {limit} tokens"
    if router.tokenizer is None:  # a served draft without --draft-processor: its server checks the rest
        return None
    n = len(router.tokenizer(question, add_special_tokens=False)["input_ids"])
    return f"prompt_too_long: {n} tokens > {limit}" if n > limit else None


def default_prompt_limit(router: Router) -> int:
    """The draft's positions left once the rating prefix and the answer are reserved (>= 256)."""
    from prp.core.modeling import model_positions  # torch-heavy: this module must stay light (test_startup)

    positions = model_positions(router.model) or 32768
    return max(256, positions - router.cfg.max_prefix_tokens - router.cfg.max_new_tokens)


# A started batch holds its draft cache until its routed queries are answered: at most this many wait
# for a full target batch (when few queries are routed, the target is called with fewer).
MAX_WAITING_BATCHES = 8


def route_file(router: Router, data: str | Path, out: str | Path, policy, *, batch_size: int = 16,
               resume: bool = False, retry_errors: bool = False, target_all: bool = False,
               judge=None, max_prompt_tokens: int | None = None, image_limits=None,
               image_root: str | Path | None = None, allow_outside_images: bool = False) -> list[dict]:
    """Route every line of `data` into `out`: exactly one row per input line (prp.route.batchfile),
    an error row for a line that cannot be routed.  Returns all rows of `out` in input order.

    The draft rates and continues `batch_size` queries at a time; a local target answers the
    routed queries of consecutive batches together, `batch_size` per call (a batch's rows are
    written once its routed queries are answered; a kill loses those still waiting, and `--resume`
    routes them again).  `target_all`'s target-only baseline is one call per draft batch.

    A bad item never fails its neighbours: images are opened one by one, a question over
    `max_prompt_tokens` (default: `default_prompt_limit`) gets its own error row, and a batch the
    router fails on is split until only the failing queries get error rows (prp.route.isolate).
    Image paths stay under `image_root` (default: the data file's folder) unless
    `allow_outside_images` (prp.route.batchfile).
    """
    prompt_limit = max_prompt_tokens or default_prompt_limit(router)
    lines = read_batch_file(data, image_root=image_root, allow_outside_images=allow_outside_images)
    progress = RouteProgress("route", total=len(lines))
    sink = JsonlSink(out, resume=resume, retry_errors=retry_errors, on_row=progress.row)
    try:
        sink.check_input(lines, data)
        progress.start(already=len(sink.done))
        todo = []
        for bl in lines:
            if bl.line in sink.done:
                continue
            if bl.error is not None:
                sink.write(error_row(bl.id, bl.error, line=bl.line))
            else:
                todo.append(bl)
        queue = _TargetQueue(router, sink, target_all=target_all, judge=judge, batch_size=batch_size)
        for batch in _batches(todo, batch_size):
            ready = _ready_queries(router, batch, sink, prompt_limit, image_limits)
            started = run_isolated(lambda qs: _started(router.start(qs, policy)), [q for _, q in ready])
            queue.add([(bl, s) for (bl, _), s in zip(ready, started, strict=True)])
        queue.flush()
    finally:
        sink.close()
        progress.close()
    return sorted(read_rows(out), key=lambda r: r.get("line") or 0)


def _ready_queries(router: Router, batch, sink: JsonlSink, prompt_limit: int, image_limits) -> list[tuple]:
    """(line, Query) for the lines of `batch` that can be routed; an error row for each of the others."""
    from prp.route.router import Query

    ready = []
    for bl in batch:
        try:
            problem = _prompt_problem(router, bl.record.question, prompt_limit)
            image = None if problem else bl.record.load_image(image_limits)  # None: prp.core.data's defaults
        except ImageError as exc:
            problem = str(exc)
        except Exception as exc:  # whatever else one line's question or image does: its own error row
            log.warning("line %d: %s: %s", bl.line, type(exc).__name__, exc)
            problem = f"bad_line: {type(exc).__name__}"
        if problem:
            sink.write(error_row(bl.id, problem, line=bl.line))
            continue
        rec = bl.record
        ready.append((bl, Query(id=rec.id, question=rec.question, image=image, gold=rec.answer)))
    return ready


def _started(pending: PendingBatch) -> list[tuple[PendingBatch, int]]:
    """One (started batch, row) per query: run_isolated's one-result-per-item shape."""
    return [(pending, i) for i in range(len(pending.queries))]


class _TargetQueue:
    """Started batches waiting for their routed queries' target answers (Router.start /
    answer_routed / finish); rows are written as each batch finishes."""

    def __init__(self, router: Router, sink: JsonlSink, *, target_all: bool, judge, batch_size: int):
        self.router, self.sink, self.judge = router, sink, judge
        self.target_all, self.batch_size = target_all, batch_size
        self.waiting: list[tuple[PendingBatch, list[tuple]]] = []  # (started batch, [(line, row index)])
        self.routed: list[tuple[PendingBatch, int]] = []  # (started batch, row index) not yet sent to the target

    def add(self, started: list[tuple]) -> None:
        """`started`: (line, (batch, row) or the exception that row failed with) per query."""
        by_batch: dict[int, tuple[PendingBatch, list[tuple]]] = {}
        for bl, s in started:
            if isinstance(s, Exception):
                self.sink.write(error_row(bl.id, f"routing_failed: {type(s).__name__}: {s}", line=bl.line))
                continue
            pending, i = s
            by_batch.setdefault(id(pending), (pending, []))[1].append((bl, i))
        for pending, members in by_batch.values():
            self.waiting.append((pending, members))
            if pending.future is None:  # else a remote target was asked at start: nothing to queue
                self.routed += [(pending, i) for i in pending.to_target]
        while len(self.routed) >= self.batch_size:  # full target batches
            self._ask(self.batch_size)
        if len(self.waiting) > MAX_WAITING_BATCHES:
            self._ask(len(self.routed))
        self._write_finished()

    def flush(self) -> None:
        self._ask(len(self.routed))
        self._write_finished()

    def _ask(self, n: int) -> None:
        items, self.routed = self.routed[:n], self.routed[n:]
        self.router.answer_routed(items)

    def _write_finished(self) -> None:
        still = []
        for pending, members in self.waiting:
            if pending.answered:
                self._write(pending, members)
            else:
                still.append((pending, members))
        self.waiting = still

    def _write(self, pending: PendingBatch, members: list[tuple]) -> None:
        try:
            rows = [r.to_json() for r in self.router.finish(pending, target_all=self.target_all)]
        except Exception as exc:  # the batch's fallback or baseline failed: its rows say so, the rest goes on
            log.warning("finishing a batch failed: %s: %s", type(exc).__name__, exc)
            rows = [exc] * len(pending.queries)
        for bl, i in members:
            row = rows[i]
            if isinstance(row, Exception):
                row = error_row(bl.id, f"routing_failed: {type(row).__name__}: {row}", line=bl.line)
            else:
                row["line"] = bl.line
                try:
                    score_row(row, bl.record, self.judge)  # the gold of this very line
                except Exception as exc:  # a gold the judge cannot read: this row says so, the rest goes on
                    log.warning("line %d: judging failed: %s: %s", bl.line, type(exc).__name__, exc)
                    row["correct"] = row["target_only_correct"] = None
                    row["error"] = f"judge_failed: {type(exc).__name__}"
            self.sink.write(row)


# ------------------------------------------------------------------------------ calibration


def calibrate_on(router: Router, val_path: str | Path, *, p_t: float | None, target_acc: float | str | None,
                 confidence: float | None = None, batch_size: int = 16, judge=None,
                 allow_outside_images: bool = False):
    """Sec. 4.4 (a): scores on a labelled validation split, draft/target correctness, then T in the
    router's rule direction.

    Correctness comes from the file when every line carries `draft_correct` and `target_correct`
    (a per-instance table, e.g. from an earlier evaluation); otherwise both models answer every
    validation query (the draft from its prefix cache) and `judge(record, answer)` (the benchmark's
    own rule, as in evaluation) scores them.
    """
    from prp.route.decide import calibrate

    loaded = load_jsonl(val_path, check_images=True, require_answer=True, confine_images=not allow_outside_images)
    recs = loaded.records
    if not recs:
        raise SystemExit(f"no usable labelled records in {val_path} ({loaded.summary()})")
    table = all("draft_correct" in r.meta and "target_correct" in r.meta for r in recs)
    if not table and judge is None:
        raise ValueError("calibration needs a judge (the benchmark's rule) unless the file has correctness columns")
    scores, dc, tc, failed = [], [], [], []
    progress = RouteProgress("calibrate", total=len(recs))
    progress.start()
    try:
        _calibration_rows(router, recs, batch_size, table, judge, progress, scores, dc, tc, failed)
    finally:
        progress.close()
    if failed:  # calibrating on the rest would quietly shift T: say so, and stop
        from prp.core.cli import UserError

        raise UserError(f"calibration: the draft failed on {len(failed)} of {len(recs)} validation queries "
                        f"(first: {failed[0]}); calibrate when the draft server answers")
    cal = calibrate(scores, dc, tc, p_t=p_t, target_acc=target_acc, confidence=confidence, rule=router.rule)
    cal.mode, cal.tau, cal.ipr = router.cfg.mode, router.cfg.tau, router.cfg.ipr
    cal.judge = getattr(judge, "bench", "") if not table else "table"
    return cal


def _calibration_rows(router, recs, batch_size, table, judge, progress, scores, dc, tc, failed) -> None:
    """Fill scores / draft correctness / target correctness for `calibrate_on`, batch by batch; a query a
    served draft failed on goes to `failed` (no rating to calibrate on, not a low one)."""
    from prp.route.decide import FixedThreshold
    from prp.route.router import Query

    for batch in _batches(recs, batch_size):
        queries = [Query(id=r.id, question=r.question, image=r.load_image(), gold=r.answer) for r in batch]
        if table:
            for x, rec in zip(router.rate(queries)[1], batch, strict=True):
                if x.error:
                    failed.append(f"{rec.id}: {x.error}")
                    continue
                scores.append(x.score)
                dc.append(float(rec.meta["draft_correct"]))
                tc.append(float(rec.meta["target_correct"]))
        else:
            rows = router.route_rows(queries, FixedThreshold(None, router.rule.name), target_all=True,
                                     draft_all=True)
            for row, rec in zip(rows, batch, strict=True):
                if row.route is None:
                    failed.append(f"{rec.id}: {row.error}")
                    continue
                scores.append(row.score)
                dc.append(float(judge(rec, row.draft_answer)))
                tc.append(float(judge(rec, row.target_answer)))
        if dc:
            progress.update(len(batch), draft=f"{sum(dc) / len(dc):.0%}", target=f"{sum(tc) / len(tc):.0%}")
        else:
            progress.update(len(batch))
