"""Proactive routing (PRP, Sec. 4, Alg. 3-4) from the command line.

    python route.py --draft DIR --target DIR_OR_URL --data FILE.jsonl --tau 2 --pt 0.6 --out routes.jsonl
    python route.py --tau 2 --pt 0.6                       # the embedded default: the trained tiny demo in demo/
    python route.py --serve --port 8000 --threshold 0.5    # the router as an OpenAI-compatible endpoint
    python route.py --draft URL --draft-processor DIR --target URL --data FILE.jsonl --threshold 0.5   # both served

Decision (exactly one source of T, in this order): --threshold-file, --threshold, --calibrate
(with --pt or --target-acc as the goal), --pt (per-batch share routed to the target).  The direction
is the rule's: draft-first keeps s > T, target-first keeps s < T (high s goes to the target).
Answers are judged with --bench's own rule (default demo: generic math equivalence).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from prp.core.cli import (
    HelpFormatter,
    UserError,
    check_port_free,
    confidence_level,
    port_number,
    positive_int,
    run_main,
    share,
    share_or_target,
)
from prp.route.flags import add_router_arguments


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter, epilog=__doc__)
    add_router_arguments(ap, title="models (all of --draft, --target, --data omitted: the embedded default)")
    io = ap.add_argument_group("data")
    io.add_argument("--data", help="JSONL of {id, image, question, answer?}")
    io.add_argument("--out", default=None,
                    help="output JSONL, with X.html, X.summary.json (and X.threshold.json) beside it; a file you "
                         "name is yours to replace (default: a new run folder, runs/route/YYYYmmdd-HHMMSS/"
                         "routes.jsonl, so no earlier run's results are ever replaced)")
    io.add_argument("--image-root", default=None,
                    help="folder the --data image paths are relative to and must stay under (default: the data "
                         "file's folder; a --calibrate file's images stay under its own folder)")
    io.add_argument("--allow-outside-image-paths", action="store_true",
                    help="accept absolute image paths, `..` and symlinks leading outside the image root "
                         "(off: such a line gets a bad_image_path error row; the images may be uploaded to --target)")
    io.add_argument("--resume", action="store_true", help="skip input lines already in --out")
    io.add_argument("--retry-errors", action="store_true",
                    help="route the error and fallback rows of --out again (implies --resume)")
    io.add_argument("--bench", default="demo",
                    choices=("demo", "mathvista", "mathverse", "chartqa", "m3cot", "docvqa"),
                    help="judge answers (routing and calibration) with this benchmark's own rule, as eval.py does "
                         "(default demo: the generic math-equivalence judge)")

    de = ap.add_argument_group("decision (Sec. 4.4)")
    de.add_argument("--threshold", type=float, help="s > T keeps the draft")
    de.add_argument("--pt", type=share, help="share routed to the target: per batch, or the --calibrate goal")
    de.add_argument("--batch-size", type=positive_int, default=20,
                    help="queries the draft rates and continues together; --pt routes its share of each batch")
    de.add_argument("--calibrate", metavar="VAL.jsonl", nargs="?", const="default",
                    help="choose T on a labelled validation split (no file: the embedded default's)")
    de.add_argument("--target-acc", type=share_or_target,
                    help="calibration goal: cheapest T reaching this accuracy; `target`: the target's own; "
                         "`target-0.01`: one point below it")
    de.add_argument("--confidence", type=confidence_level, default=None,
                    help="with --target-acc: the goal must hold at this confidence on new queries (one-sided "
                         "normal bound over the validation queries, e.g. 0.95), not just on the validation split")
    de.add_argument("--threshold-out", default=None, help="where --calibrate saves T (default: next to --out)")
    de.add_argument("--threshold-file", help="reuse a saved calibration")
    de.add_argument("--measure-target-only", action="store_true",
                    help="also run the target on kept queries: measured target-only latency for the speedup")

    sv = ap.add_argument_group("serving")
    sv.add_argument("--serve", action="store_true", help="serve the router on /v1/chat/completions")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address --serve binds (a non-loopback one without --serve-api-key-env logs a warning)")
    sv.add_argument("--port", type=port_number, default=8000, help="port --serve listens on")
    sv.add_argument("--batch-window-ms", type=float, default=20.0, help="wait this long for more requests to batch")
    sv.add_argument("--serve-api-key-env", default=None,
                    help="NAME of an env var holding the key clients must send (Authorization: Bearer KEY); "
                         "--api-key-env is the remote target's")
    from prp.route.server.limits import add_limit_arguments

    add_limit_arguments(ap)
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging; the traceback of a user error")
    return ap


def check_decision_flags(args) -> None:
    """One decision source: a saved calibration, a fixed T, a calibration, or a share per batch. Two of
    them given together would leave one silently ignored (`--threshold 0.6 --pt 0.3`): a usage error."""
    sources = (("--threshold-file", args.threshold_file), ("--threshold", args.threshold is not None),
               ("--calibrate", args.calibrate))
    given = [flag for flag, on in sources if on]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} each choose the threshold: give one of them")
    if args.pt is not None and given and given[0] != "--calibrate":
        raise UserError(f"--pt routes a share of each batch, {given[0]} fixes the threshold: give one of them")
    if args.target_acc is not None and not args.calibrate:
        raise UserError("--target-acc is a calibration goal: give it with --calibrate")
    if args.calibrate and args.pt is not None and args.target_acc is not None:
        raise UserError("--pt and --target-acc are two calibration goals: give one of them")


def fresh_run_out(root: Path = Path("runs/route")) -> str:
    """The default output: routes.jsonl in a new folder named by the start time (a suffix when two runs
    start in the same second), so a run without --out never replaces another's results (make demo's
    runs/demo/, an earlier route.py run's)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return str(folder / "routes.jsonl")
    raise UserError(f"{root} has 999 run folders of {stamp}; give --out FILE")


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    import torch

    from prp.core.data import ImageLimits
    from prp.eval.judge import routing_judge
    from prp.route import flags as route_flags
    from prp.route import run as route_run
    from prp.route.decide import BatchFraction, Calibration, FixedThreshold

    if args.threads:
        torch.set_num_threads(args.threads)
    embedded = not (args.draft or args.target or args.data)
    if args.out is None and (args.resume or args.retry_errors):
        raise UserError("--resume and --retry-errors continue a file: name it with --out FILE")
    from prp.toy.demo import DEFAULT_DEMO, ensure_default_demo  # the embedded default

    spec = DEFAULT_DEMO
    if embedded:
        paths = ensure_default_demo(spec)
        args.draft, args.target, args.data = str(paths["draft"]), str(paths["target"]), str(paths["data"])
        if not (paths["draft"] / "prp.json").is_file():  # the untrained pair carries no prp.json
            args.rating = args.rating or spec.rating
            args.max_new_tokens = args.max_new_tokens or spec.max_new_tokens
    if not args.draft or not args.target or not (args.data or args.serve):
        raise SystemExit("give --draft, --target and --data (or none of them for the embedded default)")
    check_decision_flags(args)
    if args.confidence is not None and not (args.calibrate and args.target_acc is not None):
        raise UserError("--confidence qualifies a calibration goal: give it with --calibrate and --target-acc")
    if args.image_root and not Path(args.image_root).is_dir():
        raise UserError(f"--image-root {args.image_root}: not a folder; give the folder the image paths start at")
    for flag, path in (("--data", None if args.serve else args.data), ("--threshold-file", args.threshold_file),
                       ("--calibrate", None if args.calibrate == "default" else args.calibrate)):
        if path and not Path(path).exists():  # fail before loading the models
            raise UserError(f"{flag} {path}: no such file; check the path (relative paths start at the current folder)")
        if path and not Path(path).is_file():  # a directory or a FIFO would fail (or hang) later
            raise UserError(f"{flag} {path}: not a regular file (a directory, FIFO or device); give a JSON/JSONL file")
    for flag, value in (("--draft", args.draft), ("--target", args.target)):
        if "://" in value and not value.startswith(("http://", "https://")):
            raise UserError(f"{flag} {value}: unsupported URL scheme; give an http(s):// URL or a model folder")
    route_flags.resolve_route_settings(args, prog="route.py")  # the draft's prp.json where no flag says otherwise
    saved = None  # the --threshold-file's calibration, read once
    if args.threshold_file:  # malformed: one line naming the file, before loading the models
        from prp.route.decide import Calibration

        try:
            saved = Calibration.load(args.threshold_file)
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UserError(f"--threshold-file {args.threshold_file}: not a calibration saved by --calibrate "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); rerun --calibrate") from None
    if args.serve and route_flags.is_url(args.draft) and not args.draft_processor:
        raise UserError("--serve with a remote --draft needs --draft-processor DIR (the draft's tokenizer and "
                        "processor files, no weights): the server counts each request's prompt tokens with them")
    if args.serve:
        check_port_free(args.host, args.port)  # a port in use: one line now, not after loading the models
    if args.out is None and not args.serve:  # the flags and files are good: make the run folder
        args.out = fresh_run_out()  # under runs/ (git-ignored), never over another run's results
    router = route_flags.build_router(args)
    judge = routing_judge(args.bench)  # the entry script passes the benchmark's rule down (route never imports eval)
    router.extract = judge.extract  # and its answer extraction
    rule = router.rule.name  # the decision direction belongs to the rule

    # decision source, in order of precedence
    if saved is not None:
        policy = saved.policy()  # refused below if its rule differs
    elif args.threshold is not None:
        policy = FixedThreshold(args.threshold, rule)
    elif args.calibrate:
        val = args.calibrate
        if val == "default":
            val = str(ensure_default_demo(spec)["validation"])
        cal = route_run.calibrate_on(router, val, p_t=None if args.target_acc is not None else args.pt,
                                     target_acc=args.target_acc, confidence=args.confidence,
                                     batch_size=args.batch_size, judge=judge,
                                     allow_outside_images=args.allow_outside_image_paths)
        out = args.threshold_out or str(Path(args.out).with_suffix(".threshold.json"))
        cal.save(out)
        bound = "" if cal.bound is None else f", {cal.requested['confidence']:.0%} lower bound {cal.bound:+.1%}"
        # rounded for reading; the file keeps the full value
        shown = "none (keep every rated query)" if cal.threshold is None else f"{cal.threshold:.4f}"
        print(f"calibrated T={shown} on {cal.n} validation queries "
              f"(p_t {cal.p_t:.1%}, accuracy {cal.accuracy:.1%} vs target {cal.target_accuracy:.1%}{bound}) -> {out}")
        policy = cal.policy()
    elif args.pt is not None:
        policy = BatchFraction(args.pt, rule)
    else:
        raise SystemExit("give --threshold, --pt, --calibrate or --threshold-file")
    try:
        router.check_policy(policy)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None

    if args.serve:
        from prp.route.serve import serve_router

        serve_router(router, policy, args)
        return None

    rows = route_run.route_file(router, args.data, args.out, policy, batch_size=args.batch_size,
                                resume=args.resume or args.retry_errors, retry_errors=args.retry_errors,
                                max_prompt_tokens=args.max_prompt_tokens, target_all=args.measure_target_only,
                                image_limits=ImageLimits(max_pixels=args.max_image_pixels,
                                                         max_aspect_ratio=args.max_aspect_ratio),
                                image_root=args.image_root, allow_outside_images=args.allow_outside_image_paths,
                                judge=judge)
    from prp.route.summary import format_summary, summarize

    summary = summarize(rows)
    print(f"wrote {len(rows)} lines to {args.out}")
    print(format_summary(summary))
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from prp.eval.html import write_routes_html  # the per-query browser (docs/report.md)
    from prp.route.batchfile import read_batch_file  # the report shows what was routed: the same lines, same checks

    records = [bl.record for bl in read_batch_file(args.data, image_root=args.image_root,
                                                    allow_outside_images=args.allow_outside_image_paths) if bl.record]
    print(f"browse: {write_routes_html(args.out, rows, records=records, summary=summary, models=vars(args))}")
    return summary


def cli() -> int:
    """`prp-route` and `python route.py`: user errors are one line on stderr, exit status 2."""
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
