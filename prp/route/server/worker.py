"""One worker thread owns the model: a bounded queue, micro-batches, isolation, cancellation.

Requests are `Job`s holding a `concurrent.futures.Future`.  The worker takes up to `batch_size`
jobs, waiting at most `window_s` for more after the first (the batch is what Dynamic
Pre-scoring, Sec. 4.4 b, ranks within), and drops every job whose client has gone
(`Future.cancel()` succeeded while it was queued) before any work is done for it.  A batch that
raises is split until only the bad items fail (prp.route.isolate).

`health()` reflects the worker: "down" if its thread died, "stalled" if one batch has run past
`stall_s`, else "ok".
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from prp.route.isolate import run_isolated

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The bounded queue is full: the server is overloaded (503)."""


@dataclass
class Job:
    item: Any
    future: Future = field(default_factory=Future)


class Worker:
    def __init__(self, process: Callable[[list], list], *, batch_size: int = 8, window_s: float = 0.02,
                 max_queue: int = 256, stall_s: float = 300.0, name: str = "model-worker"):
        self.process, self.batch_size, self.window_s, self.stall_s = process, batch_size, window_s, stall_s
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._busy_since: float | None = None
        self.batches = self.cancelled = self.failed_items = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        job = Job(item)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return job.future

    def _take(self) -> list[Job]:
        jobs = [self._queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(jobs) < self.batch_size:
            try:
                jobs.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # False: the client is gone
        self.cancelled += len(jobs) - len(live)
        return live

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                continue
            self._busy_since = time.monotonic()
            try:
                results = run_isolated(self.process, [j.item for j in jobs])
            except BaseException as exc:  # never leave a client waiting forever
                results = [exc] * len(jobs)
            finally:
                self._busy_since = None
            self.batches += 1
            for job, res in zip(jobs, results, strict=True):
                if isinstance(res, BaseException):
                    self.failed_items += 1
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)

    def health(self) -> dict:
        busy = None if self._busy_since is None else time.monotonic() - self._busy_since
        status = "ok"
        if not self._thread.is_alive():
            status = "down"
        elif busy is not None and busy > self.stall_s:
            status = "stalled"
        return {"status": status, "queued": self._queue.qsize(), "busy_s": None if busy is None else round(busy, 3),
                "batches": self.batches, "cancelled": self.cancelled, "failed_items": self.failed_items}
