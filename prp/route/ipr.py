"""Internal Probability Ranking (IPR), paper Sec. 4.3, Eq. 9.

At the position of a rating's tenths digit (the "9" of "0.98") the router looks at
the full-vocabulary softmax, keeps the ten digit probabilities p_0..p_9 and turns
their concentration into a small within-band priority:

    p = sign * p_max * (1/|D|) * sum_i (p_i - mean_j p_j)^2          (Eq. 9)

with sign = +1 when the tenths digit is > 5 and -1 otherwise (the paper's
"if d > 5", read as the tenths digit: see DESIGN.md, known ambiguities).

Two entry points:
- `ipr_from_digit_probs(p, tenths_digit)`: Eq. 9 on already-computed digit probabilities.
- `ipr_from_logits(logits, digit_token_ids, tenths_digit, backend=...)`: softmax over the
  whole vocabulary first. `backend="torch"` is the reference; `backend="triton"` is the
  fused kernel in `kernels/ipr_kernel.py`; `"auto"` picks Triton for CUDA tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_DIGITS = 10
# Eq. 9's sign flips at d > 5, d being the rating's tenths digit.
SIGN_THRESHOLD_DIGIT = 5


@dataclass
class DigitStats:
    """What the router needs from one rating position, per row."""

    digit_probs: torch.Tensor  # [B, 10] p_i under the full-vocabulary softmax
    p_max: torch.Tensor  # [B]
    variance: torch.Tensor  # [B] population variance of the 10 digit probs
    ipr: torch.Tensor  # [B] signed Eq. 9 value


def _sign(tenths_digit: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    digit = torch.as_tensor(tenths_digit, device=like.device)
    digit = digit.expand(like.shape[0]) if digit.dim() == 0 else digit
    return torch.where(digit > SIGN_THRESHOLD_DIGIT, 1.0, -1.0).to(like.dtype)


def ipr_from_digit_probs(p: torch.Tensor, tenths_digit: torch.Tensor | int) -> torch.Tensor:
    """Eq. 9 on a [B, 10] tensor of digit probabilities.

    >>> ipr_from_digit_probs(torch.tensor([[0.0] * 9 + [1.0]]), 9)   # one-hot, high score
    tensor([0.0900])
    """
    if p.dim() != 2 or p.shape[-1] != NUM_DIGITS:
        raise ValueError(f"expected digit probabilities of shape [B, 10], got {tuple(p.shape)}")
    p_max = p.amax(dim=-1)  # [B]
    variance = p.var(dim=-1, unbiased=False)  # [B], (1/|D|) * sum (p_i - mean)^2
    return _sign(tenths_digit, p) * p_max * variance


def digit_stats_reference(
    logits: torch.Tensor, digit_token_ids: torch.Tensor, tenths_digit: torch.Tensor | int
) -> DigitStats:
    """Plain-torch reference: softmax over all V logits (fp32 or fp64 math), then Eq. 9."""
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_z = torch.logsumexp(logits.to(compute_dtype), dim=-1, keepdim=True)  # [B, 1]
    ids = torch.as_tensor(digit_token_ids, device=logits.device, dtype=torch.long)
    digit_probs = (logits[:, ids].to(compute_dtype) - log_z).exp()  # [B, 10]
    p_max = digit_probs.amax(dim=-1)
    variance = digit_probs.var(dim=-1, unbiased=False)
    ipr = _sign(tenths_digit, digit_probs) * p_max * variance
    return DigitStats(digit_probs=digit_probs, p_max=p_max, variance=variance, ipr=ipr)


def digit_stats_from_logits(
    logits: torch.Tensor,
    digit_token_ids: torch.Tensor | list[int],
    tenths_digit: torch.Tensor | int,
    *,
    backend: str = "auto",
) -> DigitStats:
    """Digit probabilities, p_max, variance and IPR for each row of [B, V] logits."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape [B, V], got {tuple(logits.shape)}")
    if len(digit_token_ids) != NUM_DIGITS:
        raise ValueError(f"need 10 digit token ids, got {len(digit_token_ids)}")
    if backend == "auto":
        backend = "triton" if logits.is_cuda and _triton_available() else "torch"
    if backend == "torch":
        return digit_stats_reference(logits, torch.as_tensor(digit_token_ids), tenths_digit)
    if backend == "triton":
        from prp.kernels.ipr_kernel import digit_stats_triton

        return digit_stats_triton(logits, digit_token_ids, tenths_digit)
    raise ValueError(f"unknown IPR backend {backend!r}; use 'auto', 'torch' or 'triton'")


def ipr_from_logits(
    logits: torch.Tensor,
    digit_token_ids: torch.Tensor | list[int],
    tenths_digit: torch.Tensor | int,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Eq. 9 from raw logits: a [B] tensor of signed IPR values."""
    return digit_stats_from_logits(logits, digit_token_ids, tenths_digit, backend=backend).ipr


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
