"""route.py's summary of a routed file: share routed, latency, speedup vs target-only, accuracy.

Light (no torch): the entry scripts print it, the HTML report shows it (prp.eval.html).
"""
from __future__ import annotations

import statistics


def summarize(rows: list[dict]) -> dict:
    """Share routed, latency, speedup vs target-only, accuracy (where gold is present).

    Speedup: mean target-only latency / mean routed latency.  Target-only latency is measured
    per query when the run had `--measure-target-only`; otherwise it is estimated as the mean
    target latency of the queries that did go to the target (routed queries are the hard ones,
    so this is an estimate, labelled as such).
    """
    ok = [r for r in rows if not r.get("error") or r.get("fallback")]
    failed = [r for r in rows if r.get("error") and not r.get("fallback")]
    out: dict = {"queries": len(rows), "errors": len(failed),
                 # every error row, so the count and the list printed under it always agree
                 "error_rows": [{"line": r.get("line"), "id": r.get("id"), "error": str(r["error"])} for r in failed]}
    if not ok:
        return out
    routed = [r for r in ok if r["route"] == "target"]
    out["rule"] = next((r["rule"] for r in ok if r.get("rule")), None)  # which way s points (docs/routing.md)
    out["share_routed"] = len(routed) / len(ok)
    out["fallbacks"] = sum(1 for r in ok if r.get("fallback"))
    out["missing_rating"] = sum(1 for r in ok if r.get("d") is None)
    out["mean_latency_s"] = statistics.fmean(r["latency_s"] for r in ok)
    out["mean_prefix_latency_s"] = statistics.fmean(r["prefix_latency_s"] for r in ok)
    measured = [r["target_only_latency_s"] for r in ok if r.get("target_only_latency_s") is not None]
    estimated = [r["target_latency_s"] for r in routed if not r.get("fallback") and r.get("target_latency_s")]
    if measured and len(measured) == len(ok):
        out["target_only_mean_latency_s"] = statistics.fmean(measured)
        out["speedup_vs_target_only"] = out["target_only_mean_latency_s"] / out["mean_latency_s"]
        out["speedup_basis"] = "measured"
    elif estimated:
        out["target_only_mean_latency_s"] = statistics.fmean(estimated)
        out["speedup_vs_target_only"] = out["target_only_mean_latency_s"] / out["mean_latency_s"]
        out["speedup_basis"] = "estimated from routed queries' target latency"
    scored = [r for r in ok if r.get("correct") is not None]
    if scored:
        out["accuracy"] = sum(r["correct"] for r in scored) / len(scored)
        out["accuracy_n"] = len(scored)
    baseline = [r for r in scored if r.get("target_only_correct") is not None]
    if scored and len(baseline) == len(scored):  # the same queries, answered by the target alone
        out["target_only_accuracy"] = sum(r["target_only_correct"] for r in baseline) / len(baseline)
    return out


MAX_ERRORS_SHOWN = 20


def format_summary(s: dict) -> str:
    """The summary route.py prints: the error rows are listed under their count, by reason, then one line
    each (the first MAX_ERRORS_SHOWN; the rest are counted and stay in the routes file).

    >>> print(format_summary(summarize([{"line": 1, "id": "a", "error": "missing_image: x.png"},
    ...                                 {"line": 2, "id": "b", "error": "bad_json: Expecting value"}])))
    queries 2  errors 2 (missing_image 1, bad_json 1)
      line 1 (id a): missing_image: x.png
      line 2 (id b): bad_json: Expecting value
    """
    errors = s.get("error_rows", [])
    reasons: dict[str, int] = {}
    for e in errors:
        name = e["error"].split(":", 1)[0]
        reasons[name] = reasons.get(name, 0) + 1
    by_reason = f" ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if reasons else ""
    lines = [f"queries {s['queries']}  errors {s['errors']}{by_reason}"]
    lines += [f"  line {e['line']} (id {e['id']}): {e['error']}" for e in errors[:MAX_ERRORS_SHOWN]]
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS_SHOWN} more error rows in the routes file")
    if "share_routed" in s:
        lines.append(f"routed to target {s['share_routed']:.1%}  fallbacks {s['fallbacks']}  "
                     f"missing rating {s['missing_rating']}")
        if s.get("rule"):
            lines.append(f"rule {s['rule']}: " + ("high s goes to the target" if s["rule"] == "target_first"
                                                  else "high s stays on the draft"))
        lines.append(f"mean latency {s['mean_latency_s']:.3f}s per query, batched wall time shared evenly "
                     f"(prefix {s['mean_prefix_latency_s']:.3f}s)")
    if "speedup_vs_target_only" in s:
        lines.append(f"speedup vs target-only {s['speedup_vs_target_only']:.2f}x ({s['speedup_basis']}; "
                     f"target-only {s['target_only_mean_latency_s']:.3f}s/query)")
    if "accuracy" in s:
        lines.append(f"accuracy {s['accuracy']:.1%} over {s['accuracy_n']} with gold"
                     + (f" (target-only {s['target_only_accuracy']:.1%})" if "target_only_accuracy" in s else ""))
    return "\n".join(lines)
