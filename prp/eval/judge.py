"""The benchmark's own rule as a plain judge callable for routing and calibration.

Routing (prp/route) must not import prp/eval, so the entry script (`route.py --bench NAME`) builds
the judge here and passes it down: `judge(record, prediction) -> bool`, where `record` is a
prp.core.data.Record (what routes read) and the rule is the registry's (prp.eval.bench.registry),
the same one `eval.py --bench NAME` uses.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from prp.core.data import Record
from prp.eval.bench.registry import get_benchmark

Judge = Callable[[Record, "str | None"], bool]


def routing_judge(bench: str = "demo") -> Judge:
    """`bench`'s judge over a routed record: gold from `record.answer`, choices and the rest
    (MathVista's question_type / answer_type / precision, MathVerse's question_type) from its meta.

    >>> j = routing_judge("demo")
    >>> j(Record(id="q", question="?", answer="$17$", image=None), "17"), j.bench
    (True, 'demo')
    """
    benchmark = get_benchmark(bench)

    def judge(record: Record, prediction: str | None) -> bool:
        # a routed line carries choices / split in its meta (prp.core.data.parse_record keeps them there)
        meta = dict(record.meta or {})
        filled = replace(record, image=None, meta=meta,
                         choices=record.choices if record.choices is not None else meta.get("choices"),
                         split=record.split or str(meta.get("split") or ""))
        return bool(benchmark.judge(filled, prediction))

    judge.bench = bench
    judge.extract = benchmark.extract  # completion -> answer, the benchmark's own rule (Router(extract=...))
    return judge
