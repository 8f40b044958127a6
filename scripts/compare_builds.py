"""Check that two demo builds from the same seed agree bit for bit (item 7 of the demo issue: the build is
deterministic from its seed).

    python scripts/compare_builds.py runs/demo2 runs/demo5

Compares, for every stage folder of both work dirs (the `--work` of scripts/build_demo.py):
- metrics.jsonl over the steps both have reached, every value but the wall-clock ones (a second build
  stopped early still checks the steps it ran);
- every checkpoint both have (`ckpt-<step>/model.safetensors`, and `init-*/model.safetensors`):
  tensor by tensor, exactly;
- the generated files (the train split, the JRL records, the presampled Acc_tgt cache), byte for byte.
Prints one line per item; exits 1 if anything differs, 0 otherwise (also when nothing was comparable).

`--ignore-columns PREFIX ...` leaves out the metrics.jsonl columns starting with a prefix, for two builds
made by code that logs them differently (e.g. `rating_` across the fix that made rating_stats count only
valid ratings: the training, and so every checkpoint, is the same; only what is logged about it differs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WALL_CLOCK = {"step_time_s", "tokens_per_s"}  # metrics.jsonl fields that measure time, not the run
FILES = ["data/train.jsonl", "data/train_target.jsonl", "data/train_jrl.jsonl", "acc_tgt.jsonl"]


def _steps(path: Path, ignore: tuple[str, ...] = ()) -> list[dict]:
    """metrics.jsonl's rows without the wall-clock columns (and those starting with an `ignore` prefix).
    A half-written last line (a build stopped mid-write; train.py trims it on --resume) ends the rows; a
    bad line elsewhere is an error."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise SystemExit(f"{path}:{i + 1}: not a JSON line") from None
        rows.append({k: v for k, v in row.items() if k not in WALL_CLOCK and not k.startswith(ignore)})
    return rows


def compare_metrics(rows_a: list[dict], rows_b: list[dict]) -> str | None:
    """None when the common steps (of two `_steps` lists) agree; else where they first differ."""
    for i, (ra, rb) in enumerate(zip(rows_a, rows_b, strict=False)):  # a build stopped early has fewer
        if ra != rb:
            keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
            return f"step {ra.get('step', i + 1)} differs in {', '.join(keys)}"
    return None


def compare_weights(a: Path, b: Path) -> str | None:
    """None when both safetensors files hold the same tensors with the same values."""
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    if ta.keys() != tb.keys():
        return f"other tensor names ({len(ta.keys() ^ tb.keys())} not in both)"
    differ = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    return f"{len(differ)} of {len(ta)} tensors differ (first: {differ[0]})" if differ else None


def compare(work_a: Path, work_b: Path, ignore_columns: tuple[str, ...] = ()) -> list[tuple[str, str | None]]:
    """(item, None if identical else how it differs) for everything both builds have; metrics columns
    starting with an `ignore_columns` prefix are left out."""
    results: list[tuple[str, str | None]] = []
    for rel in FILES:
        fa, fb = work_a / rel, work_b / rel
        if fa.exists() and fb.exists():
            same = fa.read_bytes() == fb.read_bytes()
            results.append((rel, None if same else "bytes differ"))
    for stage in sorted(p.name for p in work_a.iterdir() if p.is_dir() and (work_b / p.name).is_dir()):
        sa, sb = work_a / stage, work_b / stage
        if (sa / "metrics.jsonl").exists() and (sb / "metrics.jsonl").exists():
            rows_a, rows_b = _steps(sa / "metrics.jsonl", ignore_columns), _steps(sb / "metrics.jsonl", ignore_columns)
            if n := min(len(rows_a), len(rows_b)):
                results.append((f"{stage}/metrics.jsonl ({n} common steps)", compare_metrics(rows_a, rows_b)))
        weights = sorted({p.relative_to(sa) for p in sa.glob("**/model.safetensors")}
                         & {p.relative_to(sb) for p in sb.glob("**/model.safetensors")})
        for rel in weights:
            results.append((f"{stage}/{rel}", compare_weights(sa / rel, sb / rel)))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work_a", type=Path)
    ap.add_argument("work_b", type=Path)
    ap.add_argument("--ignore-columns", nargs="+", default=[], metavar="PREFIX",
                    help="leave out metrics.jsonl columns starting with these (code that logs them differently)")
    args = ap.parse_args(argv)
    for work in (args.work_a, args.work_b):
        if not work.is_dir():
            ap.error(f"{work}: not a folder")
    results = compare(args.work_a, args.work_b, tuple(args.ignore_columns))
    if args.ignore_columns:
        print(f"metrics columns left out: {', '.join(p + '*' for p in args.ignore_columns)}")
    for item, diff in results:
        print(f"{'identical' if diff is None else 'DIFFERS  '}  {item}{'' if diff is None else ': ' + diff}")
    bad = sum(diff is not None for _, diff in results)
    print(f"{len(results)} compared, {bad} differ" if results else "nothing comparable: no common stage reached")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
