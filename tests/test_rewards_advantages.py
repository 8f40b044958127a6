"""Eq. 1, 3, 4, 5, 6, the vanishing test and DAPO's over-length penalty, by hand."""
import math

import pytest
import torch

from prp.train.advantages import (
    advantage_vanishing,
    dynamic_score_substitution,
    group_advantages,
    rating_advantages,
    substitute_scores,
    substitution_interval,
)
from prp.train.rewards import accuracy_reward, format_reward, group_accuracy, overlong_reward, rating_reward


# ---- Eq. 4 -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "d, acc, expected",
    [
        (0.8, 0.5, 0.7),  # 1 - |0.8 - 0.5|
        (0.25, 0.75, 0.5),
        (0.0, 0.0, 1.0),  # edge: acc 0, perfect
        (1.0, 1.0, 1.0),  # edge: acc 1, d at the upper bound is still valid
        (0.0, 1.0, 0.0),
        (1.0001, 1.0, -1.0),  # just outside [0, 1]
        (-0.1, 0.0, -1.0),
        (1.5, 0.5, -1.0),
        (None, 0.5, -1.0),  # malformed
        (float("nan"), 0.5, -1.0),
    ],
)
def test_rating_reward_eq4(d, acc, expected):
    assert rating_reward(d, acc) == pytest.approx(expected)


def test_group_accuracy_eq3():
    assert group_accuracy([True, False, True, True]) == 0.75
    assert group_accuracy([None, 1.0, 0.0, False]) == 0.25  # None (unscorable) counts as wrong
    with pytest.raises(ValueError):
        group_accuracy([])


# ---- Eq. 1 -------------------------------------------------------------------------------
def test_group_advantages_eq1_by_hand():
    # rewards 2, 1, 1, 0: mean 1, sample std sqrt((1+0+0+1)/3) = sqrt(2/3) = 0.8165
    adv = group_advantages(torch.tensor([2.0, 1.0, 1.0, 0.0]))
    s = math.sqrt(2 / 3)
    assert adv.tolist() == pytest.approx([1 / s, 0.0, 0.0, -1 / s], abs=1e-6)
    # population std: sqrt(2/4) = 0.7071
    adv_pop = group_advantages(torch.tensor([2.0, 1.0, 1.0, 0.0]), unbiased=False)
    assert adv_pop.tolist() == pytest.approx([math.sqrt(2), 0, 0, -math.sqrt(2)], abs=1e-6)


def test_group_advantages_equal_rewards_and_n1_give_zeros():
    assert group_advantages(torch.tensor([1.5, 1.5, 1.5, 1.5])).tolist() == [0.0] * 4
    assert group_advantages(torch.tensor([2.0])).tolist() == [0.0]
    batched = group_advantages(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
    assert not torch.isnan(batched).any()
    assert batched[0].tolist() == [0.0, 0.0]
    assert batched[1].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])


# ---- Eq. 5 -------------------------------------------------------------------------------
def test_rating_advantages_eq5():
    # R = 0.9, 0.7, -1, 0.6: mean = 1.2 / 4 = 0.3
    adv = rating_advantages(torch.tensor([0.9, 0.7, -1.0, 0.6]))
    assert adv.tolist() == pytest.approx([0.6, 0.4, -1.3, 0.3], abs=1e-6)
    assert rating_advantages(torch.tensor([0.5, 0.5])).tolist() == [0.0, 0.0]


# ---- vanishing test ----------------------------------------------------------------------
def test_advantage_vanishing():
    # collapsed at 0.9 while Acc = 0.25: gap 0.65 > mu, std 0 < sigma
    assert advantage_vanishing([0.9, 0.9, 0.9, 0.9], 0.25, mu=0.2, sigma=0.05)
    # gap 0.0: close to Acc, nothing to fix
    assert not advantage_vanishing([0.25, 0.25, 0.25, 0.25], 0.25, mu=0.2, sigma=0.05)
    # spread: std of 0.1, 0.9, 0.1, 0.9 is 0.4 >= sigma
    assert not advantage_vanishing([0.1, 0.9, 0.1, 0.9], 1.0, mu=0.2, sigma=0.05)
    # population std of 0.88, 0.92 is 0.02 < 0.05; mean 0.9, gap 0.9 > mu
    assert advantage_vanishing([0.88, 0.92], 0.0, mu=0.2, sigma=0.05)
    # a malformed rating is never vanishing (its -1 reward already separates it)
    assert not advantage_vanishing([0.9, None, 0.9, 0.9], 0.0, mu=0.2, sigma=0.05)
    assert not advantage_vanishing([0.9, 0.9, 1.3, 0.9], 0.0, mu=0.2, sigma=0.05)


# ---- DSS interval and Eq. 6 --------------------------------------------------------------
@pytest.mark.parametrize(
    "d_last, acc, expected",
    [
        (0.9, 0.5, (0.1, 1.0)),  # d_N above Acc: [max(0, 0.5-0.4), min(0.9+0.4, 1)]
        (0.2, 0.5, (0.0, 0.8)),  # d_N below Acc: [max(0, 0.2-0.3), min(0.5+0.3, 1)]
        (0.6, 0.75, (0.45, 0.9)),  # [0.6-0.15, 0.75+0.15]
        (0.9, 1.0, (0.8, 1.0)),  # acc 1
        (0.3, 0.0, (0.0, 0.6)),  # acc 0
        (0.5, 0.5, (0.5, 0.5)),  # d_N already at Acc: a point
    ],
)
def test_substitution_interval_as_printed(d_last, acc, expected):
    lo, hi = substitution_interval(d_last, acc)
    assert (lo, hi) == pytest.approx(expected)


def test_dss_keeps_last_and_draws_inside_interval():
    gen = torch.Generator().manual_seed(0)
    scores = [0.9, 0.9, 0.9, 0.9]
    new_scores, adv = dynamic_score_substitution(scores, 0.5, generator=gen)
    assert new_scores[-1] == 0.9
    for s in new_scores[:-1]:
        assert 0.1 - 1e-9 <= s <= 1.0 and round(s, 2) == s
    # Eq. 6 by hand from the drawn values: A'_i = R'_i - R_N, A'_N = -sum
    r_last = 1 - abs(0.9 - 0.5)
    expected_head = [(1 - abs(s - 0.5)) - r_last for s in new_scores[:-1]]
    assert adv[:-1].tolist() == pytest.approx(expected_head, abs=1e-6)
    assert adv[-1].item() == pytest.approx(-sum(expected_head), abs=1e-6)
    assert adv.sum().item() == pytest.approx(0.0, abs=1e-6)


def test_dss_eq6_fixed_values_by_hand(monkeypatch):
    # Force the uniform draws to 0 and 1 so the new scores are the interval's ends.
    result = substitute_scores([0.2, 0.2, 0.2], 0.5, generator=torch.Generator().manual_seed(3))
    lo, hi = substitution_interval(0.2, 0.5)  # (0.0, 0.8)
    assert all(lo <= s <= hi for s in result.scores)
    # Hand case with chosen scores: R' = 1 - |s - 0.5|; R_N = 0.7
    # s = 0.45 -> 0.95 -> A' = 0.25;  s = 0.8 -> 0.7 -> A' = 0.0; A'_N = -0.25
    monkeypatch.setattr(torch, "rand", lambda n, generator=None, dtype=None: torch.tensor([0.5625, 1.0], dtype=dtype))
    new_scores, adv = dynamic_score_substitution([0.2, 0.2, 0.2], 0.5)
    assert new_scores == [0.45, 0.8, 0.2]
    assert adv.tolist() == pytest.approx([0.25, 0.0, -0.25], abs=1e-6)


def test_dss_d_last_above_and_below_acc_is_deterministic_with_seed():
    a = dynamic_score_substitution([0.1, 0.1, 0.1, 0.1], 0.75, generator=torch.Generator().manual_seed(7))
    b = dynamic_score_substitution([0.1, 0.1, 0.1, 0.1], 0.75, generator=torch.Generator().manual_seed(7))
    assert a[0] == b[0]
    assert all(0.0 <= s <= 1.0 for s in a[0])  # interval for d_N below: [0, 1]
    with pytest.raises(ValueError):
        dynamic_score_substitution([0.5], 0.5)  # N = 1: nothing to substitute
    with pytest.raises(ValueError):
        dynamic_score_substitution([0.5, 1.7], 0.5)  # invalid d_N


# ---- format / accuracy / over-length ------------------------------------------------------
def test_format_reward():
    good = "<confidence>0.5</confidence><think>x</think><answer>$1$</answer>"
    assert format_reward(good, "drl") == 1.0
    assert format_reward(good, "jrl") == 0.0  # jrl needs <target> first
    assert format_reward("<target>0.2</target>" + good, "jrl") == 1.0
    assert format_reward("<think>x</think><answer>1</answer>", "grpo") == 1.0


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("$\\frac{1}{2}$", "$0.5$", 1.0),
        ("0.5", "$\\frac{1}{2}$", 1.0),
        ("2.0", "$2$", 1.0),
        ("3", "$2$", 0.0),
        (None, "$2$", 0.0),
        ("", "$2$", 0.0),
        ("(B)", "B", 1.0),
        ("B. 12 cm", "(b)", 1.0),
        ("$C$", "B", 0.0),
        (None, "B", 0.0),
    ],
)
def test_accuracy_reward(answer, gold, expected):
    assert accuracy_reward(answer, gold) == expected


def test_accuracy_reward_unparsable_gold_is_none():
    assert accuracy_reward("5", "") is None
    assert accuracy_reward("5", "$$") is None


@pytest.mark.parametrize(
    "length, expected",
    [(50, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (101, -1.0)],
)
def test_overlong_reward_dapo(length, expected):
    # max 100, cache 20: soft zone (80, 100], ramp (80 - L) / 20
    assert overlong_reward(length, max_length=100, cache_length=20) == pytest.approx(expected)


def test_integer_fast_path_agrees_with_math_verify():
    """prp.core.judge compares plain integers without math-verify; the verdict must be math-verify's."""
    import random

    from math_verify import parse, verify

    from prp.core.judge import math_equivalent

    rng = random.Random(0)
    pairs = [("$46$", "046"), ("-3", "$-3$"), ("0", "$0$"), (" 12 ", "$12$"), ("$1999$", "1999")]
    pairs += [(str(rng.randint(-50, 300)), f"${rng.randint(-50, 300)}$") for _ in range(60)]
    for answer, gold in pairs:
        slow = bool(verify(parse(gold if "$" in gold else f"${gold}$"), parse(f"${answer.strip()}$")))
        assert math_equivalent(answer, gold) == slow, (answer, gold)
