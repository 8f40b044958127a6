"""Evaluation report: Tab. 1 (AUC, APGR, Spearman), Tab. 2 (latency/speedup), Fig. 4 (score
bins), Fig. 7 (routing curves), Fig. 12 (per-portion curves), Fig. 8(f) (per-split curves) and
A.7's high-rating-but-wrong list, written as report.json, report.md and PNG plots.

Plots are drawn by :mod:`prp.eval.plots`.  Conventions (rounding, ties, NaN = lowest) are
those of :mod:`prp.eval.metrics`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prp.eval import metrics as M
from prp.eval.plots import PORTION_LABELS, write_plots  # noqa: F401  (PORTION_LABELS: report's public name)
from prp.eval.plots import ok_signals as _ok_signals

DEFAULT_P_T_LIST = (0.2, 0.3, 0.4, 0.5, 0.6)
CONVENTIONS = {
    "rounding": "k = floor(p_t * n + 0.5) instances go to the target (round half up)",
    "order": "lowest keep score goes to the target first; ties stable by table position",
    "nan_signal": "a NaN or missing signal is the lowest score (sent to the target first, ranked last)",
    "auc": "trapezoid over p_t, divided by the p_t span, in % (mean accuracy over p_t)",
    "apgr": "RouteLLM (arXiv:2406.18665, routellm/evals/evaluate.py): "
    "(AUC - acc_draft) / (acc_target - acc_draft); NaN if equal",
    "spearman": "Spearman(rank of rating descending, correct 0/1) = -Spearman(rating, correct); "
    "negative = good (Tab. 1)",
    "random": "exact expectation acc_d * (1 - k/n) + acc_t * k/n",
    "oracle": "target-only-correct first, then no-change items, then draft-only-correct",
    "latency": "per query; kept: the answering model's latency; routed: prefix_latency_s + target_latency_s for "
    "PRP (proactive, Sec. 4.4), that model's full answer + target_latency_s for P1 / P2 (post_hoc, Fig. 6)",
    "baselines": "a baseline is judged on the answers that produced its signal (its label names the model): "
    "its curve, AUC, Spearman, bins and Tab. 2 rows use that model's correctness and latency",
    "direction": "PRP scores are the rule's keep scores: s (draft-first) or -s (target-first, high s goes to "
    "the target); higher = keep on the draft",
}


# ---- entry point ----------------------------------------------------------------------------
def build_report(
    instances,
    *,
    signals: Sequence[str] | None = None,
    p_t_list: Sequence[float] = DEFAULT_P_T_LIST,
    out_dir: str | Path,
    title: str = "PRP routing report",
    p_t_grid=M.DEFAULT_GRID,
    bins: int = 10,
    min_rating: float = 0.9,
    rating: str = "d",
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Compute every metric and write report.json, report.md and the PNG plots to ``out_dir``.

    ``notes`` are the caller's lines (e.g. which model P1 was computed on), shown before the computed ones.

    ``signals`` defaults to every key found in the instances' ``scores``.  A signal that no
    instance carries is listed as missing and skipped; NaN values count as the lowest score.
    Returns ``{"json": path, "markdown": path, "plots": {name: path}}``.

    >>> import tempfile
    >>> recs = [{"id": 0, "draft_correct": 1, "target_correct": 1, "scores": {"prp": 0.9}}]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     sorted(build_report(recs, out_dir=d, p_t_list=[0.5]))
    ['json', 'markdown', 'plots']
    """
    insts = M.as_instances(instances)
    if not insts:
        raise ValueError("build_report needs at least one instance")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = np.asarray(p_t_grid, dtype=float)
    names = list(signals) if signals is not None else _score_keys(insts)
    data = compute_report(
        insts,
        signals=names,
        p_t_list=p_t_list,
        p_t_grid=grid,
        bins=bins,
        min_rating=min_rating,
        rating=rating,
        title=title,
    )
    data["notes"] = [*notes, *data["notes"]]
    plots = write_plots(data, out_dir=out, p_t_grid=grid)
    data["plots"] = {k: str(v) for k, v in plots.items()}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False))
    md_path = out / "report.md"
    md_path.write_text(render_markdown(data))
    return {"json": json_path, "markdown": md_path, "plots": plots}


def _score_keys(insts: Sequence[M.Instance]) -> list[str]:
    seen: dict[str, None] = {}
    for inst in insts:
        for key in inst.scores:
            seen.setdefault(key, None)
    return list(seen)


# ---- numbers --------------------------------------------------------------------------------
def compute_report(insts, *, signals, p_t_list, p_t_grid, bins, min_rating, rating, title) -> dict:
    """All numbers of the report as a plain dict (curves included, for the plots)."""
    dc, tc = M.correctness(insts)
    d_acc, t_acc = float(dc.mean()), float(tc.mean())
    notes = []
    if abs(t_acc - d_acc) < 1e-12:
        notes.append("APGR is undefined (NaN): draft and target accuracies are equal, no gap to recover.")
    rnd = M.random_curve_expected(dc, tc, p_t_grid=p_t_grid)
    orc = M.oracle_curve(dc, tc, p_t_grid=p_t_grid)
    per_signal = {}
    for name in signals:
        per_signal[name] = _signal_block(insts, name, dc, tc, p_t_list, p_t_grid, bins, d_acc, t_acc)
        if per_signal[name]["status"] == "missing":
            notes.append(f"signal {name!r} is missing from every instance; skipped.")
        elif per_signal[name]["n_nan"]:
            notes.append(
                f"signal {name!r}: {per_signal[name]['n_nan']} NaN/missing values treated as lowest."
            )
    return {
        "title": title,
        "n": len(insts),
        "draft_accuracy": d_acc,
        "target_accuracy": t_acc,
        "conventions": CONVENTIONS,
        "notes": notes,
        "p_t_grid": p_t_grid.tolist(),
        "random": _curve_block(p_t_grid, rnd, d_acc, t_acc),
        "oracle": _curve_block(p_t_grid, orc, d_acc, t_acc),
        "signals": per_signal,
        "reference_rows": M.reference_rows(insts),
        "random_table2": M.table2_random_rows(insts, p_t_list),
        "splits": M.splits_of(insts),
        "mislabel_candidates": M.mislabel_candidates(insts, min_rating=min_rating, rating=rating),
        "mislabel_settings": {"min_rating": min_rating, "rating": rating,
                              "rule": M.mislabel_rule(min_rating, rating)},
        "spearman_note": spearman_note(per_signal),
    }


# Tab. 1 of the paper (MathVista, 7B draft): PRP's learned rating against P1's token probability
PAPER_SPEARMAN = {"prp": -0.35, "p1": 0.12}


def spearman_note(per_signal: dict) -> str | None:
    """One line under Table 1 when a baseline's Spearman is stronger (more negative) than PRP's: the
    reverse of the paper's headline, said where the numbers are shown rather than left unexplained.

    >>> spearman_note({"prp": {"status": "ok", "spearman": -0.734}, "p1": {"status": "ok", "spearman": -0.811}})[:60]
    'Spearman: p1 (-0.811) ranks correct answers first more stron'
    >>> spearman_note({"prp": {"status": "ok", "spearman": -0.9}, "p1": {"status": "ok", "spearman": -0.2}}) is None
    True
    """
    prp = per_signal.get("prp", {})
    if prp.get("status") != "ok" or prp.get("spearman") is None or not math.isfinite(prp["spearman"]):
        return None
    stronger = [(k, b["spearman"]) for k, b in per_signal.items()
                if not k.startswith("prp") and b.get("status") == "ok" and b.get("spearman") is not None
                and math.isfinite(b["spearman"]) and b["spearman"] < prp["spearman"]]
    if not stronger:
        return None
    names = ", ".join(f"{k} ({v:.3f})" for k, v in stronger)
    return (f"Spearman: {names} ranks correct answers first more strongly than prp ({prp['spearman']:.3f}) "
            f"here, the reverse of the paper's Tab. 1 (PRP {PAPER_SPEARMAN['prp']:+.2f} vs P1 "
            f"{PAPER_SPEARMAN['p1']:+.2f}); each row is judged on its own model's answers (column 'its own "
            "answers'), so compare the AUC gains too (the demo: demo/README.md, item 4).")


def _curve_block(grid, curve, d_acc, t_acc) -> dict:
    return {
        "auc": M.auc(grid, curve),
        "apgr": M.apgr(grid, curve, draft_acc=d_acc, target_acc=t_acc),
        "curve": curve.tolist(),
    }


def signal_label(insts, name: str) -> dict:
    """What a signal's row uses: whose answers, which decision, which rule (the report's labels).

    >>> signal_label([M.Instance(id="a", draft_correct=True, target_correct=True,
    ...     signal_answers={"p2": {"model": "sft-cn", "decision": "post_hoc"}})], "p2")["label"]
    'p2 [sft-cn answers; routes after the full answer: answer + target]'
    """
    own = next((i.signal_answers[name] for i in insts if name in i.signal_answers), None)
    rule = next((i.rule for i in insts if i.rule), None)
    model = own.get("model", "own") if own else "routing draft"
    decision = (own or {}).get("decision", "proactive")
    how = ("routes after the full answer: answer + target" if decision == "post_hoc"
           else "routes after the rating prefix: prefix + target")
    label = f"{name} [{model} answers; {how}]"
    if not own and rule and name.startswith("prp"):
        label = f"{name} [{rule}{', keep = -s' if rule == 'target_first' else ''}; routing draft answers; {how}]"
    return {"label": label, "answers": model, "decision": decision, "rule": rule if not own else None}


def _signal_block(insts, name, dc, tc, p_t_list, grid, bins, d_acc, t_acc) -> dict:
    vals = M.signal_values(insts, name)
    n_nan = int(np.isnan(vals).sum())
    if n_nan == len(vals):
        return {"status": "missing", "n_nan": n_nan, **signal_label(insts, name)}
    # a baseline is judged on its own answers (M.for_signal): its own draft-side correctness
    own_insts, _ = M.for_signal(insts, name)
    dc, _ = M.correctness(own_insts)
    own_acc = float(dc.mean())
    curve = M.routing_curve(vals, dc, tc, p_t_grid=grid)
    lo, hi, n_bins = _bin_range(vals, bins)
    block = _curve_block(grid, curve, own_acc, t_acc)
    block.update(
        {
            "status": "ok",
            **signal_label(insts, name),
            "answers_accuracy": own_acc,
            "random_auc": M.auc(grid, M.random_curve_expected(dc, tc, p_t_grid=grid)),
            "oracle_auc": M.auc(grid, M.oracle_curve(dc, tc, p_t_grid=grid)),
            "n_nan": n_nan,
            "spearman": M.rating_rank_correlation(vals, dc),
            "table2": M.table2_rows(insts, name, p_t_list),
            "bins": M.score_bins(vals, dc, bins=n_bins, lo=lo, hi=hi),
            "portions": {k: v.tolist() for k, v in M.portion_curves(vals, dc, tc, p_t_grid=grid).items()},
            "per_split": {
                s: {"n": v["n"], "routing": v["routing"].tolist(), "random": v["random"].tolist()}
                for s, v in M.per_split_curves(own_insts, name, p_t_grid=grid).items()
            },
        }
    )
    return block


def _bin_range(vals: np.ndarray, bins: int) -> tuple[float, float, int]:
    """[0, 1] cut into ``bins`` equal bins, widened by whole bins when scores leave [0, 1]
    (IPR "add" mode, JRL's s = d + (d - t) / tau).

    >>> _bin_range(np.array([-0.05, 1.08]), 10)
    (-0.1, 1.1, 12)
    """
    width = 1.0 / bins
    lo_k = min(0, math.floor(float(np.nanmin(vals)) / width + 1e-9))
    hi_k = max(bins, math.ceil(float(np.nanmax(vals)) / width - 1e-9))
    return lo_k * width, hi_k * width, hi_k - lo_k


def _jsonable(obj):
    """NaN/inf -> None, numpy scalars -> Python, Paths -> str (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---- markdown -------------------------------------------------------------------------------
def _fmt(x, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(data: dict) -> str:
    """The report as Markdown (tables only; plots are linked by file name)."""
    lines = [
        f"# {data['title']}",
        "",
        (
            f"n = {data['n']}, draft accuracy {_fmt(100 * data['draft_accuracy'])}%, "
            f"target accuracy {_fmt(100 * data['target_accuracy'])}%."
        ),
        "",
    ]
    lines += [f"- Note: {n}" for n in data["notes"]] + ([""] if data["notes"] else [])
    lines += [*_md_table1(data), "", *_md_table2(data), "", *_md_bins(data), ""]
    lines += [*_md_mislabel(data), "", *_md_plots(data), "", *_md_conventions(data)]
    return "\n".join(lines) + "\n"


def _md_table1(data) -> list[str]:
    rows = [["random (expected)", _fmt(data["random"]["auc"]), _fmt(data["random"]["apgr"], ".3f"), "-", "-", "-"]]
    for name, b in data["signals"].items():
        if b["status"] != "ok":
            rows.append([name, "missing", "missing", "missing", str(b["n_nan"]), "-"])
            continue
        own = "-" if b["answers"] == "routing draft" else (
            f"acc {_fmt(100 * b['answers_accuracy'], '.1f')}%, random {_fmt(b['random_auc'])}, "
            f"oracle {_fmt(b['oracle_auc'])}")
        rows.append(
            [b.get("label", name), _fmt(b["auc"]), _fmt(b["apgr"], ".3f"), _fmt(b["spearman"], ".3f"),
             str(b["n_nan"]), own]
        )
    rows.append(["oracle", _fmt(data["oracle"]["auc"]), _fmt(data["oracle"]["apgr"], ".3f"), "-", "-", "-"])
    head = ["Signal", "AUC (%)", "APGR", "Spearman of Rank & Acc.", "NaN", "its own answers"]
    note = [f"Note: {data['spearman_note']}"] if data.get("spearman_note") else []
    return ["## Table 1: rating and routing quality", "", *_table(head, rows), *(["", *note] if note else [])]


def _md_table2(data) -> list[str]:
    head = ["Router", "p_t", "Draft (1-p_t)%", "Accuracy", "Avg. latency (s)", "Speedup"]
    rows = [
        [
            f"{r['model']} only",
            "-",
            _fmt(100 * r["draft_share"], ".0f"),
            _fmt(100 * r["accuracy"], ".1f"),
            _fmt(r["mean_latency_s"], ".2f"),
            _fmt(r["speedup"], ".2f") + "x",
        ]
        for r in data["reference_rows"]
    ]
    blocks = [("random (expected)", data["random_table2"])]
    blocks += [(data["signals"][k].get("label", k), data["signals"][k]["table2"]) for k in _ok_signals(data)]
    for name, table in blocks:
        rows += [
            [
                name,
                _fmt(r["p_t"]),
                _fmt(100 * r["draft_share"], ".0f"),
                _fmt(100 * r["accuracy"], ".1f"),
                _fmt(r["mean_latency_s"], ".2f"),
                _fmt(r["speedup"], ".2f") + "x",
            ]
            for r in table
        ]
    return ["## Table 2: accuracy, latency, speedup", "", *_table(head, rows)]


def _md_bins(data) -> list[str]:
    lines = ["## Score bins (draft accuracy per rating bin, Fig. 4)", ""]
    for name in _ok_signals(data):
        b = data["signals"][name]["bins"]
        edges = b["edges"]
        rows = [
            [
                f"[{edges[i]:.2f}, {edges[i + 1]:.2f}{']' if i == len(b['count']) - 1 else ')'}",
                str(c),
                _fmt(100 * a if a is not None and math.isfinite(a) else math.nan, ".1f"),
            ]
            for i, (c, a) in enumerate(zip(b["count"], b["accuracy"], strict=True))
        ]
        lines += (
            [f"### {name} (NaN: {b['n_nan']})", "", *_table(["Bin", "Count", "Accuracy (%)"], rows), ""]
        )
    return lines


def _md_mislabel(data) -> list[str]:
    s = data["mislabel_settings"]
    cands = data["mislabel_candidates"]
    rule = s.get("rule") or M.mislabel_rule(s["min_rating"], s["rating"])
    lines = [f"## High rating but wrong (A.7): {rule}", ""]
    if not cands:
        return [*lines, "None."]
    rows = [
        [
            str(c["id"]),
            str(c["split"] or "-"),
            _fmt(c["rating"], ".3f"),
            _fmt(c["t"], ".3f"),
            str(c["draft_correct"]),
            str(c["target_correct"]),
        ]
        for c in cands
    ]
    return lines + _table(["id", "split", "rating", "t", "draft correct", "target correct"], rows)


def _md_plots(data) -> list[str]:
    return ["## Plots", ""] + [f"- {k}: `{Path(v).name}`" for k, v in data.get("plots", {}).items()]


def _md_conventions(data) -> list[str]:
    return ["## Conventions", ""] + [f"- {k}: {v}" for k, v in data["conventions"].items()]
