"""y = x W^T + b for the few rows of a decode step, as one Triton kernel.

At batch 1 to 16 a projection is a matrix-vector product bound by reading W once.  cuBLAS's kernels for
those shapes were measured at 4 to 5.5 us each for mamba-130m's projections (H200, bf16, 2026-12-01;
in_proj's 4.7 MB of weights took 5.5 us, about 0.9 TB/s), and they were 60% of a token's kernel time.
Here each program owns BLOCK_N output features of every row and streams their (BLOCK_N, K) slice of W
with a pipelined K loop; the rows (M <= 16) are padded to the 16 that a tensor-core dot needs, which
costs nothing next to the weight bytes.  Accumulation is fp32, the result rounded to x's dtype, as
F.linear does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.selective_scan import interpreting, next_pow2, pick_config

MAX_ROWS = 16  # more rows: a GEMM, F.linear's business


@triton.jit
def _few_rows_linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, s_xm, s_wn, s_ym,
                            HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        x = tl.load(x_ptr + offs_m[:, None] * s_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        # W^T's tile (BLOCK_K, BLOCK_N): contiguous along K in memory
        w = tl.load(w_ptr + offs_n[None, :] * s_wn + k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(x, w, acc=acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def _configs(n_out: int):
    """Candidate (BLOCK_N, BLOCK_K, num_warps, num_stages), the default first: narrow blocks so that
    even a few hundred outputs spread over many SMs, deep pipelines to keep the weight stream in flight."""
    if interpreting():
        return [(16, 32, 1, 1)]
    cands = [(16, 128, 4, 4), (16, 256, 4, 3), (16, 64, 4, 4), (32, 128, 4, 4), (16, 128, 2, 4), (16, 512, 4, 2)]
    return cands


def few_rows_linear_triton(x, weight, bias=None, out=None, config=None):
    """F.linear(x, weight, bias) for x (M, K) with M <= MAX_ROWS and a contiguous last axis, weight (N, K)
    row-major and x's dtype; returns (M, N) in x's dtype (``out`` may receive it)."""
    rows, k_in = x.shape
    n_out = weight.shape[0]
    y = out if out is not None else torch.empty(rows, n_out, device=x.device, dtype=x.dtype)
    if rows == 0:
        return y

    def launch(cfg):
        block_n, block_k, num_warps, num_stages = cfg
        _few_rows_linear_kernel[(triton.cdiv(n_out, block_n),)](
            x, weight, bias if bias is not None else weight, y, rows, n_out, k_in,
            x.stride(0), weight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
            PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages)

    if config is None:
        key = ("linear", n_out, k_in, x.dtype, bias is not None)
        config = pick_config(key, _configs(n_out), launch)
    launch(config)
    return y


def few_rows_linear_applies(x, weight) -> bool:
    """The kernel's preconditions: 2-D x of at most MAX_ROWS rows, unit strides along K, one dtype."""
    return (x.dim() == 2 and x.shape[0] <= MAX_ROWS and x.stride(-1) == 1 and weight.stride(-1) == 1
            and x.dtype == weight.dtype and x.shape[1] >= 16)
