"""Causal depthwise conv1d (the short convolution in front of the SSM) and its one-step decode update.

Conv: one program per (batch row, block of BLOCK_D channels, block of BLOCK_L steps).  The W taps are a
static loop: tap k reads the input shifted by W-1-k steps, so each program reads its x tile W times
(the repeats hit L1/L2; W is 4 in Mamba).  Steps before 0 come from the initial state's last W-1
columns (zeros without one).  The program holding the last L block also writes the final conv state
(the last W inputs, oldest first), so the whole op is one launch.

Update: one program per (batch row, block of channels): read the W-1 newest state columns and x, write
the shifted state back in place, dot with the weights.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.alignment import stride_unit
from perfmamba.ops.triton.selective_scan import interpreting, next_pow2


@triton.jit
def _causal_conv1d_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, state_ptr,
    Dm, L,
    s_xb, s_xd, s_xl,  # x (Bsz, D, L)
    s_wd, s_wk,  # weight (D, W)
    s_ib, s_id, s_ik,  # initial state (Bsz, D, W)
    s_yb, s_yd, s_yl,  # y (Bsz, D, L)
    s_sb, s_sd, s_sk,  # final state (Bsz, D, W)
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    STORE_STATE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, WP: tl.constexpr,
    X_UNIT: tl.constexpr,  # x's batch and step strides arrive divided by it (alignment.py)
):
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < Dm
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    s_xl = s_xl * X_UNIT
    x_row = x_ptr + b * (s_xb * X_UNIT) + offs_d[:, None] * s_xd  # (BLOCK_D, 1)
    i_row = init_ptr + b * s_ib + offs_d[:, None] * s_id

    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(W):
        pos = offs_l[None, :] - (W - 1 - k)  # (1, BLOCK_L) input step feeding tap k
        wk = tl.load(w_ptr + offs_d * s_wd + k * s_wk, mask=d_mask, other=0.0).to(tl.float32)
        xv = tl.load(x_row + pos * s_xl, mask=d_mask[:, None] & (pos >= 0) & (pos < L), other=0.0)
        xv = xv.to(tl.float32)
        if HAS_INIT:
            # pos in [-(W-1), -1] is state column W + pos
            hv = tl.load(i_row + (pos + W) * s_ik, mask=d_mask[:, None] & (pos < 0) & (pos + W >= 1), other=0.0)
            # the reference first casts the state to x's dtype
            xv += hv.to(x_ptr.dtype.element_ty).to(tl.float32)
        acc += xv * wk[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * s_yb + offs_d[:, None] * s_yd + offs_l[None, :] * s_yl, acc.to(y_ptr.dtype.element_ty),
             mask=d_mask[:, None] & (offs_l[None, :] < L))

    if STORE_STATE:
        if pid_l == tl.num_programs(2) - 1:
            kk = tl.arange(0, WP)[None, :]  # (1, WP): state column
            spos = L - W + kk  # input step held in column kk
            m = d_mask[:, None] & (kk < W)
            sv = tl.load(x_row + spos * s_xl, mask=m & (spos >= 0), other=0.0)
            if HAS_INIT:
                shist = tl.load(i_row + (spos + W) * s_ik, mask=m & (spos < 0) & (spos + W >= 1), other=0.0)
                sv += shist.to(x_ptr.dtype.element_ty)
            tl.store(state_ptr + b * s_sb + offs_d[:, None] * s_sd + kk * s_sk, sv.to(state_ptr.dtype.element_ty),
                     mask=m)


def causal_conv1d_triton(x, weight, bias=None, activation=None, return_final_state=False, initial_state=None,
                         out=None):
    """Same arguments, shapes and results as ``causal_conv1d_ref``.

    x: (Bsz, D, L); weight: (D, W); bias: (D,); initial_state: (Bsz, D, W) or None.  Returns y (Bsz, D, L)
    in x's dtype and, when asked, the final conv state (Bsz, D, W) in x's dtype.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unknown activation {activation!r}; use 'silu' or None")
    bsz, dim, seqlen = x.shape
    width = weight.shape[-1]
    channels_last = x.stride(1) == 1 and seqlen > 1  # e.g. a slice of Mamba-2's in_proj output, transposed
    if out is not None:
        y = out
    elif channels_last:  # y in the input's layout, so that the caller's views of it need no copies
        y = torch.empty(bsz, seqlen, dim, device=x.device, dtype=x.dtype).transpose(1, 2)
    else:
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
    state = torch.empty(bsz, dim, width, device=x.device, dtype=x.dtype) if return_final_state else None
    bias = bias.contiguous() if bias is not None else None
    if interpreting():
        block_d, block_l = min(64, next_pow2(dim)), min(256, next_pow2(max(seqlen, 1)))
    elif channels_last:  # 64 channels = 128 contiguous bytes per step (bf16)
        block_d, block_l = 64, min(32, max(16, next_pow2(seqlen)))
    else:
        block_d, block_l = 16, min(128, max(16, next_pow2(seqlen)))
    if channels_last:
        # in Mamba-2, rows of in_proj's output: 3288 or 3352 elements for mamba2-130m-shaped layers, multiples
        # of 8 but not of 16, which Triton would load element by element (66 two-byte loads of x per program
        # against 8 16-byte ones, sm_90 PTX counted offline)
        x_unit, ((s_xb, s_xl, s_xd),), _ = stride_unit(x.transpose(1, 2))
    else:
        x_unit, (s_xb, s_xd, s_xl) = 1, x.stride()
    grid = (bsz, triton.cdiv(dim, block_d), max(1, triton.cdiv(seqlen, block_l)))
    init = initial_state if initial_state is not None else x
    st = state if state is not None else x
    _causal_conv1d_kernel[grid](
        x, weight, bias if bias is not None else weight, init, y, st,
        dim, seqlen, s_xb, s_xd, s_xl, *weight.stride(),
        *(initial_state.stride() if initial_state is not None else (0, 0, 0)), *y.stride(), *st.stride(),
        W=width, HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None,
        SILU=activation is not None, STORE_STATE=return_final_state, BLOCK_D=block_d, BLOCK_L=block_l,
        WP=max(2, next_pow2(width)), X_UNIT=x_unit,
        num_warps=4,
    )
    return (y, state) if return_final_state else y


@triton.jit
def _conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, Dm,
    s_xb, s_xd, s_sb, s_sd, s_sk, s_wd, s_wk, s_yb, s_yd,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, WP: tl.constexpr,
):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < Dm
    kk = tl.arange(0, WP)[None, :]  # (1, WP)
    m = d_mask[:, None] & (kk < W)
    s_row = state_ptr + b * s_sb + offs_d[:, None] * s_sd  # (BLOCK_D, 1)
    # new column k = old column k + 1; the newest column is x (cast to the state's dtype, as stored)
    old = tl.load(s_row + (kk + 1) * s_sk, mask=m & (kk < W - 1), other=0.0)
    xv = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=d_mask, other=0.0).to(state_ptr.dtype.element_ty)
    new = tl.where(kk == W - 1, xv[:, None], old)  # (BLOCK_D, WP) in the state's dtype
    tl.store(s_row + kk * s_sk, new, mask=m)
    w = tl.load(w_ptr + offs_d[:, None] * s_wd + kk * s_wk, mask=m, other=0.0).to(tl.float32)
    acc = tl.sum(new.to(tl.float32) * w, axis=1)  # (BLOCK_D,)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * s_yb + offs_d * s_yd, acc.to(y_ptr.dtype.element_ty), mask=d_mask)


def causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation=None, out=None):
    """Same arguments, shapes and results as ``causal_conv1d_update_ref``: x (Bsz, D); conv_state
    (Bsz, D, W) updated in place; returns y (Bsz, D) in x's dtype."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unknown activation {activation!r}; use 'silu' or None")
    bsz, dim = x.shape
    width = weight.shape[-1]
    y = out if out is not None else torch.empty_like(x)
    bias = bias.contiguous() if bias is not None else None
    block_d = min(256, next_pow2(dim))
    grid = (bsz, triton.cdiv(dim, block_d))
    _conv1d_update_kernel[grid](
        x, conv_state, weight, bias if bias is not None else weight, y, dim,
        *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        W=width, HAS_BIAS=bias is not None, SILU=activation is not None, BLOCK_D=block_d,
        WP=max(2, next_pow2(width)), num_warps=4,
    )
    return y
