"""A decode step's residual add, RMSNorm and the projection after it, as one Triton kernel.

At batch 1 a decode step is a chain of small dependent kernels, and each costs a few microseconds
whatever it computes (H200: a mamba-130m token is 147 kernels, 0.52 ms of kernel time).  The norm in
front of in_proj reads and writes a few KB; folded into the projection it costs nothing but its reads.
Each program streams its BLOCK_N rows of the weight, as a GEMV does, against the un-normalized rows
times the norm's weight, and takes the rows' sums of squares on the way (the rows are d_model values, a
few KB, read from L2 by every program; only the first stores the new residual).  Since the norm is a
per-row scale, it is applied to the fp32 sums at the end: rms_norm(r) @ W^T = rstd * ((r * w_norm) @ W^T).

Rounding: the residual sum is rounded to the residual dtype (stored and used as is, as in
``add_rms_norm_ref``); the dot's operand r * w_norm is rounded to the weight dtype where the reference
rounds the normalized r * rstd and then its product with w_norm, so in 16-bit dtypes the results agree
to the dtype's rounding, not bit for bit; the dot accumulates in fp32 and is rounded once at the end.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.selective_scan import interpreting, next_pow2, pick_config

BLOCK_M = 16  # the rows of a tensor-core dot
MAX_ROWS = 16  # the fused kernel's limit (one BLOCK_M); more rows make the projection a GEMM


@triton.jit
def _add_rms_norm_linear_kernel(
    x_ptr, r_ptr, ro_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, M, N, K, eps,
    s_xm, s_rm, s_om, s_wn, s_ym,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    # One pass over K: y = rstd * ((r * nw) @ W^T), the norm's scale applied after the sum, where it is one
    # multiply per output.  Two passes (the statistics first, then the normalized rows) measured 2.7 us
    # slower per call than the norm kernel plus cuBLAS (H200, 2026-12-01): a second chain of dependent loads.
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        mk = m_mask[:, None] & k_mask[None, :]
        h = tl.load(x_ptr + offs_m[:, None] * s_xm + k[None, :], mask=mk, other=0.0).to(tl.float32)
        if HAS_RES:
            h += tl.load(r_ptr + offs_m[:, None] * s_rm + k[None, :], mask=mk, other=0.0).to(tl.float32)
        h = h.to(ro_ptr.dtype.element_ty)  # the residual stream as stored
        if pid == 0:
            tl.store(ro_ptr + offs_m[:, None] * s_om + k[None, :], h, mask=mk)
        h = h.to(tl.float32)
        sumsq += tl.sum(h * h, axis=1)
        nw = tl.load(nw_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        a = (h * nw[None, :]).to(w_ptr.dtype.element_ty)  # (BLOCK_M, BLOCK_K)
        # W^T's tile (BLOCK_K, BLOCK_N): contiguous along K in memory
        w = tl.load(w_ptr + offs_n[None, :] * s_wn + k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc=acc, input_precision=PRECISION)
    acc = acc / tl.sqrt(sumsq / K + eps)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def _configs():
    """Candidate (BLOCK_N, BLOCK_K, num_warps, num_stages), the default first: narrow blocks so that a few
    thousand outputs spread over every SM, a pipelined K loop to keep the weight stream in flight."""
    if interpreting():
        return [(16, 32, 1, 1)]
    return [(16, 128, 4, 3), (16, 256, 4, 2), (32, 128, 4, 3), (16, 64, 4, 4), (16, 128, 2, 3)]


def norm_linear_applies(x, residual, norm_weight, weight) -> bool:
    """The fused kernel's preconditions: at most MAX_ROWS rows of unit-stride vectors, and the norm's
    output dtype (its weight's) equal to the projection's."""
    vectors = [t for t in (x, residual, weight) if t is not None]
    return (x.dim() == 2 and x.shape[0] <= MAX_ROWS and all(t.stride(-1) == 1 for t in vectors)
            and norm_weight.dtype == weight.dtype and x.shape[1] >= 16)


def add_rms_norm_linear_triton(x, residual, norm_weight, eps, weight, bias=None, residual_dtype=None, config=None):
    """``add_rms_norm_ref`` then ``F.linear`` in one kernel: x, residual (M, K) with M <= MAX_ROWS; norm_weight
    (K,); weight (N, K).  Returns (y (M, N) in weight's dtype, the new residual (M, K))."""
    res_dtype = residual_dtype or (torch.promote_types(residual.dtype, x.dtype) if residual is not None else x.dtype)
    rows, k_in = x.shape
    n_out = weight.shape[0]
    r_out = torch.empty(x.shape, device=x.device, dtype=res_dtype)
    y = torch.empty(rows, n_out, device=x.device, dtype=weight.dtype)
    if rows == 0:
        return y, r_out
    res = residual if residual is not None else x

    def launch(cfg):
        block_n, block_k, num_warps, num_stages = cfg
        _add_rms_norm_linear_kernel[(triton.cdiv(n_out, block_n),)](
            x, res, r_out, norm_weight, weight, bias if bias is not None else weight, y, rows, n_out, k_in,
            float(eps), x.stride(0), res.stride(0), r_out.stride(0), weight.stride(0), y.stride(0),
            HAS_RES=residual is not None, HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=block_n,
            BLOCK_K=min(block_k, max(16, next_pow2(k_in))),
            PRECISION="ieee" if weight.dtype == torch.float32 else "tf32", num_warps=num_warps, num_stages=num_stages)

    if config is None:
        key = ("norm_linear", n_out, k_in, weight.dtype, res_dtype, residual is not None, bias is not None)
        config = pick_config(key, _configs(), launch)
    launch(config)
    return y, r_out
