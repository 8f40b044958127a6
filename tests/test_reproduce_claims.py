"""benchmarks/reproduce_demo.py's item-4 and Fig. 8(a)(b) rows, on hand-made AUC blocks."""
from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import reproduce_demo as R  # noqa: E402


def _block(draft_acc: float, random: float, oracle: float, **aucs: float) -> dict:
    names = {"prp": R.ROUTER_SIGNAL, "no_ipr": "prp (no IPR)"}
    out = {"draft_acc": draft_acc, "random": {"auc": random}, "oracle": {"auc": oracle},
           "d_stats": {"mean": draft_acc, "std": 0.5}, "t": {"spearman_rank_target_acc": -0.9}}
    out.update({names.get(k, k): {"auc": v} for k, v in aucs.items()})
    return out


def _rows(res: dict) -> list[dict]:
    base = {"accuracy_by_level": {"target": {"mean": 0.7}}, "n": 400}
    return [c for c in R.claims({**base, **res}) if c["item"] in (4, "Fig. 8ab")]


def test_range_share_by_hand():
    # (70 - 60) / (80 - 60) = 0.5; an oracle no better than random has no range
    assert R._range_share(_block(0.5, 60.0, 80.0, prp=70.0), R.ROUTER_SIGNAL) == 0.5
    assert math.isnan(R._range_share(_block(0.5, 60.0, 60.0, prp=60.0), R.ROUTER_SIGNAL))
    assert math.isnan(R._range_share(None, "p1"))


def test_item_4_uses_the_grpo_drafts_p1_and_reports_the_stricter_one_apart():
    res = {"drl": _block(0.49, 59.8, 77.8, prp=68.7, no_ipr=72.2, d=72.2, p1=68.6),
           "jrl": _block(0.50, 60.0, 77.7, prp=76.9, no_ipr=77.0, d=74.0, p1=68.5),
           "p1_grpo": _block(0.43, 56.5, 72.2, p1=64.4)}
    paper, stricter, ipr = _rows(res)
    assert paper["reproduced"] and "P1 64.4" in paper["measured"]
    # (68.7 - 59.8) / (77.8 - 59.8) = 0.494 ; (64.4 - 56.5) / (72.2 - 56.5) = 0.503
    assert "DRL 0.494, P1 0.503" in paper["measured"] and "49.0% vs 43.0%" in paper["measured"]
    assert not stricter["reproduced"] and "DRL 68.7 vs P1 68.6 (d without IPR: 72.2)" == stricter["measured"]
    assert not ipr["reproduced"]  # IPR lowers both AUCs here


def test_item_4_fails_without_the_grpo_baseline_or_with_a_close_one():
    drl = _block(0.49, 59.8, 77.8, prp=68.7, no_ipr=68.0, p1=66.0)
    jrl = _block(0.50, 60.0, 77.7, prp=76.9, no_ipr=76.0, p1=66.0)
    paper, stricter, ipr = _rows({"drl": drl, "jrl": jrl})  # no GRPO draft measured: P1 is NaN, not a pass
    assert not paper["reproduced"] and "P1 nan" in paper["measured"]
    assert stricter["reproduced"] and ipr["reproduced"]
    paper, _, _ = _rows({"drl": drl, "jrl": jrl, "p1_grpo": _block(0.43, 56.5, 72.2, p1=67.8)})
    assert not paper["reproduced"]  # 68.7 < 67.8 + 1
