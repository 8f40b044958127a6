"""prp.eval.metrics against tables small enough to work out by hand (Tab. 1-2, Fig. 4, 7, 12, A.7)."""

import math

import numpy as np
import pytest

from prp.eval.metrics import (
    Instance,
    apgr,
    as_instances,
    auc,
    average_ranks,
    instance_latency,
    mislabel_candidates,
    n_routed,
    oracle_curve,
    oracle_order,
    per_split_curves,
    portion_curves,
    random_curve,
    random_curve_expected,
    rating_rank_correlation,
    reference_rows,
    routing_curve,
    score_bins,
    signal_values,
    spearman,
    table2_random_rows,
    table2_rows,
    target_order,
)

# The 5-instance table used throughout.
#   idx  keep  draft  target  effect of routing to target
#   0    0.9   1      1       none
#   1    0.2   0      1       gain
#   2    0.5   1      0       loss
#   3    0.2   0      0       none
#   4    0.7   0      1       gain
KEEP = [0.9, 0.2, 0.5, 0.2, 0.7]
DC = [1, 0, 1, 0, 0]
TC = [1, 1, 0, 0, 1]
GRID = np.linspace(0, 1, 6)  # k = 0..5 exactly


# ---- rounding / order -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "p_t, n, rounding, k",
    [
        (0.5, 5, "round", 3),  # 2.5 rounds half up
        (0.1, 5, "round", 1),  # 0.5 -> 1
        (0.3, 5, "round", 2),  # 1.5 -> 2 (not banker's 2 by luck: 0.3*5 = 1.5)
        (0.5, 3, "round", 2),  # 1.5 -> 2
        (0.25, 2, "round", 1),  # 0.5 -> 1 (banker's rounding would give 0)
        (0.29, 100, "round", 29),  # 0.29*100 = 28.999999999999996
        (0.07, 100, "ceil", 7),  # 7.000000000000001 must not ceil to 8
        (0.1, 5, "ceil", 1),
        (0.1, 5, "floor", 0),
        (0.0, 7, "round", 0),
        (1.0, 7, "round", 7),
    ],
)
def test_n_routed(p_t, n, rounding, k):
    assert n_routed(p_t, n, rounding=rounding) == k


def test_n_routed_rejects_bad_input():
    with pytest.raises(ValueError):
        n_routed(1.2, 5)
    with pytest.raises(ValueError):
        n_routed(0.5, 5, rounding="nearest")


def test_target_order_lowest_first_stable_ties_nan_lowest():
    assert target_order(KEEP).tolist() == [1, 3, 2, 4, 0]  # the two 0.2s keep table order
    assert target_order([0.3, float("nan"), 0.3, float("nan")]).tolist() == [1, 3, 0, 2]


# ---- curves ---------------------------------------------------------------------------------
def test_routing_curve_by_hand():
    # order 1,3,2,4,0 with gains +1,0,-1,+1,0 on top of 2 draft hits:
    # correct = 2,3,3,2,3,3 -> /5
    acc = routing_curve(KEEP, DC, TC, p_t_grid=GRID)
    assert acc.tolist() == pytest.approx([0.4, 0.6, 0.6, 0.4, 0.6, 0.6])


def test_routing_curve_tie_break_matters():
    # At k=1 the tie 0.2/0.2 between idx1 (gain) and idx3 (no change) decides: stable -> idx1.
    assert routing_curve(KEEP, DC, TC, p_t_grid=[0.2])[0] == pytest.approx(0.6)
    reordered = [KEEP[i] for i in (3, 1, 2, 0, 4)]  # same table, idx3 now first
    dc = [DC[i] for i in (3, 1, 2, 0, 4)]
    tc = [TC[i] for i in (3, 1, 2, 0, 4)]
    assert routing_curve(reordered, dc, tc, p_t_grid=[0.2])[0] == pytest.approx(0.4)


def test_routing_curve_nan_goes_to_target_first():
    # idx0 is a gain with NaN score -> routed first: k=1 gives 2/2 correct.
    assert routing_curve([float("nan"), 0.1], [0, 1], [1, 0], p_t_grid=[0.5]).tolist() == [1.0]


def test_routing_curve_rounding_half_up():
    # n=2, p_t=0.25 -> k=1 under "round", 0 under "floor".
    assert routing_curve([0, 1], [0, 0], [1, 1], p_t_grid=[0.25]).tolist() == [0.5]
    assert routing_curve([0, 1], [0, 0], [1, 1], p_t_grid=[0.25], rounding="floor").tolist() == [0.0]


def test_oracle_order_and_curve_by_hand():
    # groups: gain {1, 4}, no change {0, 3}, loss {2}
    assert oracle_order(DC, TC).tolist() == [1, 4, 0, 3, 2]
    # correct = 2,3,4,4,4,3
    assert oracle_curve(DC, TC, p_t_grid=GRID).tolist() == pytest.approx([0.4, 0.6, 0.8, 0.8, 0.8, 0.6])


def test_oracle_dominates_any_router():
    rng = np.random.default_rng(0)
    dc, tc = rng.random(40) < 0.5, rng.random(40) < 0.6
    best = oracle_curve(dc, tc)
    for _ in range(20):
        assert np.all(routing_curve(rng.random(40), dc, tc) <= best + 1e-12)


def test_random_expected_by_hand():
    # acc_d = 0.4, acc_t = 0.6 -> 0.4 + 0.2 * k/5
    exp = random_curve_expected(DC, TC, p_t_grid=GRID)
    assert exp.tolist() == pytest.approx([0.4, 0.44, 0.48, 0.52, 0.56, 0.6])
    # uses the rounded k: n=2, p_t=0.25 -> k=1 -> share 0.5
    assert random_curve_expected([1, 1], [0, 0], p_t_grid=[0.25]).tolist() == [0.5]


def test_random_seed_average_approaches_expectation():
    exp = random_curve_expected(DC, TC, p_t_grid=GRID)
    few = random_curve(DC, TC, p_t_grid=GRID, seeds=[0])
    many = random_curve(DC, TC, p_t_grid=GRID, seeds=range(2000))
    assert np.max(np.abs(many - exp)) < 0.01
    assert np.max(np.abs(many - exp)) < np.max(np.abs(few - exp))  # one permutation is far off
    assert (few[0], few[-1]) == pytest.approx((exp[0], exp[-1]))  # end points exact for any seed


# ---- AUC / APGR -----------------------------------------------------------------------------
def test_auc_by_hand():
    # 0.2 * (0.5 + 0.6 + 0.5 + 0.5 + 0.6) = 0.54
    assert auc(GRID, routing_curve(KEEP, DC, TC, p_t_grid=GRID)) == pytest.approx(54.0)
    assert auc(GRID, random_curve_expected(DC, TC, p_t_grid=GRID)) == pytest.approx(50.0)
    # 0.2 * (0.5 + 0.7 + 0.8 + 0.8 + 0.7) = 0.70
    assert auc(GRID, oracle_curve(DC, TC, p_t_grid=GRID)) == pytest.approx(70.0)


def test_auc_uneven_grid_partial_span_single_point():
    assert auc([0, 0.25, 1], [0, 1, 1]) == pytest.approx(87.5)  # 0.125 + 0.75
    assert auc([0.5, 1.0], [1.0, 0.0]) == pytest.approx(50.0)  # divided by the span 0.5
    assert auc([0.3], [0.8]) == pytest.approx(80.0)
    with pytest.raises(ValueError):
        auc([0, 1, 0.5], [0, 0, 0])


def test_apgr_by_hand():
    curve = routing_curve(KEEP, DC, TC, p_t_grid=GRID)
    assert apgr(GRID, curve, draft_acc=0.4, target_acc=0.6) == pytest.approx(0.7)  # (0.54-0.4)/0.2
    rnd = random_curve_expected(DC, TC, p_t_grid=GRID)
    assert apgr(GRID, rnd, draft_acc=0.4, target_acc=0.6) == pytest.approx(0.5)
    assert apgr(GRID, oracle_curve(DC, TC, p_t_grid=GRID), draft_acc=0.4, target_acc=0.6) == pytest.approx(
        1.5
    )


def test_apgr_is_mean_pgr_routellm():
    # RouteLLM: (AUC - AUC_weak) / (AUC_strong - AUC_weak) == integral of PGR(p) over p
    x = np.array([0, 0.1, 0.5, 1.0])
    y = np.array([0.3, 0.5, 0.55, 0.7])
    pgr = (y - 0.3) / (0.7 - 0.3)
    assert apgr(x, y, draft_acc=0.3, target_acc=0.7) == pytest.approx(auc(x, pgr) / 100)


def test_apgr_equal_accuracies_is_nan():
    assert math.isnan(apgr([0, 1], [0.5, 0.5], draft_acc=0.5, target_acc=0.5))


# ---- Spearman -------------------------------------------------------------------------------
def test_average_ranks_ties():
    assert average_ranks([3, 1, 3, 2, 3]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_spearman_by_hand():
    # no ties: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6*2/60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks x = [1, 2.5, 2.5, 4]; Pearson = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_degenerate_is_nan():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([1, float("nan")], [1, 2]))


def test_rating_rank_correlation_perfect_anti_random():
    # perfect: desc ranks [1,2,3,4] vs correct [1,1,0,0]: cov -2, var 5 and 1 -> -2/sqrt(5)
    assert rating_rank_correlation([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(-2 / math.sqrt(5))
    assert rating_rank_correlation([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(2 / math.sqrt(5))
    # a two-valued perfect rater reaches -1
    assert rating_rank_correlation([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    assert abs(rating_rank_correlation(rng.random(4000), rng.random(4000) < 0.5)) < 0.05


def test_rating_rank_correlation_is_minus_spearman_and_handles_nan():
    rng = np.random.default_rng(1)
    r, c = rng.random(30), rng.random(30) < 0.5
    assert rating_rank_correlation(r, c) == pytest.approx(-spearman(r, c))
    # NaN ranks last: desc ranks [4, 1, 3, 2] vs [0, 1, 0, 1] is a perfect order (-2/sqrt 5);
    # had NaN ranked first it would be 0.
    got = rating_rank_correlation([float("nan"), 0.9, 0.1, 0.5], [0, 1, 0, 1])
    assert got == pytest.approx(-2 / math.sqrt(5))


def test_rating_rank_correlation_hand_with_ties():
    # desc ranks [1, 4.5, 3, 4.5, 2] vs [1,0,1,0,0]: cov -2, var 9.5 and 1.2
    assert rating_rank_correlation(KEEP, DC) == pytest.approx(-2 / math.sqrt(11.4))


# ---- score bins -----------------------------------------------------------------------------
def test_score_bins_by_hand():
    r = [0.05, 0.15, 0.15, 0.99, 1.0, 0.1, float("nan"), -0.2, 1.3]
    c = [1, 0, 1, 1, 0, 1, 1, 0, 1]
    b = score_bins(r, c, bins=10)
    # bin0: 0.05(1), -0.2 clipped(0); bin1: 0.15(0), 0.15(1), 0.1 edge(1); bin9: 0.99(1), 1.0(0), 1.3(1)
    assert b["count"] == [2, 3, 0, 0, 0, 0, 0, 0, 0, 3]
    acc = b["accuracy"]
    assert acc[0] == 0.5 and acc[1] == pytest.approx(2 / 3) and acc[9] == pytest.approx(2 / 3)
    assert all(math.isnan(a) for a in acc[2:9])
    assert b["n_nan"] == 1
    assert b["edges"][:2] == pytest.approx([0.0, 0.1])


def test_score_bins_float_edges():
    # 0.3, 0.6, 0.7 sit exactly on edges and open their bin
    b = score_bins([0.3, 0.6, 0.7, 0.29], [1, 1, 1, 1], bins=10)
    assert [i for i, k in enumerate(b["count"]) if k] == [2, 3, 6, 7]


# ---- Tab. 2 ---------------------------------------------------------------------------------
def _lat(id_, dc, tc, draft_s, target_s, prefix_s, score):
    return {
        "id": id_,
        "draft_correct": dc,
        "target_correct": tc,
        "draft_latency_s": draft_s,
        "target_latency_s": target_s,
        "prefix_latency_s": prefix_s,
        "scores": {"s": score},
    }


LAT = [
    _lat("a", 1, 1, 2, 20, 0.5, 0.9),
    _lat("b", 0, 1, 3, 30, 0.5, 0.1),
    _lat("c", 1, 0, 2, 10, 0.5, 0.6),
    _lat("d", 0, 0, 5, 40, 1.0, 0.4),
]


def test_table2_rows_by_hand():
    # target-only mean latency = (20+30+10+40)/4 = 25; order b, d, c, a
    rows = table2_rows(LAT, "s", [0.0, 0.25, 0.5, 1.0])
    assert [r["n_target"] for r in rows] == [0, 1, 2, 4]
    assert [r["draft_share"] for r in rows] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    assert [r["accuracy"] for r in rows] == pytest.approx([0.5, 0.75, 0.75, 0.5])
    # p_t=.25: b->0.5+30, a 2, c 2, d 5 -> 39.5/4; p_t=.5: 30.5+41+2+2 -> 75.5/4; all: 102.5/4
    assert [r["mean_latency_s"] for r in rows] == pytest.approx([3.0, 9.875, 18.875, 25.625])
    assert [r["speedup"] for r in rows] == pytest.approx([25 / 3, 25 / 9.875, 25 / 18.875, 25 / 25.625])


def test_table2_post_hoc_pays_the_full_draft():
    (row,) = table2_rows(LAT, "s", [0.5], decision="post_hoc")
    assert row["mean_latency_s"] == pytest.approx((33 + 45 + 2 + 2) / 4)
    inst = as_instances(LAT)[1]
    assert instance_latency(inst, to_target=False) == 3
    with pytest.raises(ValueError):
        instance_latency(inst, to_target=True, decision="later")


def test_reference_and_random_rows():
    target, draft = reference_rows(LAT)
    assert (target["accuracy"], target["mean_latency_s"]) == (0.5, 25.0)
    assert (draft["accuracy"], draft["mean_latency_s"]) == (0.5, 3.0)
    (rnd,) = table2_random_rows(LAT, [0.5])
    assert rnd["mean_latency_s"] == pytest.approx(0.5 * 3.0 + 0.5 * 25.625)
    assert rnd["accuracy"] == pytest.approx(0.5)


# ---- Fig. 12 portions, per-split curves -----------------------------------------------------
def test_portion_curves_by_hand():
    c = portion_curves(KEEP, DC, TC, p_t_grid=[0.0, 0.4])
    # p_t=.4: target gets idx 1, 3; draft keeps 2, 4, 0
    assert c["overall"].tolist() == pytest.approx([0.4, 0.6])
    assert c["draft_on_draft"][1] == pytest.approx(2 / 3)  # dc[2,4,0] = 1,0,1
    assert c["target_on_target"][1] == pytest.approx(0.5)  # tc[1,3] = 1,0
    assert c["target_on_draft"][1] == pytest.approx(2 / 3)  # tc[2,4,0] = 0,1,1
    assert c["draft_on_target"][1] == pytest.approx(0.0)  # dc[1,3] = 0,0
    assert math.isnan(c["target_on_target"][0]) and math.isnan(c["draft_on_target"][0])


def test_per_split_curves_use_only_their_split():
    recs = [
        {"id": 0, "split": "val", "draft_correct": 0, "target_correct": 1, "scores": {"s": 0.1}},
        {"id": 1, "split": "val", "draft_correct": 1, "target_correct": 0, "scores": {"s": 0.9}},
        {"id": 2, "split": "test", "draft_correct": 1, "target_correct": 1, "scores": {"s": 0.5}},
        {"id": 3, "split": None, "draft_correct": 0, "target_correct": 0, "scores": {"s": 0.0}},
    ]
    out = per_split_curves(recs, "s", p_t_grid=[0.0, 0.5, 1.0])
    assert list(out) == ["val", "test"]
    assert out["val"]["n"] == 2 and out["val"]["routing"].tolist() == [0.5, 1.0, 0.5]
    assert out["test"]["routing"].tolist() == [1.0, 1.0, 1.0]
    assert per_split_curves([{"id": 0, "draft_correct": 1, "target_correct": 1}], "s") == {}


# ---- A.7 ------------------------------------------------------------------------------------
def test_mislabel_candidates():
    recs = [
        {"id": "low", "draft_correct": 0, "target_correct": 0, "d": 0.5, "t": 0.95},
        {"id": "edge", "draft_correct": 0, "target_correct": 0, "d": 0.9, "t": 0.9},  # threshold inclusive
        {"id": "right", "draft_correct": 1, "target_correct": 0, "d": 0.99, "t": 0.99},
        {"id": "tgt_ok", "draft_correct": 0, "target_correct": 1, "d": 0.99, "t": 0.99},  # target solved it
        {"id": "tgt_low", "draft_correct": 0, "target_correct": 0, "d": 0.97, "t": 0.2},  # target rated low
        {"id": "no_t", "draft_correct": 0, "target_correct": 1, "d": 0.95},  # draft side only
        {"id": "top", "draft_correct": 0, "target_correct": 0, "d": 0.98, "t": 0.93},
        {"id": "nan", "draft_correct": 0, "target_correct": 0, "d": None},
    ]
    assert [c["id"] for c in mislabel_candidates(recs)] == ["top", "no_t", "edge"]
    loose = [c["id"] for c in mislabel_candidates(recs, both=False)]
    assert loose == ["tgt_ok", "top", "tgt_low", "no_t", "edge"]
    assert mislabel_candidates(recs, min_rating=0.99) == []


# ---- the table itself -----------------------------------------------------------------------
def test_instances_from_dicts_and_signals():
    a = as_instances(
        [{"id": 7, "draft_correct": 1, "target_correct": 0, "scores": {"prp": 0.4}, "extra": "x"}]
    )[0]
    assert (a.id, a.draft_correct, a.target_correct, a.prefix_latency_s) == ("7", True, False, 0.0)
    assert math.isnan(a.draft_latency_s) and as_instances([a])[0] is a
    assert Instance(id="x", draft_correct=True, target_correct=True, t=0.3).signal("t") == 0.3
    assert signal_values([a], "prp").tolist() == [0.4]
    assert math.isnan(signal_values([a], "p2")[0]) and math.isnan(a.signal("d"))


# ---- the rule's direction (issue: target-first sends high s to the target) -----------------
from prp.route.decide import BatchFraction, calibrate  # noqa: E402
from prp.route.scoring import get_rule  # noqa: E402

# 4 queries built for target-first (tau = 2): s = t + (t - d) / 2
#   q   d    t    s     draft  target
#   0   .9   .9   .90   1      1
#   1   .2   .8   1.10  0      1       <- the one the target should take
#   2   .8   .3   .05   1      0
#   3   .1   .1   .10   0      0
TF_D, TF_T, TF_DC, TF_TC = [0.9, 0.2, 0.8, 0.1], [0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], [1, 1, 0, 0]
GRID5 = np.linspace(0, 1, 5)


def test_target_first_direction_by_hand():
    rule = get_rule("target_first")
    s = [rule.score(d, t, tau=2.0) for d, t in zip(TF_D, TF_T, strict=True)]
    assert s == pytest.approx([0.9, 1.1, 0.05, 0.1])
    keep = [rule.keep_score(x) for x in s]
    # target order (highest s first): q1, q0, q3, q2 -> accuracies .5 .75 .75 .75 .5 -> AUC 68.75
    assert target_order(keep).tolist() == [1, 0, 3, 2]
    assert auc(GRID5, routing_curve(keep, TF_DC, TF_TC, p_t_grid=GRID5)) == pytest.approx(68.75)
    assert auc(GRID5, random_curve_expected(TF_DC, TF_TC, p_t_grid=GRID5)) == pytest.approx(50.0)
    # the old direction (high s kept on the draft) routes q2 first: .5 .25 .25 .25 .5 -> 31.25
    assert auc(GRID5, routing_curve(s, TF_DC, TF_TC, p_t_grid=GRID5)) == pytest.approx(31.25)
    # the decision and the calibration agree with the metrics: one query to the target = q1
    assert BatchFraction(0.25, "target_first").keep(s) == [True, False, True, True]
    cal = calibrate(s, TF_DC, TF_TC, p_t=0.25, rule="target_first")
    # q1 to the target; q0, q2 right on the draft, q3 wrong on both: 3/4
    assert cal.threshold == pytest.approx(1.1) and cal.accuracy == 0.75 and cal.rule == "target_first"


def test_target_first_beats_random_in_a_seeded_simulation():
    """4,000 queries where the target's edge grows with t: p_t ~ U(0, 1), p_d = p_t * U(0, .5)
    (a hard set: the draft is weaker everywhere); calibrated ratings d, t = p + N(0, .05), two decimals."""
    rng = np.random.default_rng(0)
    n = 4000
    p_t = rng.uniform(0, 1, n)
    p_d = p_t * rng.uniform(0, 0.5, n)
    tc, dc = rng.random(n) < p_t, rng.random(n) < p_d
    t = np.round(np.clip(p_t + rng.normal(0, 0.05, n), 0, 1), 2)
    d = np.round(np.clip(p_d + rng.normal(0, 0.05, n), 0, 1), 2)
    rule = get_rule("target_first")
    s = [rule.score(a, b, tau=2.0) for a, b in zip(d, t, strict=True)]
    grid = np.linspace(0, 1, 101)
    rnd = auc(grid, random_curve_expected(dc, tc, p_t_grid=grid))
    right = auc(grid, routing_curve([rule.keep_score(x) for x in s], dc, tc, p_t_grid=grid))
    wrong = auc(grid, routing_curve(s, dc, tc, p_t_grid=grid))
    assert right > rnd + 3 and wrong < rnd - 3


# ---- baselines on their own answers, deciding after a full answer ---------------------------
def test_p1_on_the_routing_draft_pays_draft_plus_target():
    """P1 without --p1-model: the routing draft's answers, decided post hoc.
    Two instances: draft 1.0 s (prefix .2), target 10 s; p_t = .5 routes the lower p1 (idx 1):
    P1 latency (1 + 10 + 1) / 2 = 6.0 vs PRP's proactive (.2 + 10 + 1) / 2 = 5.6."""
    recs = [{"id": i, "draft_correct": 1, "target_correct": 1, "draft_latency_s": 1.0, "prefix_latency_s": 0.2,
             "target_latency_s": 10.0, "scores": {"prp": [0.9, 0.1][i], "p1": [0.9, 0.1][i]},
             "signal_answers": {"p1": {"model": "routing draft", "correct": 1, "latency_s": 1.0,
                                       "decision": "post_hoc"}}} for i in range(2)]
    (p1,) = table2_rows(recs, "p1", [0.5])
    (prp,) = table2_rows(recs, "prp", [0.5])
    assert p1["mean_latency_s"] == pytest.approx(6.0) and prp["mean_latency_s"] == pytest.approx(5.6)
    assert p1["speedup"] == pytest.approx(10 / 6.0)
