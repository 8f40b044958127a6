"""Fused Triton kernel for the IPR digit statistics (paper Sec. 4.3, Eq. 9).

Eq. 9 needs, for each row of [B, V] logits, the ten digit probabilities under the FULL
vocabulary softmax, p_i = exp(z_{d_i} - logsumexp(z)), then

    IPR = sign * p_max * (1/10) * sum_i (p_i - mean p)^2,   sign = +1 if tenths > 5 else -1,

where `tenths` is the sign input: the rating in whole tenths, floor(10 * d), i.e. its tenths digit
(0.59 -> 5 low, 0.60 -> 6 high) and 10 for 1.00 (high); `prp.route.ipr.sign_digit` computes it.

The only O(V) work is logsumexp, so the kernel streams each row ONCE with an online
max / sum-exp (Milakov & Gimelshein): per block, one exp per element plus one scalar
rescale of the running sum when the max grows. The 10 digit logits are 10 extra loads.
Nothing of size [B, V] is ever written (the torch reference materialises fp32 copies).

Two launch shapes, each ONE launch:
- single pass, grid (B,): one program per row reduces it and finishes Eq. 9;
- split vocabulary, grid (B, S): for small B (too few rows to fill the GPU) each program
  reduces a slice of a row to a partial (max, sumexp) and bumps the row's arrival counter
  (an atomic); the program that arrives last merges the S partials, finishes Eq. 9 and
  resets the counter to 0 (split-K with a semaphore), so the workspace is reusable and the
  launch can be replayed from a CUDA graph.

`DigitStatsKernel` preallocates outputs and workspace for a fixed (B, V, device) and launches
with no host-side tensor work: the decode engine's small-batch path (capturable in a graph).

On CPU the kernels run under Triton's interpreter (`TRITON_INTERPRET=1` set before this
module is imported); that is for correctness only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from prp.route.ipr import NUM_DIGITS, SIGN_THRESHOLD_DIGIT, DigitStats

_DIGITS_PAD = 16  # tl.arange needs a power of two; lanes 10..15 are masked off


@triton.jit
def _online_max_sumexp(row_ptr, lo, hi, BLOCK: tl.constexpr):
    """(max, sum exp(z - max)) over row[lo:hi] in fp32, one exp per element."""
    m = float("-inf")  # running max
    d = 0.0  # running sum of exp(z - m)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        # Load with other=0 and mask afterwards: the interpreter hands bf16 over as raw
        # uint16 bits, so the fill value must not be typed before the fp32 conversion.
        z = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK]
        z = tl.where(mask, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # While every value seen is -inf, m_new is -inf and z - m_new = -inf - -inf = NaN:
        # shift by 0 instead (exp(-inf) = 0, and d is still 0, so nothing changes).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe), axis=0)
        m = m_new
    return m, d


@triton.jit
def _finish_eq9(
    row_ptr, m, d, ids_ptr, tenths,
    probs_ptr, pmax_ptr, var_ptr, ipr_ptr, row,
    NUM_D: tl.constexpr, D_PAD: tl.constexpr, SIGN_T: tl.constexpr,
):
    """Gather the 10 digit logits, p_i = exp(z_i - m) / d, then Eq. 9."""
    k = tl.arange(0, D_PAD)
    kmask = k < NUM_D
    ids = tl.load(ids_ptr + k, mask=kmask, other=0)  # [D_PAD] token ids
    z = tl.load(row_ptr + ids, mask=kmask, other=0.0).to(tl.float32)  # [D_PAD]
    p = tl.where(kmask, tl.exp(z - m) / d, 0.0)  # [D_PAD], padded lanes 0
    mean = tl.sum(p, axis=0) / NUM_D
    p_max = tl.max(p, axis=0)  # p >= 0, so the zero padding never wins
    # An all -inf row (d = 0) has no softmax: torch gives NaN everywhere, but tl.max may
    # drop NaNs where torch.amax keeps them, so set it explicitly (d > 0 is False for NaN).
    p_max = tl.where(d > 0, p_max, float("nan"))
    dev = tl.where(kmask, p - mean, 0.0)
    var = tl.sum(dev * dev, axis=0) / NUM_D  # population variance, Eq. 9's 1/|D|
    sign = tl.where(tenths > SIGN_T, 1.0, -1.0)
    tl.store(probs_ptr + row * NUM_D + k, p, mask=kmask)
    tl.store(pmax_ptr + row, p_max)
    tl.store(var_ptr + row, var)
    tl.store(ipr_ptr + row, sign * p_max * var)


@triton.jit
def _ipr_single_pass_kernel(
    x_ptr, stride_row, V, ids_ptr, tenths_ptr, stride_tenths,
    probs_ptr, pmax_ptr, var_ptr, ipr_ptr,
    BLOCK: tl.constexpr, NUM_D: tl.constexpr, D_PAD: tl.constexpr, SIGN_T: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = x_ptr + row.to(tl.int64) * stride_row  # int64: B * V overflows int32 at B >= 14k
    m, d = _online_max_sumexp(row_ptr, 0, V, BLOCK)
    tenths = tl.load(tenths_ptr + row * stride_tenths)
    _finish_eq9(row_ptr, m, d, ids_ptr, tenths, probs_ptr, pmax_ptr, var_ptr, ipr_ptr, row,
                NUM_D, D_PAD, SIGN_T)


@triton.jit
def _ipr_split_kernel(
    x_ptr, stride_row, V, chunk, part_m_ptr, part_d_ptr, count_ptr, ids_ptr, tenths_ptr, stride_tenths,
    probs_ptr, pmax_ptr, var_ptr, ipr_ptr,
    BLOCK: tl.constexpr, S_PAD: tl.constexpr, NUM_D: tl.constexpr, D_PAD: tl.constexpr, SIGN_T: tl.constexpr,
):
    """Split path, grid (B, S), one launch: partial (max, sumexp) of row[s*chunk : (s+1)*chunk];
    the last program of a row to arrive merges the S partials and finishes Eq. 9."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    S = tl.num_programs(1)
    row_ptr = x_ptr + row.to(tl.int64) * stride_row
    lo = split * chunk
    hi = tl.minimum(lo + chunk, V)
    m, d = _online_max_sumexp(row_ptr, lo, hi, BLOCK)
    tl.store(part_m_ptr + row * S + split, m)
    tl.store(part_d_ptr + row * S + split, d)
    # acq_rel: this program's partial is visible to whoever sees the incremented count
    arrived = tl.atomic_add(count_ptr + row, 1, sem="acq_rel")
    if arrived == S - 1:
        j = tl.arange(0, S_PAD)
        jmask = j < S
        pm = tl.load(part_m_ptr + row * S + j, mask=jmask, other=float("-inf"), volatile=True)  # [S_PAD]
        pd = tl.load(part_d_ptr + row * S + j, mask=jmask, other=0.0, volatile=True)  # [S_PAD]
        m_all = tl.max(pm, axis=0)
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)  # same NaN guard as the online loop
        d_all = tl.sum(pd * tl.exp(pm - m_safe), axis=0)
        tenths = tl.load(tenths_ptr + row * stride_tenths)
        _finish_eq9(row_ptr, m_all, d_all, ids_ptr, tenths, probs_ptr, pmax_ptr, var_ptr, ipr_ptr, row,
                    NUM_D, D_PAD, SIGN_T)
        tl.atomic_xchg(count_ptr + row, 0)  # ready for the next launch / graph replay


# The env var is read when @triton.jit runs, i.e. at this module's import.
INTERPRETED = type(_ipr_single_pass_kernel).__name__ == "InterpretedFunction"


def pick_block(V: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, num_warps) heuristic; no @triton.autotune, which needs a GPU driver.

    On GPU 4096 elements (8 KB of bf16) per iteration keeps enough loads in flight with
    8 warps. The interpreter pays per tl op, not per element, so it wants huge blocks.
    """
    cap = 4096 if device.type == "cuda" else 16384
    block = min(cap, max(16, triton.next_power_of_2(V)))
    return block, (8 if block >= 2048 else 4)


def pick_num_splits(B: int, V: int, block: int, device: torch.device) -> int:
    """Split the vocabulary only when B rows cannot fill the GPU (~2 programs per SM).

    Untuned guess (no GPU in the session that wrote it): aim for ~4 programs per SM in
    total, with every split keeping at least one full block. On CPU: 1 (pass num_splits).
    """
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if B >= 2 * sms:
        return 1
    return max(1, min(triton.cdiv(4 * sms, B), triton.cdiv(V, block)))


def digit_stats_triton(
    logits: torch.Tensor,
    digit_token_ids: torch.Tensor | list[int],
    tenths_digit: torch.Tensor | int,
    *,
    num_splits: int | None = None,
    block_size: int | None = None,
) -> DigitStats:
    """Eq. 9 digit statistics of [B, V] logits (bf16 / fp16 / fp32; rows may be strided).

    Same contract as `prp.route.ipr.digit_stats_reference`; all outputs are fp32.
    `num_splits` (S) > 1 takes the split-vocabulary path; None picks by `pick_num_splits`.
    `block_size` overrides the BLOCK heuristic (a power of two).
    """
    if not logits.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "digit_stats_triton got a CPU tensor but Triton's interpreter is off: set "
            "TRITON_INTERPRET=1 before importing triton / prp_kernels.ipr_kernel, or use "
            "backend='torch'."
        )
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape [B, V], got {tuple(logits.shape)}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()  # the kernel walks a row with unit stride
    B, V = logits.shape
    dev = logits.device

    if isinstance(digit_token_ids, torch.Tensor) and digit_token_ids.is_cuda:
        ids = digit_token_ids.to(torch.int64).contiguous()  # no host check: it would sync
    else:
        # The interpreter does no bounds checking: an id >= V would read foreign memory.
        ids_host = torch.as_tensor(digit_token_ids, dtype=torch.int64)
        if ids_host.numel() and (ids_host.min() < 0 or ids_host.max() >= V):
            raise ValueError(f"digit token ids must lie in [0, {V}), got {ids_host.tolist()}")
        ids = ids_host.to(dev)
    if ids.numel() != NUM_DIGITS:
        raise ValueError(f"need {NUM_DIGITS} digit token ids, got {ids.numel()}")

    tenths = torch.as_tensor(tenths_digit, device=dev)
    tenths = tenths.expand(B) if tenths.dim() == 0 else tenths  # [B], stride 0 for a scalar
    if tenths.shape != (B,):
        raise ValueError(f"tenths_digit must be a scalar or shape [{B}], got {tuple(tenths.shape)}")

    probs = torch.empty((B, NUM_DIGITS), device=dev, dtype=torch.float32)  # [B, 10]
    p_max, variance, ipr = (torch.empty(B, device=dev, dtype=torch.float32) for _ in range(3))
    out = DigitStats(digit_probs=probs, p_max=p_max, variance=variance, ipr=ipr)
    if B == 0:
        return out

    block, num_warps = pick_block(V, dev)
    if block_size is not None:
        block = block_size
    S = pick_num_splits(B, V, block, dev) if num_splits is None else num_splits
    # Each split covers a whole number of blocks, so S may shrink for small V.
    chunk = triton.cdiv(triton.cdiv(V, S), block) * block
    S = triton.cdiv(V, chunk)
    consts = {"NUM_D": NUM_DIGITS, "D_PAD": _DIGITS_PAD, "SIGN_T": SIGN_THRESHOLD_DIGIT}

    if S == 1:
        _ipr_single_pass_kernel[(B,)](
            logits, logits.stride(0), V, ids, tenths, tenths.stride(0),
            probs, p_max, variance, ipr, BLOCK=block, num_warps=num_warps, **consts,
        )
        return out

    ws = _workspace(dev, B, S)
    _launch_split(logits, V, chunk, ws, ids, tenths, out, block, num_warps, S, consts)
    return out


def _launch_split(logits, V, chunk, ws, ids, tenths, out, block, num_warps, S, consts):
    part_m, part_d, count = ws
    _ipr_split_kernel[(logits.shape[0], S)](
        logits, logits.stride(0), V, chunk, part_m, part_d, count, ids, tenths, tenths.stride(0),
        out.digit_probs, out.p_max, out.variance, out.ipr,
        BLOCK=block, S_PAD=max(16, triton.next_power_of_2(S)), num_warps=num_warps, **consts,
    )


_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(dev, B: int, S: int):
    """(partial max [B, S], partial sumexp [B, S], arrival counters [B] int32, kept at 0 between
    launches).  Cached per shape: one stream at a time may use a shape's workspace."""
    key = (str(dev), B, S)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = (torch.empty((B, S), device=dev, dtype=torch.float32),
                            torch.empty((B, S), device=dev, dtype=torch.float32),
                            torch.zeros(B, device=dev, dtype=torch.int32))
    return _WORKSPACES[key]


class DigitStatsKernel:
    """Eq. 9 for a fixed batch: everything preallocated and checked once, so a call is one launch
    and no host-side tensor work (CUDA-graph capturable).  The returned DigitStats is reused by
    the next call (copy what you keep)."""

    def __init__(self, batch: int, vocab: int, digit_token_ids, device, *, num_splits: int | None = None,
                 block_size: int | None = None):
        dev = torch.device(device)
        ids = torch.as_tensor(digit_token_ids, dtype=torch.int64)
        if ids.numel() != NUM_DIGITS or ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"need {NUM_DIGITS} digit token ids in [0, {vocab}), got {ids.tolist()}")
        self.ids = ids.to(dev)
        self.batch, self.vocab = batch, vocab
        self.block, self.num_warps = pick_block(vocab, dev)
        if block_size is not None:
            self.block = block_size
        S = pick_num_splits(batch, vocab, self.block, dev) if num_splits is None else num_splits
        self.chunk = triton.cdiv(triton.cdiv(vocab, S), self.block) * self.block
        self.S = triton.cdiv(vocab, self.chunk)
        self.out = DigitStats(
            digit_probs=torch.empty((batch, NUM_DIGITS), device=dev, dtype=torch.float32),
            p_max=torch.empty(batch, device=dev, dtype=torch.float32),
            variance=torch.empty(batch, device=dev, dtype=torch.float32),
            ipr=torch.empty(batch, device=dev, dtype=torch.float32),
        )
        self.ws = (torch.empty((batch, self.S), device=dev, dtype=torch.float32),
                   torch.empty((batch, self.S), device=dev, dtype=torch.float32),
                   torch.zeros(batch, device=dev, dtype=torch.int32))
        self.consts = {"NUM_D": NUM_DIGITS, "D_PAD": _DIGITS_PAD, "SIGN_T": SIGN_THRESHOLD_DIGIT}

    def __call__(self, logits: torch.Tensor, tenths: torch.Tensor) -> DigitStats:
        """logits [batch, vocab] with unit last stride; tenths [batch] digit tensor on the device."""
        if self.S == 1:
            _ipr_single_pass_kernel[(self.batch,)](
                logits, logits.stride(0), self.vocab, self.ids, tenths, tenths.stride(0),
                self.out.digit_probs, self.out.p_max, self.out.variance, self.out.ipr,
                BLOCK=self.block, num_warps=self.num_warps, **self.consts,
            )
        else:
            _launch_split(logits, self.vocab, self.chunk, self.ws, self.ids, tenths, self.out, self.block,
                          self.num_warps, self.S, self.consts)
        return self.out


__all__ = ["INTERPRETED", "DigitStatsKernel", "digit_stats_triton", "pick_block", "pick_num_splits"]
