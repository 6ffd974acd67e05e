"""The decode step's linear layers at a few rows: y = x W^T (+ bias) as a Triton GEMV, or cuBLAS, whichever
is faster for the shape.

At one or two rows a linear layer is a read of its weight, and cuBLAS's kernels for those shapes read it
slowly where the weight has more columns than rows: on an H200 (bf16, device time from CUDA-graph
replays, 2026-12-02; ``docs/kernel_notes.md``, "Decode linears") mamba-130m's out_proj (768 x 1536) took
5.7 us against 3.1 us here, mamba2-370m's (1024 x 2048) 11.8 against 3.8 us, while for in_proj (3352 x 768)
and the LM head (50280 x 768) cuBLAS was as fast or faster (3.5 against 3.8 us, 22 against 30 us).  So
``linear_triton`` times cuBLAS beside a few GEMV tiles once per shape (``pick_config``) and keeps the
faster; eager calls and CUDA-graph replays make the same choice, so both compute the same numbers.
``PERFMAMBA_GEMV=0`` in the environment leaves every call to cuBLAS (the benchmarks' side-by-side).

Each program reads BLOCK_N whole rows of W in BLOCK_K-wide pieces and keeps every row of x against them:
(ROWS, BLOCK_N) sums in fp32, the bias added in fp32, one rounding to x's dtype (as cuBLAS's epilogue
rounds).  No split over K: that would need atomics, and then graph and eager results could differ.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.selective_scan import interpreting, next_pow2, pick_config

# Whole-model graph decode on an H200 with the GEMV against cuBLAS for every linear (five interleaved rounds,
# tuning-h200/gemv-decode-rounds.txt): mamba-130m / mamba2-130m 1.091x / 1.076x at batch 1, 1.054x / 1.030x
# at 2, 1.005x / 0.990x at 4, though out_proj alone still timed faster at 4 rows (5.5 against 5.7 us).
MAX_ROWS = 2
CUBLAS = "cublas"


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, rows, K, N, s_xr, s_wn, s_yr,
                 HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    r = tl.arange(0, ROWS)
    r_ok = r < rows
    w_rows = w_ptr + n.to(tl.int64)[:, None] * s_wn
    acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        x = tl.load(x_ptr + r[:, None] * s_xr + k[None, :], mask=r_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)  # (ROWS, BLOCK_N)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + r[:, None] * s_yr + n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=r_ok[:, None] & n_ok[None, :])


def gemv_applies(x, weight, bias=None) -> bool:
    """Whether ``linear_triton`` may run the GEMV on these operands: 1 to MAX_ROWS rows with contiguous
    rows of x and of a non-empty W, one dtype and device, and nothing for autograd to record (the kernel
    has no backward)."""
    return (x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and weight.dim() == 2 and x.shape[1] == weight.shape[1]
            and weight.numel() > 0 and x.stride(1) == 1 and weight.stride(1) == 1 and x.dtype == weight.dtype
            and x.device == weight.device
            and (bias is None or (bias.dtype == x.dtype and tuple(bias.shape) == (weight.shape[0],)
                                  and bias.stride(0) == 1))
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad))))


def gemv_configs(k: int) -> list:
    """cuBLAS and the GEMV tiles (BLOCK_N, BLOCK_K, num_warps, num_stages) worth timing for K columns: the
    fastest of a sweep over 4 to 64 rows of W, 128 to 512 columns and 2 to 8 warps at the shapes above
    (``tuning-h200/gemv-sweep.txt``: 4 rows for narrow outputs, 8 for in_proj-like ones, 16 for the LM
    head).  Under the interpreter the GEMV comes first (``pick_config`` takes the first there), with short
    pieces so that K spans several."""
    if interpreting():
        return [(4, min(64, next_pow2(k)), 1, 1), CUBLAS]
    block_k = min(512, max(16, next_pow2(k)))
    return [CUBLAS, (4, block_k, 4, 2), (8, block_k, 4, 2), (16, block_k, 4, 2)]


def linear_triton(x, weight, bias=None, out=None, config=None):
    """``torch.nn.functional.linear(x, weight, bias)`` for x (rows, K) and weight (N, K): the faster of
    cuBLAS and the GEMV for the shape (``gemv_applies`` must hold; else it is F.linear).  ``out`` (rows, N)
    receives y (tests pre-fill it with NaN); ``config`` forces a choice (``gemv_configs``)."""
    if os.environ.get("PERFMAMBA_GEMV", "1") == "0" or not gemv_applies(x, weight, bias):
        return torch.nn.functional.linear(x, weight, bias)
    rows, k = x.shape
    n = weight.shape[0]

    def launch(cfg):  # returns y (pick_config's timing runs ignore it)
        if cfg == CUBLAS:
            y = torch.nn.functional.linear(x, weight, bias)
            return out.copy_(y) if out is not None else y
        block_n, block_k, num_warps, num_stages = cfg
        y = out if out is not None else torch.empty(rows, n, device=x.device, dtype=x.dtype)
        _gemv_kernel[(triton.cdiv(n, block_n),)](
            x, weight, bias if bias is not None else weight, y, rows, k, n, x.stride(0), weight.stride(0),
            y.stride(0), HAS_BIAS=bias is not None, ROWS=next_pow2(rows), BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=num_warps, num_stages=num_stages)
        return y

    if config is None:
        key = ("gemv", rows, k, n, x.dtype, bias is not None)
        config = pick_config(key, lambda: gemv_configs(k), launch)
    return launch(config)
