"""report.html: one self-contained page with the summary tables, the plots, a per-query browser
and A.7's high-rating-but-wrong list (docs/report.md).

The page (:mod:`prp.eval.html_page`) takes a small, explicit input: a list of *query views* (plain
dicts, keys in ``html_page.QUERY_KEYS``), the summary sections and the plot files.  Two adapters
here turn what the scripts write into query views, so a renamed field costs one edit:
:func:`eval_queries` (the rows of ``eval.py``'s instance table) and :func:`route_queries` (the
lines of ``route.py --out``, RouteRow fields); :func:`write_eval_html` and
:func:`write_routes_html` are what the scripts call.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prp.eval import metrics as M
from prp.eval.html_page import attach_images, esc, html_table, plots_html, query_view, render_page

log = logging.getLogger(__name__)

# which model produced each signal column (a baseline ranks, and is judged on, the answers of the
# model it was computed on): (key in `models`, its fallback, rule)
SIGNAL_SOURCES = {
    "prp": (
        "draft",
        None,
        "the draft's rating prefix d (and t in JRL), IPR-refined (Eq. 9), combined by the rule",
    ),
    "prp_no_ipr": ("draft", None, "the same ratings without IPR (ablation)"),
    "p1": ("p1_model", "draft", "P1: mean token probability of that model's own answer (Sec. 2.1, s_1)"),
    "p2": ("sft_cn", None, "P2: P[CN] / (P[CN] + P[UN]) after the sft-cn model's own answer (Sec. 2.1, s_2)"),
}


# ---- query views ----------------------------------------------------------------------------
def records_by_id(records: Iterable[Any] | str | Path | None) -> dict[str, dict]:
    """{id: {question, image, split}} from benchmark or routing records (attributes or dicts), or
    from a routing JSONL file (route.py --data; images are not decoded here)."""
    if isinstance(records, (str, Path)):
        from prp.core.data import load_jsonl

        records = load_jsonl(records, check_images=False, confine_images=True).records  # as route.py reads it
    out: dict[str, dict] = {}
    for rec in records or ():
        get = rec.get if isinstance(rec, Mapping) else lambda k, r=rec: getattr(r, k, None)
        meta = get("meta") or {}
        out[str(get("id"))] = {
            "question": get("question"),
            "image": get("image"),
            "split": get("split") or meta.get("split") or None,
        }
    return out


def _text(x) -> str | None:
    if x is None:
        return None
    return x if isinstance(x, str) else json.dumps(x) if isinstance(x, (list, dict)) else str(x)


def gold_text(x) -> str | None:
    """A gold answer as the page shows it: a whole-answer inline math wrapper ``$...$`` dropped (the page
    renders no LaTeX; the judge reads the stored gold unchanged).

    >>> gold_text("$187$"), gold_text("$x$ or $y$"), gold_text("B"), gold_text(12)
    ('187', '$x$ or $y$', 'B', '12')
    """
    text = _text(x)
    if text and len(text) > 2 and text.startswith("$") and text.endswith("$") and "$" not in text[1:-1]:
        return text[1:-1].strip()
    return text


def _bool(x) -> bool | None:
    return None if x is None else bool(x)


def _rating_fields(row: Mapping, rec: Mapping) -> dict:
    """The fields both adapters read the same way: the query, its gold and its ratings."""
    return {
        "id": str(row["id"]),
        "split": row.get("split") or rec.get("split"),
        "question": _text(row.get("question", rec.get("question"))),
        "gold": gold_text(row.get("gold")),
        **{k: row.get(k) for k in ("d", "t", "ipr_d", "ipr_t")},
    }


def eval_queries(
    rows: Sequence[Mapping],
    *,
    records: Iterable[Any] | str | Path | None = None,
    p_t: float = 0.6,
    signal: str = "prp",
) -> list[dict]:
    """Query views of eval.py's instance table.  Both models answered every query there, so the
    route shown is the one ``signal`` takes at share ``p_t`` (metrics' rule: the
    ``floor(p_t n + 0.5)`` lowest keep scores go to the target, NaN lowest, stable ties);
    ``correct`` and ``latency_s`` are those of that route (proactive latency: prefix + target when
    routed).  ``score`` is the rule's s where the row has it (RatingRow), else the keep score.
    """
    insts = M.as_instances(rows)
    routed = set(M.target_order(M.signal_values(insts, signal))[: M.n_routed(p_t, len(insts))].tolist())
    extra = records_by_id(records)
    views = []
    for i, (row, inst) in enumerate(zip(rows, insts, strict=True)):
        rec = extra.get(str(row["id"]), {})
        to_target = i in routed
        keep = inst.signal(signal)
        score = row["score"] if signal == "prp" and "score" in row else None if math.isnan(keep) else keep
        views.append(
            query_view(
                i,
                **_rating_fields(row, rec),
                score=score,
                route="target" if to_target else "draft",
                draft_answer=_text(row.get("draft_answer")),
                target_answer=_text(row.get("target_answer")),
                correct=bool(inst.target_correct if to_target else inst.draft_correct),
                draft_correct=_bool(row.get("draft_correct")),
                target_correct=_bool(row.get("target_correct")),
                latency_s=M.instance_latency(inst, to_target=to_target),
                error=row.get("target_error"),
                has_image=rec.get("image", row.get("image")) is not None,
            )
        )
        views[-1]["_image"] = rec.get("image", row.get("image"))
    return views


def route_queries(
    rows: Sequence[Mapping], *, records: Iterable[Any] | str | Path | None = None
) -> list[dict]:
    """Query views of a routes JSONL (RouteRow fields, docs/routing.md).  ``route`` is ``draft``,
    ``target``, ``fallback`` (routed, the target failed, the draft answered) or ``error`` (the line
    could not be routed); the draft / target answers are whichever the run produced."""
    extra = records_by_id(records)
    views = []
    for i, row in enumerate(rows):
        rec = extra.get(str(row["id"]), {})
        route = row.get("route") or "error"
        if row.get("fallback"):
            route = "fallback"
        by_draft = row.get("answered_by") == "draft"
        draft_answer = row.get("answer") if by_draft else row.get("draft_answer")
        target_answer = (
            row.get("answer") if (route == "target" and not by_draft) else row.get("target_answer")
        )
        views.append(
            query_view(
                i,
                **_rating_fields(row, rec),
                score=row.get("score"),
                route=route,
                draft_answer=_text(draft_answer),
                target_answer=_text(target_answer),
                correct=_bool(row.get("correct")),
                draft_correct=_bool(row.get("correct")) if by_draft else None,
                target_correct=_bool(row.get("correct")) if route == "target" else None,
                latency_s=row.get("latency_s"),
                error=row.get("error"),
                has_image=rec.get("image", row.get("image")) is not None,
            )
        )
        views[-1]["_image"] = rec.get("image", row.get("image"))
    return views


def bench_records(bench: str, data_dir: str | Path | None) -> list | None:
    """A benchmark's records, for the questions and images of a report rebuilt from a saved table
    (``eval.py --table``) from ``data_dir`` (eval.py passes the embedded demo's for ``demo``).  None
    (logged) when they cannot be read: the page then shows ids and answers only."""
    from prp.eval.bench.registry import get_benchmark

    try:
        if data_dir is None:
            return None
        return get_benchmark(bench).load(str(data_dir), require_images=False).records
    except (OSError, ValueError, KeyError) as exc:
        log.warning("report.html without questions and images: cannot read %s records (%s)", bench, exc)
        return None


def route_mislabel_ids(views: Sequence[Mapping], *, min_rating: float = 0.9) -> list[str]:
    """A.7's filter on a routes file: the served answer is wrong although d >= min_rating (and
    t >= min_rating where the run has a t), highest d first.  (eval.py's list comes from
    ``metrics.mislabel_candidates``, where both models answered.)

    >>> vs = [{"id": "a", "d": 0.95, "t": None, "correct": False}, {"id": "b", "d": 0.99, "t": 0.5,
    ...       "correct": False}, {"id": "c", "d": 0.97, "t": 0.92, "correct": False},
    ...       {"id": "e", "d": 0.99, "t": None, "correct": True}]
    >>> route_mislabel_ids(vs)
    ['c', 'a']
    """
    picked = [
        v
        for v in views
        if v["correct"] is False
        and v["d"] is not None
        and v["d"] >= min_rating
        and (v["t"] is None or v["t"] >= min_rating)
    ]
    return [v["id"] for v in sorted(picked, key=lambda v: -v["d"])]


# ---- sections -------------------------------------------------------------------------------
def _f(x, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def eval_summary_html(report: Mapping) -> str:
    """Header line, notes, Table 1 and Table 2 from report.json's dict (prp.eval.report)."""
    parts = [
        (
            f"<p>n = {esc(report['n'])}; draft accuracy {_f(100 * report['draft_accuracy'])}%, "
            f"target accuracy {_f(100 * report['target_accuracy'])}%.</p>"
        )
    ]
    parts += [f'<p class="muted">Note: {esc(n)}</p>' for n in report.get("notes", [])]
    t1 = [["random (expected)", _f(report["random"]["auc"]), _f(report["random"]["apgr"], ".3f"), "-", "-"]]
    for name, b in report["signals"].items():
        if b["status"] != "ok":
            t1.append([name, "missing", "missing", "missing", b["n_nan"]])
        else:
            t1.append([name, _f(b["auc"]), _f(b["apgr"], ".3f"), _f(b["spearman"], ".3f"), b["n_nan"]])
    t1.append(["oracle", _f(report["oracle"]["auc"]), _f(report["oracle"]["apgr"], ".3f"), "-", "-"])
    parts += [
        "<h2>Table 1: rating and routing quality</h2>",
        html_table(["Signal", "AUC (%)", "APGR", "Spearman of Rank & Acc.", "NaN"], t1, id="table1"),
    ]
    if report.get("spearman_note"):
        parts.append(f'<p class="muted" id="spearman-note">Note: {esc(report["spearman_note"])}</p>')

    def line(name, r, p_t="-"):
        return [
            name,
            p_t,
            _f(100 * r["draft_share"], ".0f"),
            _f(100 * r["accuracy"], ".1f"),
            _f(r["mean_latency_s"], ".3f"),
            _f(r["speedup"], ".2f") + "x",
        ]

    t2 = [line(f"{r['model']} only", r) for r in report["reference_rows"]]
    blocks = [("random (expected)", report["random_table2"])]
    blocks += [(k, b["table2"]) for k, b in report["signals"].items() if b["status"] == "ok"]
    t2 += [line(name, r, _f(r["p_t"])) for name, rows in blocks for r in rows]
    parts += [
        "<details open><summary><h2>Table 2: accuracy, latency, speedup</h2></summary>",
        html_table(
            ["Router", "p_t", "Draft (1-p_t)%", "Accuracy (%)", "Avg. latency (s)", "Speedup"],
            t2,
            id="table2",
        ),
        "</details>",
    ]
    return "\n".join(parts)


def recorded_signal_models(rows: Sequence[Mapping]) -> dict[str, str]:
    """{signal: model} as eval.py records it (``signal_answers[signal]["model"]``: a baseline is
    judged on the answers of the model that produced its signal).

    >>> recorded_signal_models([{"signal_answers": {"p1": {"model": "grpo-7b"}}}])
    {'p1': 'grpo-7b'}
    """
    out: dict[str, str] = {}
    for row in rows:
        for name, own in (row.get("signal_answers") or {}).items():
            if isinstance(own, Mapping) and own.get("model"):
                out.setdefault(name, str(own["model"]))
    return out


def provenance_html(
    signals: Iterable[str], models: Mapping[str, Any] | None, recorded: Mapping[str, str] | None = None
) -> str:
    """Which model produced each column: answers and every baseline signal.  ``models``: the run's
    model arguments (draft, target, sft_cn, p1_model); ``recorded``: names the table itself holds,
    which win."""
    models, recorded = models or {}, recorded or {}

    def who(key, fallback=None):
        if models.get(key):
            return f"{key} ({models[key]})"
        return who(fallback) if fallback else key

    rows = [
        ["draft answer", who("draft"), "the draft's answer, continued from its rating prefix's cache"],
        ["target answer", who("target"), "the target's answer to the same query with its own prompt"],
    ]
    for name in signals:
        key, fallback, rule = SIGNAL_SOURCES.get(name, (None, None, "not recorded"))
        model = (
            f"{recorded[name]} (recorded in the table)"
            if name in recorded
            else who(key, fallback)
            if key
            else "-"
        )
        rows.append([f"signal {name}", model, rule])
    rows += [["random, oracle", "-", "computed from the two correctness columns (no model)"]]
    table = html_table(["column", "model", "rule"], rows, cls="", id="provenance")
    return f"<details open><summary><h2>Which model produced each column</h2></summary>{table}</details>"


def route_summary_html(summary: Mapping) -> str:
    """route.py's summary (prp.route.summary.summarize) as a two-column table."""
    rows = [[k, _f(v, ".4g") if isinstance(v, float) else v] for k, v in summary.items()]
    return "<h2>Summary</h2>" + html_table(["quantity", "value"], rows, id="summary")


# ---- writers --------------------------------------------------------------------------------
def write_eval_html(
    out_dir: str | Path,
    rows: Sequence[Mapping],
    *,
    report: Mapping | str | Path,
    plots: Mapping[str, str | Path] | None = None,
    records: Iterable[Any] | str | Path | None = None,
    models: Mapping[str, Any] | None = None,
    p_t: float = 0.6,
    signal: str = "prp",
    title: str | None = None,
) -> Path:
    """``<out_dir>/report.html`` for eval.py: ``report`` is report.json (its dict or path)."""
    out = Path(out_dir)
    data = json.loads(Path(report).read_text()) if isinstance(report, (str, Path)) else report
    plots = plots if plots is not None else data.get("plots", {})
    views = eval_queries(rows, records=records, p_t=p_t, signal=signal)
    failed = attach_images(views, out)
    s = data.get("mislabel_settings", {})
    note = (
        f"Route: where signal {signal!r} sends each query at p_t = {p_t:g} (both models answered every query; "
        f"correct and latency are those of that route)."
        + (f" {failed} images could not be previewed." if failed else "")
    )
    sections = [
        eval_summary_html(data),
        provenance_html(data["signals"], models, recorded_signal_models(rows)),
        plots_html(plots),
    ]
    page = render_page(
        title=title or data.get("title", "PRP report"),
        queries=views,
        sections=sections,
        mislabel_ids=[str(c["id"]) for c in data.get("mislabel_candidates", [])],
        mislabel_title="High rating but wrong (A.7): "
        + (s.get("rule") or M.mislabel_rule(s.get("min_rating", 0.9), s.get("rating", "d"))),
        route_note=note,
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_routes_html(
    routes_path: str | Path,
    rows: Sequence[Mapping],
    *,
    records: Iterable[Any] | str | Path | None = None,
    summary: Mapping | None = None,
    models: Mapping[str, Any] | None = None,
    min_rating: float = 0.9,
) -> Path:
    """``<routes>.html`` next to a routes JSONL (route.py --out)."""
    routes_path = Path(routes_path)
    path = routes_path.with_suffix(".html")
    views = route_queries(rows, records=records)
    failed = attach_images(views, path.parent)
    sections = [route_summary_html(summary) if summary else "", provenance_html((), models)]
    note = "Route: the decision route.py took (fallback: routed, the target failed, the draft answered)." + (
        f" {failed} images could not be previewed." if failed else ""
    )
    page = render_page(
        title=f"PRP routes: {routes_path.name}",
        queries=views,
        sections=sections,
        mislabel_ids=route_mislabel_ids(views, min_rating=min_rating),
        mislabel_title=f"High rating but wrong (A.7): d >= {min_rating:g} (and t >= {min_rating:g} where the run has "
        "a t), served answer wrong",
        route_note=note,
    )
    path.write_text(page, encoding="utf-8")
    return path
