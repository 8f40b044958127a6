"""One table of benchmarks: how to load each from its download folder and judge one answer.

`extract(completion)` takes a model's completion to the answer the benchmark judges (see
prp.core.answers), and `judge(record, prediction)` returns True/False for that answer with the
benchmark's official rule, so the evaluator can build per-instance tables for routing analysis
(the aggregate `score_*` functions in each module report the official numbers).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from prp.core.answers import extract_answer, extract_short_answer
from prp.core.data import LoadResult, Record
from prp.core.judge import accuracy_reward
from prp.eval.bench import chartqa, docvqa, m3cot, mathverse, mathvista
from prp.eval.bench.records import attach_image, read_rows


@dataclass(frozen=True)
class Benchmark:
    name: str
    load: Callable[..., LoadResult]  # (data_path, require_images=...) -> LoadResult
    judge: Callable[[Record, str | None], bool]
    default_file: str  # inside --data-dir
    # completion text -> the answer judge() takes: the math rule (its last-number fallback) for
    # math benchmarks and the demo; the whole stripped text for short-answer ones (ChartQA,
    # DocVQA, M3CoT), where a last number is a different answer ("12/15/89" -> "89")
    extract: Callable[[str | None], str | None] = extract_answer


def _find(data_dir: str, *names: str) -> str:
    """The first existing candidate file under data_dir (or data_dir itself if it is a file)."""
    if os.path.isfile(data_dir):
        return data_dir
    for name in names:
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"none of {names} found under {data_dir}")


def _judge_mathvista(record: Record, prediction: str | None) -> bool:
    problem = {"choices": record.choices, "answer": record.answer, **record.meta}
    return mathvista.score_problem({"extraction": prediction or ""}, problem)


def _judge_docvqa(record: Record, prediction: str | None) -> bool:
    # routing needs a verdict per item: right when the official score is not zeroed (ANLS >= 0.5)
    return docvqa.anls_correct(prediction, record.answer)


def _judge_demo(record: Record, prediction: str | None) -> bool:
    return accuracy_reward(prediction, str(record.answer)) == 1.0


def load_demo(path: str, *, require_images: bool = True) -> LoadResult:
    """The procedural benchmark of prp.toy.synthetic (generic JSONL); split = difficulty level."""
    root = os.path.dirname(os.path.abspath(path))
    result = LoadResult(records=[])
    for n, row in enumerate(read_rows(path)):
        rid = str(row.get("id", n)) if isinstance(row, dict) else str(n)
        if not isinstance(row, dict) or not row.get("question") or row.get("answer") in (None, ""):
            result.skip("malformed", rid, "needs question and answer")
            continue
        image, keep = attach_image(result, row.get("image"), root, rid, require_images)
        if keep:
            result.records.append(
                Record(id=rid, question=row["question"], image=image, answer=str(row["answer"]),
                       split=f"level {row['level']}" if "level" in row else str(row.get("split", "")),
                       meta={k: v for k, v in row.items() if k not in ("question", "answer", "image")})
            )
    result.log_summary("demo")
    return result


BENCHMARKS: dict[str, Benchmark] = {
    "mathvista": Benchmark(
        "mathvista",
        lambda path, **kw: mathvista.load_mathvista(_find(path, "testmini.json", "testmini.parquet"), **kw),
        _judge_mathvista, "testmini.json"),
    "mathverse": Benchmark(
        "mathverse",
        lambda path, **kw: mathverse.load_mathverse(_find(path, "testmini.json", "testmini.parquet"), **kw),
        lambda r, p: mathverse.is_correct(p, r.answer, r.meta["question_type"], r.choices), "testmini.json"),
    "chartqa": Benchmark(
        "chartqa", lambda path, **kw: chartqa.load_chartqa(path, **kw),
        lambda r, p: chartqa.relaxed_correctness(r.answer, p), "test/", extract_short_answer),
    "m3cot": Benchmark(
        "m3cot", lambda path, **kw: m3cot.load_m3cot(_find(path, "test.jsonl", "test.json"), **kw),
        lambda r, p: m3cot.judge_answer(p, r.choices, r.answer), "test.jsonl", extract_short_answer),
    "docvqa": Benchmark(
        "docvqa", lambda path, **kw: docvqa.load_docvqa(_find(path, "val_v1.0.json", "val.json"), **kw),
        _judge_docvqa, "val_v1.0.json", extract_short_answer),
    "demo": Benchmark("demo", lambda path, **kw: load_demo(_find(path, "test.jsonl"), **kw), _judge_demo, "test.jsonl"),
}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}") from None


# ------------------------------------------------------------------ the paper's P1 model per benchmark

# Sec. 5, Baselines: "Token-probability-based (Paradigm 1). On ChartQA, we adopt Qwen2.5-VL-3B as the
# baseline; on MathVerse and MathVista, we use the GRPO-trained model as the baseline."  The user still
# passes the model (eval.py --p1-model); the report names the paper's choice next to the one used.
PAPER_P1_MODEL = {
    "chartqa": "Qwen2.5-VL-3B (the base model; not GRPO-trained)",
    "mathverse": "the GRPO-trained model",
    "mathvista": "the GRPO-trained model",
    "demo": "none (not a paper benchmark); the demo follows the math benchmarks: its GRPO-trained draft",
}


def paper_p1_note(bench: str, used: str) -> str:
    """One report line: which model P1 (Sec. 5) was computed on, and which one the paper uses on `bench`.

    >>> paper_p1_note("mathvista", "grpo")
    "P1 (mean token probability) on the answers of grpo; the paper's P1 model on mathvista: the GRPO-trained model."
    """
    paper = PAPER_P1_MODEL.get(bench, "not given (the paper's Tab. 1 covers ChartQA, MathVerse and MathVista)")
    return f"P1 (mean token probability) on the answers of {used}; the paper's P1 model on {bench}: {paper}."


# ------------------------------------------------------------------ where each benchmark's files come from


@dataclass(frozen=True)
class DataSource:
    """What `eval.py --bench B` reads under --data-dir (the layout its loader above expects) and
    where a user obtains it (project and dataset names only: nothing here downloads)."""

    layout: tuple[str, ...]  # lines; DIR stands for --data-dir
    obtain: str


DATA_SOURCES: dict[str, DataSource] = {
    "mathvista": DataSource(
        ("DIR/testmini.json (1000 problems keyed by pid) with DIR/images/ beside it (its image paths,"
         " e.g. images/1.jpg, resolve from DIR);",
         "or DIR/testmini.parquet, the Hugging Face testmini shard with the images embedded (or give that"
         " .parquet file itself as --data-dir; reading it needs pyarrow)"),
        "MathVista testmini: the AI4Math/MathVista dataset on Hugging Face (images.zip, data/testmini-*.parquet)"
        " or the lupantech/MathVista GitHub repository (data/testmini.json)"),
    "mathverse": DataSource(
        ("DIR/testmini.json with its images unpacked into DIR (each row's image path resolves from DIR);",
         "or DIR/testmini.parquet (images embedded; needs pyarrow)"),
        "MathVerse testmini: the AI4Math/MathVerse dataset on Hugging Face (testmini.json, images.zip)"
        " or the ZrrSkywalker/MathVerse GitHub repository"),
    "chartqa": DataSource(
        ("DIR/test/test_human.json and DIR/test/test_augmented.json (lists of imgname, query, label)"
         " with the charts in DIR/test/png/;",
         "DIR may also be the test/ folder itself"),
        "ChartQA test split: the 'ChartQA Dataset' folder of the vis-nlp/ChartQA GitHub repository"),
    "m3cot": DataSource(
        ("DIR/test.jsonl (or DIR/test.json): rows with id, question, choices, answer, image, whose image"
         " paths resolve from DIR;",
         "or give the test .parquet file itself as --data-dir (images embedded; needs pyarrow)"),
        "M3CoT test split: the LightChen2333/M3CoT dataset on Hugging Face or the LightChen233/M3CoT GitHub"
        " repository"),
    "docvqa": DataSource(
        ("DIR/val_v1.0.json (or DIR/val.json) with the page images in DIR/documents/ (its image paths,"
         " e.g. documents/xxx.png, resolve from DIR)",),
        "DocVQA validation split (Single Document VQA, Task 1): the DocVQA challenge of the Robust Reading"
        " Competition (docvqa.org), after registering"),
}


def missing_data_details(name: str) -> str:
    """The lines `eval.py --bench NAME` prints under its error when the data is not there."""
    source = DATA_SOURCES[name]
    layout = "\n".join(f"  {'files:  ' if i == 0 else '        '}{line}" for i, line in enumerate(source.layout))
    return (f"{layout}\n"
            f"  obtain: {source.obtain}\n"
            f"  then:   python eval.py --bench {name} --data-dir DIR --draft DRAFT_DIR --target TARGET_DIR_OR_URL\n"
            "  now:    python eval.py --bench demo  runs the embedded default (demo/: tiny trained models and"
            " data, no download)")
