"""Per-item isolation for batched work: a bad item never fails its neighbours.

`run_isolated(fn, items)` calls `fn(items)` (one batch, the fast path).  If that raises, the
batch is split in halves and each half retried, down to single items, so only the items that
fail on their own get their exception; the others get their result.  Cost: with one bad item
in a batch of n, about 2 log2(n) extra calls.  (Halves are routed as smaller batches, so a
per-batch policy such as `--pt` decides within the half: the price of saving the neighbours.)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def run_isolated(fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R | Exception]:
    """`fn` maps a list of items to one result per item, in order.

    >>> def double(xs):
    ...     if "bad" in xs:
    ...         raise ValueError("bad item")
    ...     return [x * 2 for x in xs]
    >>> out = run_isolated(double, ["a", "bad", "c"])
    >>> out[0], type(out[1]).__name__, out[2]
    ('aa', 'ValueError', 'cc')
    """
    items = list(items)
    if not items:
        return []
    try:
        results = fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"{len(results)} results for {len(items)} items")
        return list(results)
    except Exception as exc:  # isolating failures is this function's job
        if len(items) == 1:
            log.warning("an item failed on its own: %s: %s", type(exc).__name__, exc)
            return [exc]
        log.warning("a batch of %d failed (%s: %s); isolating the bad items", len(items), type(exc).__name__, exc)
    mid = len(items) // 2
    return run_isolated(fn, items[:mid]) + run_isolated(fn, items[mid:])
