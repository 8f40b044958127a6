"""Internal Probability Ranking (IPR), paper Sec. 4.3, Eq. 9.

At the position of a rating's tenths digit (the "9" of "0.98") the router looks at
the full-vocabulary softmax, keeps the ten digit probabilities p_0..p_9 and turns
their concentration into a small within-band priority:

    p = sign * p_max * (1/|D|) * sum_i (p_i - mean_j p_j)^2          (Eq. 9)

with sign = +1 when "d > 5" and -1 otherwise.  The paper reads the tenths digit ("considering a
score such as '0.98', we examine the token position corresponding to '9'"), so "d > 5" is read
literally on that digit: a tenths digit above 5 (ratings 0.60-0.99) takes the high sign, 0.00-0.59
the low one (0.50-0.59 included).  The one exception is "1.00": its tenths digit is 0, but it is
the top rating, so it takes the high sign.  Both cases are one comparison on the rating in whole
tenths, floor(10 * d) (the tenths digit below 1, 10 for 1.00): high iff it is > 5
(docs/decisions.md).

Two entry points, both taking the rating value(s) d (or t) whose tenths digit was read:
- `ipr_from_digit_probs(p, rating)`: Eq. 9 on already-computed digit probabilities.
- `ipr_from_logits(logits, digit_token_ids, rating, backend=...)`: softmax over the
  whole vocabulary first. `backend="torch"` is the reference; `backend="triton"` is the
  fused kernel in `kernels/ipr_kernel.py`; `"auto"` picks Triton for CUDA tensors.
- `ipr_from_top_logprobs(top, rating)`: a served draft (OpenAI API) gives only the K most likely
  tokens; exact when all ten digits are among them, else an estimate with its error bound.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NUM_DIGITS = 10
# Eq. 9's "d > 5": a rating whose whole tenths (sign_digit) exceed this digit takes the high sign.
# The Triton kernel compares its sign input with the same constant.
SIGN_THRESHOLD_DIGIT = 5
# floor(10 * d) of a float32 rating such as 0.6 (stored as 0.6000000238) must give 6, never 5.
_TENTHS_EPS = 1e-6


@dataclass
class DigitStats:
    """What the router needs from one rating position, per row."""

    digit_probs: torch.Tensor  # [B, 10] p_i under the full-vocabulary softmax
    p_max: torch.Tensor  # [B]
    variance: torch.Tensor  # [B] population variance of the 10 digit probs
    ipr: torch.Tensor  # [B] signed Eq. 9 value


def sign_digit(rating: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """[B] int64: the rating in whole tenths, floor(10 * d): its tenths digit for d < 1 (0.59 -> 5,
    0.60 -> 6), 10 for 1.00.  This is the Triton kernel's sign input.  A NaN rating (unparsable) gives
    0, the low sign.  An integer input is refused: it is most likely a bare tenths digit (an older
    argument), which cannot tell 1.00 from 0.0x."""
    value = torch.as_tensor(rating, device=like.device)
    if not value.is_floating_point():
        raise TypeError(f"IPR's sign needs the rating value (e.g. 0.87 or 1.0), got {rating!r}; "
                        "a tenths digit alone cannot tell 1.00 from 0.00")
    value = value.expand(like.shape[0]) if value.dim() == 0 else value
    tenths = torch.floor(value.double() * 10 + _TENTHS_EPS)  # float64: see _TENTHS_EPS
    return torch.nan_to_num(tenths, nan=0.0).clamp(0, 10).long()


def _is_high(rating: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """[B] bool: Eq. 9's "d > 5" on the rating's tenths digit, with 1.00 high (see the module doc)."""
    return sign_digit(rating, like) > SIGN_THRESHOLD_DIGIT


def _sign(rating: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """[B] +1 for a high rating, -1 for a low one (Eq. 9's two cases)."""
    return torch.where(_is_high(rating, like), 1.0, -1.0).to(like.dtype)


def ipr_from_digit_probs(p: torch.Tensor, rating: torch.Tensor | float) -> torch.Tensor:
    """Eq. 9 on a [B, 10] tensor of digit probabilities; `rating` [B] or scalar is d (or t).

    >>> ipr_from_digit_probs(torch.tensor([[0.0] * 9 + [1.0]]), 0.9)   # one-hot, high score
    tensor([0.0900])
    >>> ipr_from_digit_probs(torch.tensor([[1.0] + [0.0] * 9]), 1.0)   # "1.00": tenths digit 0, high
    tensor([0.0900])
    >>> ipr_from_digit_probs(torch.tensor([[0.0] * 5 + [1.0] + [0.0] * 4]), 0.55)   # tenths digit 5: low
    tensor([-0.0900])
    """
    if p.dim() != 2 or p.shape[-1] != NUM_DIGITS:
        raise ValueError(f"expected digit probabilities of shape [B, 10], got {tuple(p.shape)}")
    p_max = p.amax(dim=-1)  # [B]
    variance = p.var(dim=-1, unbiased=False)  # [B], (1/|D|) * sum (p_i - mean)^2
    return _sign(rating, p) * p_max * variance


def digit_stats_reference(
    logits: torch.Tensor, digit_token_ids: torch.Tensor, rating: torch.Tensor | float
) -> DigitStats:
    """Plain-torch reference: softmax over all V logits (fp32 or fp64 math), then Eq. 9."""
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_z = torch.logsumexp(logits.to(compute_dtype), dim=-1, keepdim=True)  # [B, 1]
    ids = torch.as_tensor(digit_token_ids, device=logits.device, dtype=torch.long)
    digit_probs = (logits[:, ids].to(compute_dtype) - log_z).exp()  # [B, 10]
    p_max = digit_probs.amax(dim=-1)
    variance = digit_probs.var(dim=-1, unbiased=False)
    ipr = _sign(rating, digit_probs) * p_max * variance
    return DigitStats(digit_probs=digit_probs, p_max=p_max, variance=variance, ipr=ipr)


def digit_stats_from_logits(
    logits: torch.Tensor,
    digit_token_ids: torch.Tensor | list[int],
    rating: torch.Tensor | float,
    *,
    backend: str = "auto",
) -> DigitStats:
    """Digit probabilities, p_max, variance and IPR for each row of [B, V] logits.

    `rating` [B] (or a scalar for all rows): the value of the rating whose tenths-digit
    logits these are; it only chooses Eq. 9's sign (high iff its tenths digit > 5, or it is 1.00).
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape [B, V], got {tuple(logits.shape)}")
    if len(digit_token_ids) != NUM_DIGITS:
        raise ValueError(f"need 10 digit token ids, got {len(digit_token_ids)}")
    if backend == "auto":
        backend = "triton" if logits.is_cuda and _triton_available() else "torch"
    if backend == "torch":
        return digit_stats_reference(logits, torch.as_tensor(digit_token_ids), rating)
    if backend == "triton":
        from prp_kernels.ipr_kernel import digit_stats_triton

        # the kernel's sign input: the rating in whole tenths, compared with SIGN_THRESHOLD_DIGIT
        return digit_stats_triton(logits, digit_token_ids, sign_digit(rating, logits))
    raise ValueError(f"unknown IPR backend {backend!r}; use 'auto', 'torch' or 'triton'")


def ipr_from_logits(
    logits: torch.Tensor,
    digit_token_ids: torch.Tensor | list[int],
    rating: torch.Tensor | float,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Eq. 9 from raw logits: a [B] tensor of signed IPR values."""
    return digit_stats_from_logits(logits, digit_token_ids, rating, backend=backend).ipr


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ IPR from a served draft's top-K


@dataclass
class TopKIPR:
    """Eq. 9 from an OpenAI-style `top_logprobs` list (a served draft): an estimate and its bound."""

    ipr: float  # the estimate: the midpoint of every IPR the evidence allows
    bound: float  # |ipr - the true Eq. 9 value| <= bound; 0.0 when all ten digits were seen
    seen: int  # how many of the ten digits were among the top K


def _digit_variance(values: Sequence[float]) -> float:
    """Population variance of the ten digit probabilities ((1/|D|) sum (p_i - mean)^2, Eq. 9)."""
    mean = sum(values) / NUM_DIGITS
    return sum((v - mean) ** 2 for v in values) / NUM_DIGITS


def ipr_from_top_logprobs(top: Sequence[tuple[str, float]], rating: float) -> TopKIPR:
    """Eq. 9 when only the K most likely tokens at the tenths digit are known (`top`: (token text,
    log-probability) pairs, as `logprobs.content[i].top_logprobs` gives them; `rating`: the value
    whose tenths digit this is, for the sign).

    All ten digits among the top K: exact (the same p_i as the full softmax, so the same p_max and
    variance).  Otherwise each missing digit's probability x_j is only known to lie in [0, c],
    c = min(q, R), where q is the smallest top-K probability (a missing token ranks below every
    listed one) and R = 1 - (sum of the top-K probabilities) (the mass outside the list), and the
    missing x_j together hold at most R.  p_max is still exact (every seen digit is >= q >= x_j;
    with no digit seen, p_max <= c).  The variance is convex in x, so over that set it is smallest
    with the missing digits equal (at the seen digits' mean, clipped to [0, min(c, R/m)]) and
    largest at a vertex (j digits at c, at most one at R - j*c, the rest 0).  The estimate is the
    midpoint of the resulting IPR interval and `bound` its half-width: the smallest worst-case
    error any rule can promise from this evidence.  (Sharing R among the missing digits can land
    anywhere in the interval, and its error can reach the full width.)

    >>> r = ipr_from_top_logprobs([(str(d), math.log(0.1)) for d in range(10)], 0.87)
    >>> round(r.ipr, 12), r.bound, r.seen  # uniform digits: no variance
    (0.0, 0.0, 10)
    """
    probs = [math.exp(lp) for _, lp in top]
    digits: dict[int, float] = {}
    for (token, _), p in zip(top, probs, strict=True):
        if len(token) == 1 and token.isdigit() and token.isascii():
            digits.setdefault(int(token), p)  # a byte-level vocabulary spells each digit once
    seen = len(digits)
    # Eq. 9's sign band, the same comparison as the local IPR and the kernel (a missing rating: low)
    sign = 1.0 if rating is not None and bool(_is_high(float(rating), torch.empty(1))[0]) else -1.0
    known = list(digits.values())
    missing = NUM_DIGITS - seen
    if missing == 0:
        value = sign * max(known) * _digit_variance(known)
        return TopKIPR(ipr=value, bound=0.0, seen=seen)
    q = min(probs) if probs else 1.0
    rest = max(0.0, 1.0 - sum(probs))
    c = min(q, rest)
    # smallest variance: the missing digits equal, as close to the seen mean as the constraints allow
    t = min(sum(known) / seen if seen else 0.0, c, rest / missing)
    var_lo = _digit_variance(known + [t] * missing)
    # largest variance: a vertex of {x in [0, c]^m, sum x <= R}
    var_hi = 0.0
    for j in range(missing + 1):
        if j * c > rest + 1e-15:
            break
        var_hi = max(var_hi, _digit_variance(known + [c] * j + [0.0] * (missing - j)))
        left = rest - j * c
        if j < missing and 0.0 < left < c:
            var_hi = max(var_hi, _digit_variance(known + [c] * j + [left] + [0.0] * (missing - j - 1)))
    pmax_lo, pmax_hi = (max(known), max(known)) if known else (0.0, c)
    lo, hi = pmax_lo * var_lo, pmax_hi * var_hi
    return TopKIPR(ipr=sign * (lo + hi) / 2, bound=(hi - lo) / 2, seen=seen)
