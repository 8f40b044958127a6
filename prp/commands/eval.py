"""Evaluate PRP on a benchmark: official scoring, baselines and routing analysis (Sec. 5).

    python eval.py --bench mathvista --score OUTPUT.json [--data-dir DIR]       # official MathVista score
    python eval.py --bench mathvista --data-dir DIR --draft D --target T_OR_URL  # run models, write the report
    python eval.py --bench demo                                                  # the embedded demo
    python eval.py --bench demo --table runs/eval/instances.jsonl                # report from a saved table

The per-instance table (draft and target correctness, latencies, ratings, P1/P2 signals) is cached
in <out-dir>/instances.jsonl; a rerun with the same models and settings resumes it (they are recorded
in instances.settings.json; a rerun with others is refused: a new --out-dir, or --no-resume).  The
report (report.json, report.md, PNG plots) goes to <out-dir>.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from prp.core.cli import HelpFormatter, UserError, positive_int, run_main, share
from prp.route.flags import add_router_arguments


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter, epilog=__doc__)
    ap.add_argument("--bench", required=True,
                    choices=("mathvista", "mathverse", "chartqa", "m3cot", "docvqa", "demo"),
                    help="the benchmark: its loader, answer extraction and official scoring (demo: the embedded demo)")
    ap.add_argument("--data-dir", help="the benchmark's download folder (or its annotation file)")
    ap.add_argument("--score", metavar="OUTPUT.json", help="MathVista: score an official-format output file")
    ap.add_argument("--table", help="skip the models: build the report from this per-instance JSONL")
    ap.add_argument("--sft-cn", help="Paradigm-2 baseline model (train.py --mode sft-cn): s_2 on its own answers")
    ap.add_argument("--p1-model", metavar="DIR",
                    help="Paradigm-1 baseline model (the paper: the GRPO-trained model on MathVista and MathVerse, "
                         "Qwen2.5-VL-3B on ChartQA; the report names it): s_1 on its own answers, "
                         "judged and timed as that model's; default: s_1 on the routing draft's answers (the embedded "
                         "demo: its GRPO draft, demo/models/draft)")
    ap.add_argument("--batch-size", type=positive_int, default=8, help="1 gives per-query latencies (Tab. 2)")
    ap.add_argument("--limit", type=positive_int, help="first N records only (default: all)")
    ap.add_argument("--p-t", type=share, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6], help="Tab. 2 rows")
    ap.add_argument("--out-dir", default=None, help="default runs/eval-<bench>")
    ap.add_argument("--no-resume", action="store_true",
                    help="start the instance cache afresh (a resume needs the same models and settings)")
    ap.add_argument("--allow-missing-images", action="store_true", help="keep records whose image is missing")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    ap.add_argument("-v", "--verbose", action="store_true", help="also print the traceback of a user error")
    add_router_arguments(
        ap, title="models (all of --data-dir, --draft, --target omitted with --bench demo: the embedded demo)")
    return ap


def score_mathvista(args) -> None:
    from prp.eval.bench.mathvista import score_output_file
    from prp.eval.bench.outputs import ScoreFileError

    candidates = [Path(args.data_dir)] if args.data_dir else [Path(args.score).parent]
    for base in candidates:
        gold = base if base.is_file() else base / "testmini.json"
        if gold.exists():
            break
    else:
        raise SystemExit("no testmini.json next to the output file: pass --data-dir with the MathVista "
                         "testmini annotations")
    try:
        result = score_output_file(args.score, str(gold))
    except ScoreFileError as err:  # one line naming the file, no traceback
        print(f"eval.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result.format())


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.score:
        if args.bench != "mathvista":
            raise SystemExit("--score reads MathVista's official output format; use --bench mathvista")
        score_mathvista(args)
        return None

    from prp.eval.report import build_report
    from prp.route.run import read_rows

    out_dir = Path(args.out_dir or f"runs/eval-{args.bench}")
    if args.table and Path(args.table).exists() and not Path(args.table).is_file():  # a FIFO would block the read
        raise UserError(f"--table {args.table}: not a regular file (a directory, FIFO or device); "
                        "give the instances.jsonl of an earlier run")
    table = args.table or run_models(args, out_dir)
    all_rows = read_rows(table)
    rows = [r for r in all_rows if not r.get("error")]
    skipped = len(all_rows) - len(rows)
    if not rows:
        raise SystemExit(f"no evaluated instances in {table}")
    paths = build_report(rows, p_t_list=args.p_t, out_dir=out_dir, title=f"PRP on {args.bench}",
                         notes=[p1_note(args)])
    from prp.eval.html import bench_records, write_eval_html  # the per-query browser (docs/report.md)

    records = getattr(args, "records", None)
    if records is None:  # --table: reread the questions and images
        data_dir = args.data_dir
        if data_dir is None and args.bench == "demo":
            from prp.toy.demo import DEFAULT_DEMO, ensure_default_demo  # the embedded default

            data_dir = ensure_default_demo(DEFAULT_DEMO)["data"]
        records = bench_records(args.bench, data_dir)
    paths["html"] = write_eval_html(out_dir, rows, report=paths["json"], records=records,
                                    models=vars(args), p_t=max(args.p_t))
    draft_acc = sum(r["draft_correct"] for r in rows) / len(rows)
    target_acc = sum(r["target_correct"] for r in rows) / len(rows)
    print(f"{args.bench}: {len(rows)} instances ({skipped} skipped with errors); "
          f"draft accuracy {draft_acc:.1%}, target accuracy {target_acc:.1%}")
    print(f"report: {paths['markdown']} and {paths['json']}")
    print(f"browse: {paths['html']}")
    for name, path in paths["plots"].items():
        print(f"plot {name}: {path}")
    return paths


def p1_note(args) -> str:
    """The report's line on P1: the model this run computed it on, next to the paper's choice (Sec. 5)."""
    from prp.eval.bench.registry import paper_p1_note

    if args.table:
        used = "the model the instance table was built with (--table)"
    elif args.p1_model:
        used = getattr(args, "p1_label", None) or Path(args.p1_model).name
    else:
        used = "the routing draft (no --p1-model)"
    return paper_p1_note(args.bench, used)


def cache_settings(args) -> dict:
    """What shapes an instance row (models, prompts, scoring): a resume must match it (prp.eval.settings)."""
    from prp.eval.settings import model_identity

    models = {k: model_identity(getattr(args, k)) for k in ("draft", "target", "p1_model", "sft_cn")}
    if getattr(args, "base_model", None):  # the base under a LoRA adapter --draft
        models["base_model"] = model_identity(args.base_model)
    flags = {k: getattr(args, k) for k in ("bench", "target_model", "dtype", "mode", "rule", "tau", "ipr", "rating",
                                           "max_prefix_tokens", "max_new_tokens")}
    if "://" in str(args.draft):  # a served draft: its name too (recorded only then: older caches still resume)
        flags["draft_model_name"] = args.draft_model_name
    return {**models, **flags, "data_dir": str(Path(args.data_dir).resolve())}


def run_models(args, out_dir: Path) -> Path:
    """Run the draft, the target and the baselines over the benchmark; returns the instance table."""
    from prp.eval.bench.registry import get_benchmark

    bench = get_benchmark(args.bench)
    if args.bench == "demo" and not (args.data_dir or args.draft or args.target):
        from prp.toy.demo import DEFAULT_DEMO, ensure_default_demo  # the embedded default (loads torch)

        _set_threads(args)  # building the demo runs with the requested threads too
        paths = ensure_default_demo(DEFAULT_DEMO)
        args.data_dir, args.draft, args.target = str(paths["data"]), str(paths["draft"]), str(paths["target"])
        if "p1_model" in paths and not args.p1_model:  # P1 as the paper computes it (Sec. 5)
            args.p1_model, args.p1_label = str(paths["p1_model"]), "GRPO draft"
        if not (paths["draft"] / "prp.json").is_file():  # the untrained pair carries no prp.json
            args.rating = args.rating or DEFAULT_DEMO.rating
            args.max_new_tokens = args.max_new_tokens or DEFAULT_DEMO.max_new_tokens
    check_inputs(args)  # before torch and transformers load: a missing-files message comes at once
    from prp.route.flags import resolve_route_settings

    resolve_route_settings(args, prog="eval.py")  # the draft's prp.json where no flag says otherwise
    from prp.core.modeling import load_model
    from prp.eval.run import Baselines, run_benchmark
    from prp.route.flags import apply_engine, build_router

    _set_threads(args)
    try:
        loaded = bench.load(args.data_dir, require_images=not args.allow_missing_images)
    except FileNotFoundError as exc:  # the loaders open only files under the user's --data-dir
        raise data_error(args, f"no data at {args.data_dir} ({exc})") from exc
    if not loaded.records:
        raise data_error(args, f"no usable records in {args.data_dir} (skipped: {dict(loaded.skipped)}; "
                               "--allow-missing-images keeps records whose image file is missing)")
    records = loaded.records[: args.limit] if args.limit else loaded.records
    args.records = records  # report.html shows each query's question and image
    if loaded.skipped:
        print(f"skipped while loading: {dict(loaded.skipped)}")
    router = build_router(args)
    device = router.model.device if router.model is not None else (args.device or _default_device())
    baselines = Baselines()
    baselines.max_new_tokens = router.cfg.max_new_tokens
    if args.sft_cn:
        baselines.sft_cn_model, baselines.sft_cn_processor = load_model(
            args.sft_cn, device=device, dtype=args.dtype)
        baselines.sft_cn_name = Path(args.sft_cn).name
    if args.p1_model:
        baselines.p1_model, baselines.p1_processor = load_model(
            args.p1_model, device=device, dtype=args.dtype)
        baselines.p1_name = getattr(args, "p1_label", None) or Path(args.p1_model).name
    apply_engine(args.engine, baselines.sft_cn_model, baselines.p1_model)  # --engine, like the draft's
    table = out_dir / "instances.jsonl"
    run_benchmark(router, bench, records, table, batch_size=args.batch_size,
                  resume=not args.no_resume, baselines=baselines, settings=cache_settings(args))
    return table


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def data_error(args, problem: str) -> UserError:
    """A user error about --bench's data, with the benchmark's layout and source underneath."""
    from prp.eval.bench.registry import DATA_SOURCES, missing_data_details

    details = missing_data_details(args.bench) if args.bench in DATA_SOURCES else ""
    return UserError(f"--bench {args.bench}: {problem}", details=details)


def check_inputs(args) -> None:
    """Issue 17: without its data a real benchmark says which files, in which layout, from where."""
    if args.bench == "demo" and not args.data_dir:
        raise UserError("--bench demo: give --data-dir with --draft and --target, or none of the three "
                        "for the embedded default")
    if not args.data_dir:
        raise data_error(args, "its files are not part of this project: download them and pass --data-dir DIR "
                               "laid out as below (with --draft and --target)")
    if not (args.draft and args.target):
        raise UserError(f"--bench {args.bench} needs --draft DIR (a DRL/JRL-trained draft) and --target "
                        "DIR_OR_URL; python eval.py --bench demo runs the embedded default")


def cli() -> int:
    """`prp-eval` and `python eval.py`: user errors are one line on stderr, exit status 2."""
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
