"""prp.eval.report: files written, numbers match hand values, and the degenerate tables still work."""

import json
import math

import numpy as np
import pytest

from prp.eval.report import build_report

GRID = np.linspace(0, 1, 6)
PNG = b"\x89PNG\r\n\x1a\n"

# Same 5-instance table as tests/test_metrics.py, plus latencies, splits and ratings.
#   keep "prp": 0.9 0.2 0.5 0.2 0.7 ; draft 1 0 1 0 0 ; target 1 1 0 0 1
#   -> AUC 54.0, APGR 0.7, rank-Spearman -2/sqrt(11.4) = -0.592; random 50.0; oracle 70.0
KEEP = [0.9, 0.2, 0.5, 0.2, 0.7]
DC = [1, 0, 1, 0, 0]
TC = [1, 1, 0, 0, 1]


def _table(**extra_scores):
    recs = []
    for i in range(5):
        scores = {"prp": KEEP[i]}
        scores.update({k: v[i] for k, v in extra_scores.items() if v[i] is not None})
        recs.append(
            {
                "id": f"q{i}",
                "split": "val" if i < 2 else "test",
                "draft_correct": DC[i],
                "target_correct": TC[i],
                "draft_latency_s": 2.0,
                "target_latency_s": 20.0,
                "prefix_latency_s": 0.5,
                "d": [0.95, 0.1, 0.5, 0.92, 0.3][i],
                "scores": scores,
            }
        )
    return recs


def _load(paths):
    def reject(token):
        raise AssertionError(f"non-strict JSON constant {token}")

    data = json.loads(paths["json"].read_text(), parse_constant=reject)
    return data, paths["markdown"].read_text()


def test_report_numbers_files_and_plots(tmp_path):
    recs = _table(p1=[0.1, 0.9, float("nan"), 0.3, 0.5])
    paths = build_report(
        recs, signals=["prp", "p1", "p2"], p_t_list=[0.4], out_dir=tmp_path, title="toy", p_t_grid=GRID
    )
    data, md = _load(paths)
    prp = data["signals"]["prp"]
    assert prp["auc"] == pytest.approx(54.0) and prp["apgr"] == pytest.approx(0.7)
    assert prp["spearman"] == pytest.approx(-2 / math.sqrt(11.4))
    assert data["random"]["auc"] == pytest.approx(50.0) and data["oracle"]["auc"] == pytest.approx(70.0)
    # p_t=.4 -> idx 1, 3 to target: acc (1+0 + 1+1+0)/5; latency (2*20.5 + 3*2)/5 = 9.4
    (row,) = prp["table2"]
    assert row["accuracy"] == pytest.approx(0.6) and row["mean_latency_s"] == pytest.approx(9.4)
    assert row["speedup"] == pytest.approx(20 / 9.4)
    assert data["signals"]["p1"]["n_nan"] == 1 and data["signals"]["p2"]["status"] == "missing"
    assert [c["id"] for c in data["mislabel_candidates"]] == ["q3"]  # d>=.9 and wrong; q0 was right
    assert ("| prp [routing draft answers; routes after the rating prefix: prefix + target] "
            "| 54.00 | 0.700 | -0.592 | 0 | - |") in md
    assert "| p2 | missing |" in md and "treated as lowest" in md
    assert set(paths["plots"]) == {"routing_curves", "score_bins", "portion_curves", "per_split"}
    for p in paths["plots"].values():
        assert p.read_bytes()[:8] == PNG


def test_report_default_signals_and_no_splits(tmp_path):
    recs = _table(p2=[0.3, 0.2, 0.1, 0.4, 0.6])
    for r in recs:
        r["split"] = None
    paths = build_report(recs, p_t_list=[0.2], out_dir=tmp_path, p_t_grid=GRID)
    data, _ = _load(paths)
    assert list(data["signals"]) == ["prp", "p2"]
    assert "per_split" not in paths["plots"] and data["splits"] == []


def test_report_single_instance(tmp_path):
    recs = [
        {
            "id": "only",
            "draft_correct": 1,
            "target_correct": 1,
            "draft_latency_s": 1.0,
            "target_latency_s": 4.0,
            "scores": {"prp": 0.8},
        }
    ]
    data, md = _load(build_report(recs, signals=["prp"], p_t_list=[0.5], out_dir=tmp_path, p_t_grid=GRID))
    prp = data["signals"]["prp"]
    assert prp["auc"] == pytest.approx(100.0)
    assert prp["spearman"] is None and prp["apgr"] is None  # undefined -> null in JSON
    assert "APGR is undefined" in md


def test_report_all_correct_draft_and_all_nan_values(tmp_path):
    recs = _table(p2=[float("nan")] * 5)
    for r in recs:
        r["draft_correct"] = 1
    data, _ = _load(
        build_report(recs, signals=["prp", "p2"], p_t_list=[0.2], out_dir=tmp_path, p_t_grid=GRID)
    )
    assert data["draft_accuracy"] == 1.0
    assert data["signals"]["prp"]["spearman"] is None  # correctness is constant
    assert data["signals"]["p2"]["status"] == "missing"
    # target 0.6 < draft 1.0: the gap is negative but APGR is still defined
    assert data["oracle"]["apgr"] == pytest.approx((data["oracle"]["auc"] / 100 - 1.0) / (0.6 - 1.0))


def test_report_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        build_report([], out_dir=tmp_path)


def test_report_judges_p2_on_its_own_answers_and_labels_it(tmp_path):
    """P2's curve, AUC, Spearman and Tab. 2 rows come from the sft-cn model's answers and latency.

    p2 = .9 .2 .6 .4 (q0..q3); its answers correct 1 0 1 0; target 1 1 1 0 (q4 drops out: 4 rows).
    Target order: q1, q3, q2, q0 -> accuracies at k = 0..4: .5 .75 .75 .75 .75 -> AUC 71.875.
    Spearman(rank, correct) = -2/sqrt(5).  p_t = .5: q1, q3 routed, post hoc: (2 * (2 + 10) + 2 * 2) / 4 = 7.
    """
    recs = []
    for i, (p2, own, tc) in enumerate(zip([0.9, 0.2, 0.6, 0.4], [1, 0, 1, 0], [1, 1, 1, 0], strict=True)):
        recs.append({"id": f"q{i}", "draft_correct": [1, 1, 0, 0][i], "target_correct": tc,
                     "draft_latency_s": 1.0, "prefix_latency_s": 0.2, "target_latency_s": 10.0,
                     "scores": {"p2": p2},
                     "signal_answers": {"p2": {"model": "sft-cn", "correct": own, "latency_s": 2.0,
                                               "decision": "post_hoc"}}})
    data, md = _load(build_report(recs, signals=["p2"], p_t_list=[0.5], out_dir=tmp_path,
                                  p_t_grid=np.linspace(0, 1, 5)))
    p2 = data["signals"]["p2"]
    assert p2["auc"] == pytest.approx(71.875)  # on the routing draft's answers it would be 59.375
    assert p2["spearman"] == pytest.approx(-2 / math.sqrt(5))
    assert p2["answers_accuracy"] == 0.5 and p2["decision"] == "post_hoc"
    (row,) = p2["table2"]
    assert row["accuracy"] == pytest.approx(0.75) and row["mean_latency_s"] == pytest.approx(7.0)
    assert row["speedup"] == pytest.approx(10 / 7)
    assert "p2 [sft-cn answers; routes after the full answer: answer + target]" in md
