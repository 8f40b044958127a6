"""Benchmark loaders and official scorers (MathVista, MathVerse, ChartQA, M3CoT, DocVQA).

Every loader returns a :class:`~prp.eval.bench.records.LoadResult` of :class:`~prp.core.data.Record` s and a
count of what it skipped; every scorer follows its benchmark's own evaluation code (cited in
each module's docstring; MathVerse's GPT judge has a documented rule-based stand-in) and returns
a :class:`ScoreResult` (DocVQA: :class:`AnlsResult`).  docs/scoring.md lists every deviation.
"""
from prp.core.data import LoadResult, Record
from prp.eval.bench.records import AnlsResult, ScoreResult, format_accuracy

__all__ = ["AnlsResult", "LoadResult", "Record", "ScoreResult", "format_accuracy"]
