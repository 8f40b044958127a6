"""Eq. 2/7/8 (loss and its gradient), Sec. 4.2 scoring rules, Eq. 9 IPR reference."""
import pytest
import torch

from prp.route.ipr import digit_stats_from_logits, ipr_from_digit_probs, ipr_from_logits, sign_digit
from prp.route.scoring import apply_ipr, route_score
from prp.train.loss import Segment, prp_loss, token_advantage_map

P, R, D, T = Segment.PROMPT, Segment.REST, Segment.DRAFT, Segment.TARGET


# ---- Eq. 7 / 8 ---------------------------------------------------------------------------
def test_advantage_map_by_hand():
    segments = torch.tensor(
        [
            [P, P, T, D, D, R, R, R, R, P],  # jrl: 1 t-token, 2 d-tokens, 4 rest, 1 pad
            [P, P, P, D, R, R, P, P, P, P],  # 1 d-token, 2 rest, no t-token
        ]
    )
    w = token_advantage_map(
        segments=segments,
        a_base=torch.tensor([0.8, -0.4]),
        a_d=torch.tensor([0.2, 0.6]),
        a_t=torch.tensor([-0.5, 1.0]),
        alpha=1.5,
        beta=2.0,
    )
    # row 0: t = 2.0 * -0.5 / 1 = -1.0; d = 1.5 * 0.2 / 2 = 0.15; rest = 0.8 / 4 = 0.2
    assert w[0].tolist() == pytest.approx([0, 0, -1.0, 0.15, 0.15, 0.2, 0.2, 0.2, 0.2, 0])
    # row 1: d = 1.5 * 0.6 / 1 = 0.9; rest = -0.4 / 2 = -0.2; empty t-segment contributes nothing
    assert w[1].tolist() == pytest.approx([0, 0, 0, 0.9, -0.2, -0.2, 0, 0, 0, 0])


def test_advantage_map_plain_grpo_folds_scores_into_rest():
    segments = torch.tensor([[P, D, R, R]])
    w = token_advantage_map(segments=segments, a_base=torch.tensor([0.9]))  # Eq. 2: no A_d
    assert w[0].tolist() == pytest.approx([0, 0.3, 0.3, 0.3])


def test_loss_value_and_gradient_equal_the_analytic_weights():
    torch.manual_seed(0)
    B, L, V = 2, 6, 11
    logits = torch.randn(B, L, V, requires_grad=True)
    tokens = torch.randint(0, V, (B, L))
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, L]
    segments = torch.tensor([[P, T, D, R, R, R], [P, P, D, D, R, P]])
    w = token_advantage_map(
        segments=segments, a_base=torch.tensor([1.0, -2.0]), a_d=torch.tensor([0.5, 0.25]),
        a_t=torch.tensor([-1.0, 0.0]), alpha=1.5, beta=1.5,
    )
    out = prp_loss(logprobs=logprobs, token_weights=w)
    # ratio = 1 at the single update: L_i = -sum_m w_im, loss = mean_i L_i
    assert out.per_completion.tolist() == pytest.approx((-w.sum(-1)).tolist(), abs=1e-6)
    assert out.loss.item() == pytest.approx(-w.sum().item() / B, abs=1e-6)
    # d loss / d logprob[i, m] = -w[i, m] / B
    grad_logprobs = torch.autograd.grad(out.loss, logprobs, retain_graph=True)[0]
    assert torch.allclose(grad_logprobs, -w / B, atol=1e-7)
    # and through the softmax: d loss / d logits = -(w/B) * (onehot - softmax)
    grad_logits = torch.autograd.grad(out.loss, logits)[0]
    onehot = torch.nn.functional.one_hot(tokens, V).float()
    expected = -(w / B).unsqueeze(-1) * (onehot - torch.softmax(logits.detach(), -1))
    assert torch.allclose(grad_logits, expected, atol=1e-6)


def test_loss_with_old_logprobs_uses_the_ratio():
    logprobs = torch.log(torch.tensor([[0.5, 0.25]]))
    old = torch.log(torch.tensor([[0.25, 0.25]]))
    w = torch.tensor([[1.0, 2.0]])
    # ratios 2 and 1: L = -(2*1 + 1*2) = -4
    assert prp_loss(logprobs=logprobs, token_weights=w, old_logprobs=old).loss.item() == pytest.approx(-4.0)


# ---- Sec. 4.2 ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "d, t, tau, rule, expected",
    [
        (0.7, None, 2.0, "draft_first", 0.7),  # DRL: d alone
        (0.8, 0.4, 2.0, "draft_first", 1.0),  # 0.8 + 0.4 / 2
        (0.6, 0.9, 2.0, "draft_first", 0.45),  # 0.6 - 0.3 / 2
        (0.6, 0.9, 1.0, "draft_first", 0.3),
        (0.8, 0.4, 2.0, "target_first", 0.2),  # 0.4 - 0.4 / 2
        (0.3, 0.9, 4.0, "target_first", 1.05),  # 0.9 + 0.6 / 4
    ],
)
def test_route_score_rules(d, t, tau, rule, expected):
    assert route_score(d, t, tau=tau, rule=rule) == pytest.approx(expected)


def test_route_score_on_tensors_and_errors():
    s = route_score(torch.tensor([0.8, 0.2]), torch.tensor([0.4, 0.2]), tau=2.0)
    assert s.tolist() == pytest.approx([1.0, 0.2])
    with pytest.raises(ValueError):
        route_score(0.5, 0.5, rule="draft-first")
    with pytest.raises(ValueError):
        route_score(0.5, 0.5, tau=0)


def test_apply_ipr_modes():
    assert apply_ipr(0.87, 0.05, mode="add") == pytest.approx(0.92)
    assert apply_ipr(0.87, 0.05, mode="off") == 0.87
    # band keeps the order across bands: the best 0.87 stays below the worst 0.88
    assert apply_ipr(0.87, 0.09, mode="band") < apply_ipr(0.88, -0.09, mode="band")
    assert apply_ipr(0.87, -0.01, mode="band") < apply_ipr(0.87, 0.01, mode="band")
    assert 0.87 <= apply_ipr(0.87, -0.09, mode="band") < 0.88


# ---- Eq. 9 -------------------------------------------------------------------------------
def test_ipr_from_digit_probs_by_hand():
    one_hot = torch.tensor([[0.0] * 9 + [1.0]])
    # mean 0.1; var = (0.81 + 9 * 0.01) / 10 = 0.09; p_max 1 -> 0.09; sign + for a rating 0.9x
    assert ipr_from_digit_probs(one_hot, 0.98).tolist() == pytest.approx([0.09])
    assert ipr_from_digit_probs(one_hot, 0.42).tolist() == pytest.approx([-0.09])  # low rating
    two = torch.tensor([[0.5, 0.5] + [0.0] * 8])
    # var = (2 * 0.16 + 8 * 0.01) / 10 = 0.04; p_max 0.5 -> 0.02
    assert ipr_from_digit_probs(two, torch.tensor([0.61])).tolist() == pytest.approx([0.02])
    uniform = torch.full((1, 10), 0.1)
    assert ipr_from_digit_probs(uniform, 0.9).tolist() == pytest.approx([0.0], abs=1e-9)
    # mass outside the digits: probs 0.3, 0.1, rest 0 -> mean 0.04,
    # var = ((0.26)^2 + (0.06)^2 + 8 * 0.04^2) / 10 = (0.0676 + 0.0036 + 0.0128) / 10 = 0.0084
    partial = torch.tensor([[0.3, 0.1] + [0.0] * 8])
    assert ipr_from_digit_probs(partial, 0.8).tolist() == pytest.approx([0.3 * 0.0084])


def test_ipr_sign_band_reads_the_tenths_digit_literally():
    """Eq. 9's "d > 5" on the tenths digit (the paper's "9" of "0.98"): 0.60-0.99 high, 0.00-0.59 low
    (0.50-0.59 included), and 1.00 high although its tenths digit is 0."""
    first = torch.tensor([[1.0] + [0.0] * 9])  # all mass on one digit: |p| = 1 * 0.09 (see above)
    ratings = torch.tensor([0.49, 0.50, 0.59, 0.60, 1.00])
    got = ipr_from_digit_probs(first.expand(5, 10), ratings)
    assert got.tolist() == pytest.approx([-0.09, -0.09, -0.09, 0.09, 0.09])
    # the same five as python floats and as float64, one at a time
    for rating, want in ((0.49, -0.09), (0.5, -0.09), (0.59, -0.09), (0.6, 0.09), (1.0, 0.09)):
        assert ipr_from_digit_probs(first, rating).item() == pytest.approx(want)
        assert ipr_from_digit_probs(first.double(), torch.tensor([rating], dtype=torch.float64)).item() \
            == pytest.approx(want)
    # the whole band, by hand: floor(10 d) is the tenths digit below 1 and 10 for 1.00
    assert sign_digit(torch.tensor([0.0, 0.05, 0.49, 0.5, 0.55, 0.59, 0.6, 0.61, 0.7, 0.99, 1.0]), first).tolist() \
        == [0, 0, 4, 5, 5, 5, 6, 6, 7, 9, 10]
    assert sign_digit(torch.tensor([float("nan")]), first).tolist() == [0]  # unparsable: the low sign
    with pytest.raises(TypeError, match="rating value"):  # a bare tenths digit cannot tell 1.00 from 0.0x
        ipr_from_digit_probs(first, 0)
    with pytest.raises(TypeError, match="rating value"):
        ipr_from_digit_probs(first, torch.tensor([9]))


def test_ipr_from_logits_uses_the_full_vocabulary_softmax():
    # V = 12: digits are tokens 2..11, tokens 0 and 1 are other words
    logits = torch.full((2, 12), -1e9)
    logits[0, 0] = 0.0  # "the" holds half the mass
    logits[0, 2 + 7] = 0.0  # digit 7 the other half
    logits[1, 2 + 3] = 0.0  # all mass on digit 3
    digit_ids = list(range(2, 12))
    stats = digit_stats_from_logits(logits, digit_ids, torch.tensor([0.71, 0.35]), backend="torch")
    assert stats.digit_probs[0, 7].item() == pytest.approx(0.5)
    # row 0: probs one 0.5 -> mean 0.05, var = (0.45^2 + 9 * 0.05^2) / 10 = 0.0225; * 0.5, sign +
    # row 1: one-hot -> 0.09, sign - (0.35 < 0.5)
    assert stats.ipr.tolist() == pytest.approx([0.01125, -0.09])
    assert ipr_from_logits(logits, digit_ids, torch.tensor([0.71, 0.35]), backend="torch").tolist() == pytest.approx(
        [0.01125, -0.09]
    )
    with pytest.raises(ValueError):
        ipr_from_logits(logits, digit_ids[:9], 0.7)
    with pytest.raises(ValueError):
        ipr_from_logits(logits, digit_ids, 0.7, backend="cuda")


def test_ipr_reference_bf16_matches_float64():
    torch.manual_seed(1)
    logits = (torch.randn(3, 1000) * 4).to(torch.bfloat16)
    ids = list(range(100, 110))
    got = ipr_from_logits(logits, ids, torch.tensor([0.9, 0.2, 0.6]), backend="torch")
    ref = ipr_from_logits(logits.double(), ids, torch.tensor([0.9, 0.2, 0.6]), backend="torch")
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-12)
