"""Mamba-2 SSD (state-space duality) scan as one fused Triton kernel.

One program owns one (batch row, head, block of BLOCK_P head channels) and walks the sequence chunk by
chunk (BLOCK_T steps), keeping the running state h^T (N, BLOCK_P) in fp32 registers.  Per chunk, with
a_t = dt_t A (one scalar per head and step) and acum its cumulative sum inside the chunk:

    y      = (C h) * exp(acum)                                   the state entering the chunk
           + ((C B^T) * exp(acum_t - acum_s) * dt_s * [s <= t]) x   the chunk itself (quadratic form)
    h^T   <- exp(acum_T) h^T + (B * exp(acum_T - acum_s) dt_s)^T x   the state leaving it

All four products are tensor-core dots.  Because the state never leaves the program there is no
chunk-state tensor in memory and no separate state-passing pass: x, dt, B, C are read once per program
and y written once, in a single launch.  The price is that C B^T is recomputed by each head of a group
(and each P block); it is the cheapest of the four dots at BLOCK_T <= N.

The N axis is padded to power-of-two tiles (tl.arange and tl.dot need powers of two, each >= 16).  One
tile of next_pow2(N) would make N = 96 cost as much as 128, so when it wastes less padding the state is
split into two tiles of BLOCK_N + BLOCK_N2 states (96 = 64 + 32, 40 = 32 + 16; ``state_tiles`` picks
them): the program then keeps two state tiles h1, h2 and loads two B^T / C tiles, the N sums of C h and
C B^T become two dots into one accumulator, and each tile's state update is its own dot.  The second
tile is a compile-time branch (BLOCK_N2 = 0: absent), so a power-of-two N compiles to the single-tile
kernel.  In memory the states stay (Bsz, [S,] H, P, N); each tile reads and writes its own N range.

Two layouts compute the same thing.  ``_ssd_fused_kernel`` (the default layout) has the T steps as the
rows of C h, C B^T and scores x, and N as those of the state update B^T x.  Hopper's warpgroup MMA
(wgmma) needs at least 64 rows, so at BLOCK_T = 32 three dots, and at N = 32 all four, fall back to the
older mma.sync, with register shuffles between the dots' layouts.  ``_ssd_fused_t_kernel`` (the
transposed layout; config[4] = True) keeps h (BLOCK_P, N) as it lies in memory and computes every product
with the P channels (64) as rows:

    y^T   = (h C^T) * exp(acum_t) + x^T scores^T,   scores^T[s, t] = (B_s . C_t) exp(acum_t - acum_s) dt_s [s <= t]
    h    <- exp(acum_T) h + x^T (B * exp(acum_T - acum_s) dt_s)

so the three dots with P in them are 64-row wgmma for any N (the (T, T) B C^T is the only small one).
x^T, C^T, y^T, z^T are addressed transposed; the per-step weights go on the right operands, which wgmma
reads from shared memory anyway.  It is fastest at BLOCK_T = 64 (see ``_ssd_configs``), where Triton 3.6
miscompiles a state update whose state tile is narrower than 64: a single narrow tile (N <= 32) then runs
its update as (N, T) @ (T, P), and a narrow second tile is widened (N = 96 runs as 128; ``transposed_tiles``).

``chunk_size`` only sets the chunk granularity of the reference algorithm; it changes rounding, not the
result, so the kernel uses its own BLOCK_T (a power of two <= chunk_size).  16-bit inputs feed 16-bit
operands to the dots (the state and the decay-weighted scores are rounded to the input dtype, as in
mamba_ssm's kernels) with fp32 accumulation; fp32 inputs use exact fp32 dots.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from perfmamba.ops.replay import launches_are_free
from perfmamba.ops.triton.alignment import stride_unit
from perfmamba.ops.triton.selective_scan import (asm_flags, exp2_decay, interpreting, next_pow2, pick_config,
                                                 segment_bounds, silu_act, softplus_act)


@triton.jit
def _head_block(pid_bh, pid_p, H, P, HEADS_PER_GROUP, BLOCK_P: tl.constexpr):
    """(batch row, head, B/C group, channel offsets, their mask) of the program (pid_bh, pid_p)."""
    b = pid_bh // H
    head = pid_bh % H
    grp = head // HEADS_PER_GROUP
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return b, head, grp, offs_p, offs_p < P


@triton.jit
def _chunk_dt(dt_ptrs, t_mask, is_last, A2, dt_bias, dt_min, dt_max, HAS_DT_BIAS: tl.constexpr,
              SOFTPLUS: tl.constexpr, CLAMP_DT: tl.constexpr, FAST_ACT: tl.constexpr):
    """(dt, acum, a_end) of one chunk: the step sizes (T,), the log2 decay from the chunk start to each step
    (T,) and over the whole chunk (a scalar); A2 is A * log2 e."""
    dt = tl.load(dt_ptrs, mask=t_mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt = dt + dt_bias
    if SOFTPLUS:
        dt = softplus_act(dt, FAST_ACT)
    if CLAMP_DT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    # steps past L: dt = 0, so they neither decay nor feed the state
    dt = tl.where(t_mask, dt, 0.0)
    acum = tl.cumsum(dt * A2, axis=0)
    a_end = tl.sum(tl.where(is_last, acum, 0.0), axis=0)
    return dt, acum, a_end


@triton.jit
def _strides_in_elements(s_xb, s_xl, s_xh, X_UNIT: tl.constexpr, s_bb, s_bl, s_bg, s_cb, s_cl, s_cg,
                         BC_UNIT: tl.constexpr):
    """x's batch, step and head strides, and B's and C's batch, step and group strides, in elements.
    Triton knows an integer argument's divisibility only when it is a multiple of 16; otherwise it loads
    element by element (B and C at N = 56: rows 56 apart, or a group stride of 56 even with G = 1: the SSD
    of a demo-mamba2 layer pruned to 56 states took 1.4x its 64-state time, H200, 2026-12-01; x where the
    conv output's rows are not multiples of 16).  So such strides arrive divided by a unit, their largest
    power-of-two factor (``alignment.stride_unit``; x's its own, since B's could lose x's multiple of 16),
    and are multiplied back by the constant: every row is known to start on a unit-element boundary and
    is loaded as vectors.  A unit of 1 changes nothing."""
    return (s_xb * X_UNIT, s_xl * X_UNIT, s_xh * X_UNIT,
            s_bb * BC_UNIT, s_bl * BC_UNIT, s_bg * BC_UNIT, s_cb * BC_UNIT, s_cl * BC_UNIT, s_cg * BC_UNIT)


@triton.jit
def _ssd_fused_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, h0_ptr, y_ptr, hT_ptr, asum_ptr,
    L, H, P, HEADS_PER_GROUP, dt_min, dt_max, SEG,
    s_xb, s_xl, s_xh, s_xp,  # x (Bsz, L, H, P)
    s_tb, s_tl, s_th,  # dt (Bsz, L, H)
    s_bb, s_bl, s_bg, s_bn,  # B (Bsz, L, G, N)
    s_cb, s_cl, s_cg, s_cn,  # C (Bsz, L, G, N)
    s_dh, s_dp,  # D (H,) -> s_dp = 0, or (H, P)
    s_zb, s_zl, s_zh, s_zp,  # z (Bsz, L, H, P)
    s_ib, s_is, s_ih, s_ip, s_in,  # state entering each segment (Bsz, S, H, P, N); S = 1 without splits
    s_yb, s_yl, s_yh, s_yp,  # y (Bsz, L, H, P)
    s_fb, s_fs, s_fh, s_fp, s_fn,  # state leaving each segment (Bsz, S, H, P, N)
    s_ab, s_as,  # log2 decay over each segment (Bsz, S, H), H contiguous
    N: tl.constexpr, BC_UNIT: tl.constexpr, X_UNIT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CLAMP_DT: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, STATES_ONLY: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr,
    PRECISION: tl.constexpr,
    ASM: tl.constexpr,  # inline PTX allowed: compiled for a GPU, not run by the interpreter
    FAST_ACT: tl.constexpr,  # approximate softplus / SiLU (16-bit inputs only)
):
    s_xb, s_xl, s_xh, s_bb, s_bl, s_bg, s_cb, s_cl, s_cg = _strides_in_elements(
        s_xb, s_xl, s_xh, X_UNIT, s_bb, s_bl, s_bg, s_cb, s_cl, s_cg, BC_UNIT)
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    seg = tl.program_id(2)  # which segment of the sequence (split-L mode; 0 otherwise)
    l_begin, l_end = segment_bounds(seg, SEG, L, BLOCK_T, SPLIT)  # SEG counts whole tiles
    b, head, grp, offs_p, p_mask = _head_block(pid_bh, pid_p, H, P, HEADS_PER_GROUP, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_t = tl.arange(0, BLOCK_T)
    np_mask = n_mask[:, None] & p_mask[None, :]  # (BLOCK_N, BLOCK_P)
    # Every `if BLOCK_N2 > 0:` below is resolved at compile time: with one tile (BLOCK_N2 = 0) none of the
    # second tile's code exists, and the kernel is the single-tile one whose register use is tuned.
    if BLOCK_N2 > 0:  # states BLOCK_N .. BLOCK_N + BLOCK_N2 - 1 (the first tile is then full)
        offs_n2 = BLOCK_N + tl.arange(0, BLOCK_N2)
        n_mask2 = offs_n2 < N
        np_mask2 = n_mask2[:, None] & p_mask[None, :]  # (BLOCK_N2, BLOCK_P)

    # exp(x) is computed as exp2(x * log2 e): fold log2 e into A once.
    A2 = tl.load(A_ptr + head).to(tl.float32) * 1.4426950408889634
    dt_bias = tl.load(dtb_ptr + head).to(tl.float32) if HAS_DT_BIAS else 0.0
    if HAS_D:
        d_skip = tl.load(D_ptr + head * s_dh + offs_p * s_dp, mask=p_mask, other=0.0).to(tl.float32)

    # h^T: the running state, N x BLOCK_P, fp32 (with two tiles: h, states 0 .. BLOCK_N - 1, and h2)
    if HAS_INIT:
        h0_base = h0_ptr + b * s_ib + seg * s_is + head * s_ih + offs_p[None, :] * s_ip
        h = tl.load(h0_base + offs_n[:, None] * s_in, mask=np_mask, other=0.0).to(tl.float32)
        if BLOCK_N2 > 0:
            h2 = tl.load(h0_base + offs_n2[:, None] * s_in, mask=np_mask2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        if BLOCK_N2 > 0:
            h2 = tl.zeros((BLOCK_N2, BLOCK_P), dtype=tl.float32)

    x_base = x_ptr + b * s_xb + head * s_xh + offs_p[None, :] * s_xp  # + t * s_xl
    y_base = y_ptr + b * s_yb + head * s_yh + offs_p[None, :] * s_yp
    dt_base = dt_ptr + b * s_tb + head * s_th
    B_base = B_ptr + b * s_bb + grp * s_bg + offs_n[:, None] * s_bn  # transposed tile (N, T)
    C_base = C_ptr + b * s_cb + grp * s_cg + offs_n[None, :] * s_cn  # (T, N)
    if BLOCK_N2 > 0:
        B2_base = B_ptr + b * s_bb + grp * s_bg + offs_n2[:, None] * s_bn
        C2_base = C_ptr + b * s_cb + grp * s_cg + offs_n2[None, :] * s_cn
    if HAS_Z:
        z_base = z_ptr + b * s_zb + head * s_zh + offs_p[None, :] * s_zp
    causal = offs_t[:, None] >= offs_t[None, :]  # (T, T): s <= t
    is_last = offs_t == BLOCK_T - 1

    a_total = 0.0  # log2 decay over the segment (STATES_ONLY)
    for c0 in range(l_begin, l_end, BLOCK_T):
        t = c0 + offs_t
        t_mask = t < l_end
        dt, acum, a_end = _chunk_dt(dt_base + t * s_tl, t_mask, is_last, A2, dt_bias, dt_min, dt_max,
                                    HAS_DT_BIAS, SOFTPLUS, CLAMP_DT, FAST_ACT)

        tp_mask = t_mask[:, None] & p_mask[None, :]
        x = tl.load(x_base + t[:, None] * s_xl, mask=tp_mask, other=0.0)  # (T, BLOCK_P) input dtype
        if not STATES_ONLY:
            Cc = tl.load(C_base + t[:, None] * s_cl, mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(x.dtype)
        Bt = tl.load(B_base + t[None, :] * s_bl, mask=n_mask[:, None] & t_mask[None, :], other=0.0).to(x.dtype)
        if BLOCK_N2 > 0:
            if not STATES_ONLY:
                Cc2 = tl.load(C2_base + t[:, None] * s_cl, mask=t_mask[:, None] & n_mask2[None, :],
                              other=0.0).to(x.dtype)
            Bt2 = tl.load(B2_base + t[None, :] * s_bl, mask=n_mask2[:, None] & t_mask[None, :],
                          other=0.0).to(x.dtype)

        if not STATES_ONLY:
            # entering state: (T, N) @ (N, BLOCK_P), scaled by the decay up to each step; with two tiles the
            # N sum is split in two dots into one accumulator, and the decay scales their sum
            y = tl.dot(Cc, h.to(x.dtype), input_precision=PRECISION)
            if BLOCK_N2 > 0:
                y = tl.dot(Cc2, h2.to(x.dtype), acc=y, input_precision=PRECISION)
            y = y * exp2_decay(acum, ASM)[:, None]
            # the chunk itself: causal, decay-weighted C B^T times dt_s x_s
            cb = tl.dot(Cc, Bt, input_precision=PRECISION)  # (T, T) fp32
            if BLOCK_N2 > 0:
                cb = tl.dot(Cc2, Bt2, acc=cb, input_precision=PRECISION)
            decay = tl.where(causal, acum[:, None] - acum[None, :], -float("inf"))
            scores = cb * exp2_decay(decay, ASM) * dt[None, :]
            y = tl.dot(scores.to(x.dtype), x, acc=y, input_precision=PRECISION)
        else:
            a_total += a_end
        # leaving state: decay h, add each step's dt B x^T decayed to the chunk end
        w = exp2_decay(a_end - acum, ASM) * dt  # (T,)
        Bw = (Bt.to(tl.float32) * w[None, :]).to(x.dtype)  # (N, T)
        chunk_decay = exp2_decay(a_end, ASM)
        h = tl.dot(Bw, x, acc=h * chunk_decay, input_precision=PRECISION)
        if BLOCK_N2 > 0:  # the state's rows are independent: each tile is updated on its own
            Bw2 = (Bt2.to(tl.float32) * w[None, :]).to(x.dtype)
            h2 = tl.dot(Bw2, x, acc=h2 * chunk_decay, input_precision=PRECISION)

        if not STATES_ONLY:
            if HAS_D:
                y += x.to(tl.float32) * d_skip[None, :]
            if HAS_Z:
                zt = tl.load(z_base + t[:, None] * s_zl, mask=tp_mask, other=0.0).to(tl.float32)
                y = y * silu_act(zt, FAST_ACT)
            tl.store(y_base + t[:, None] * s_yl, y.to(y_ptr.dtype.element_ty), mask=tp_mask)

    if STORE_FINAL:
        hT_base = hT_ptr + b * s_fb + seg * s_fs + head * s_fh + offs_p[None, :] * s_fp
        tl.store(hT_base + offs_n[:, None] * s_fn, h, mask=np_mask)
        if BLOCK_N2 > 0:
            tl.store(hT_base + offs_n2[:, None] * s_fn, h2, mask=np_mask2)
    if STATES_ONLY:
        tl.store(asum_ptr + b * s_ab + seg * s_as + head, a_total, mask=pid_p == 0)


@triton.jit
def _ssd_fused_t_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, h0_ptr, y_ptr, hT_ptr, asum_ptr,
    L, H, P, HEADS_PER_GROUP, dt_min, dt_max, SEG,
    s_xb, s_xl, s_xh, s_xp, s_tb, s_tl, s_th, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn, s_dh, s_dp,
    s_zb, s_zl, s_zh, s_zp, s_ib, s_is, s_ih, s_ip, s_in, s_yb, s_yl, s_yh, s_yp, s_fb, s_fs, s_fh, s_fp, s_fn,
    s_ab, s_as,  # the same arguments as _ssd_fused_kernel
    N: tl.constexpr, BC_UNIT: tl.constexpr, X_UNIT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CLAMP_DT: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, STATES_ONLY: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr,
    PRECISION: tl.constexpr, ASM: tl.constexpr, FAST_ACT: tl.constexpr,
    BC_TMA: tl.constexpr = False,  # B_ptr, C_ptr are tensor descriptors (one state tile only; see tma_tiles)
):
    # The transposed layout: every tile has the P channels as rows, so the three dots with P in them have
    # BLOCK_P (64) rows, the M of one Hopper warpgroup MMA, whatever N is (see the module doc).
    s_xb, s_xl, s_xh, s_bb, s_bl, s_bg, s_cb, s_cl, s_cg = _strides_in_elements(
        s_xb, s_xl, s_xh, X_UNIT, s_bb, s_bl, s_bg, s_cb, s_cl, s_cg, BC_UNIT)
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    seg = tl.program_id(2)
    l_begin, l_end = segment_bounds(seg, SEG, L, BLOCK_T, SPLIT)
    b, head, grp, offs_p, p_mask = _head_block(pid_bh, pid_p, H, P, HEADS_PER_GROUP, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_t = tl.arange(0, BLOCK_T)
    pn_mask = p_mask[:, None] & n_mask[None, :]  # (BLOCK_P, BLOCK_N)
    if BLOCK_N2 > 0:
        offs_n2 = BLOCK_N + tl.arange(0, BLOCK_N2)
        n_mask2 = offs_n2 < N
        pn_mask2 = p_mask[:, None] & n_mask2[None, :]

    A2 = tl.load(A_ptr + head).to(tl.float32) * 1.4426950408889634
    dt_bias = tl.load(dtb_ptr + head).to(tl.float32) if HAS_DT_BIAS else 0.0
    if HAS_D:
        d_skip = tl.load(D_ptr + head * s_dh + offs_p * s_dp, mask=p_mask, other=0.0).to(tl.float32)

    # h^T: the running state as it lies in memory, BLOCK_P x N, fp32
    if HAS_INIT:
        h0_base = h0_ptr + b * s_ib + seg * s_is + head * s_ih + offs_p[:, None] * s_ip
        h = tl.load(h0_base + offs_n[None, :] * s_in, mask=pn_mask, other=0.0).to(tl.float32)
        if BLOCK_N2 > 0:
            h2 = tl.load(h0_base + offs_n2[None, :] * s_in, mask=pn_mask2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        if BLOCK_N2 > 0:
            h2 = tl.zeros((BLOCK_P, BLOCK_N2), dtype=tl.float32)

    # x^T, z^T, y^T are (BLOCK_P, T) and C^T (N, T) tiles addressed transposed (P, N contiguous in memory);
    # B is read as it lies, (T, N), the state update's right operand.  Every per-step weight goes on a right
    # operand (scores, B), never on x^T: x^T then feeds both of its dots straight from the shared-memory
    # buffer its pipelined load lands in (scaling it in registers first made Triton 3.6 load it without
    # pipelining, and convert it through shared memory twice per chunk)
    x_base = x_ptr + b * s_xb + head * s_xh + offs_p[:, None] * s_xp  # + t[None, :] * s_xl
    y_base = y_ptr + b * s_yb + head * s_yh + offs_p[:, None] * s_yp
    dt_base = dt_ptr + b * s_tb + head * s_th
    if not BC_TMA:
        B_base = B_ptr + b * s_bb + grp * s_bg + offs_n[None, :] * s_bn  # (T, N)
        C_base = C_ptr + b * s_cb + grp * s_cg + offs_n[:, None] * s_cn  # (N, T)
    if BLOCK_N2 > 0:
        B2_base = B_ptr + b * s_bb + grp * s_bg + offs_n2[None, :] * s_bn
        C2_base = C_ptr + b * s_cb + grp * s_cg + offs_n2[:, None] * s_cn
    if HAS_Z:
        z_base = z_ptr + b * s_zb + head * s_zh + offs_p[:, None] * s_zp
    causal = offs_t[:, None] <= offs_t[None, :]  # (s, t): s <= t
    is_last = offs_t == BLOCK_T - 1

    a_total = 0.0
    for c0 in range(l_begin, l_end, BLOCK_T):
        t = c0 + offs_t
        t_mask = t < l_end
        dt, acum, a_end = _chunk_dt(dt_base + t * s_tl, t_mask, is_last, A2, dt_bias, dt_min, dt_max,
                                    HAS_DT_BIAS, SOFTPLUS, CLAMP_DT, FAST_ACT)

        pt_mask = p_mask[:, None] & t_mask[None, :]
        xt = tl.load(x_base + t[None, :] * s_xl, mask=pt_mask, other=0.0)  # (BLOCK_P, T) input dtype
        if BC_TMA:
            # one (T, BLOCK_N) box of the (Bsz, L, G, N) tensor per load, by the copy engine: states past N and
            # steps past L arrive as zeros; steps past a split segment's end are real inputs, but their dt is
            # 0, so they add nothing to the state or to y (and y is not stored there)
            Bc = B_ptr.load([b, c0, grp, 0]).reshape(BLOCK_T, BLOCK_N).to(xt.dtype)
            if not STATES_ONLY:
                Ct = tl.trans(C_ptr.load([b, c0, grp, 0]).reshape(BLOCK_T, BLOCK_N)).to(xt.dtype)
        else:
            Bc = tl.load(B_base + t[:, None] * s_bl, mask=t_mask[:, None] & n_mask[None, :],
                         other=0.0).to(xt.dtype)
            if not STATES_ONLY:
                Ct = tl.load(C_base + t[None, :] * s_cl, mask=n_mask[:, None] & t_mask[None, :],
                             other=0.0).to(xt.dtype)
        if BLOCK_N2 > 0:
            Bc2 = tl.load(B2_base + t[:, None] * s_bl, mask=t_mask[:, None] & n_mask2[None, :],
                          other=0.0).to(xt.dtype)
            if not STATES_ONLY:
                Ct2 = tl.load(C2_base + t[None, :] * s_cl, mask=n_mask2[:, None] & t_mask[None, :],
                              other=0.0).to(xt.dtype)

        if not STATES_ONLY:
            # entering state: (BLOCK_P, N) @ (N, T), each column t scaled by the decay up to t
            y = tl.dot(h.to(xt.dtype), Ct, input_precision=PRECISION)
            if BLOCK_N2 > 0:
                y = tl.dot(h2.to(xt.dtype), Ct2, acc=y, input_precision=PRECISION)
            y = y * exp2_decay(acum, ASM)[None, :]
            # the chunk itself: y^T += x^T scores^T, scores^T[s, t] = (B_s . C_t) exp2(acum_t - acum_s) dt_s for
            # s <= t; B C^T is computed already transposed, so the scores are the right operand as they are
            cb = tl.dot(Bc, Ct, input_precision=PRECISION)  # (T, T) fp32, [s, t]
            if BLOCK_N2 > 0:
                cb = tl.dot(Bc2, Ct2, acc=cb, input_precision=PRECISION)
            decay = tl.where(causal, acum[None, :] - acum[:, None], -float("inf"))
            scores = cb * exp2_decay(decay, ASM) * dt[:, None]
            y = tl.dot(xt, scores.to(xt.dtype), acc=y, input_precision=PRECISION)
        else:
            a_total += a_end
        # leaving state: h^T <- decay h^T + x^T (w B), w_s = dt_s exp2(a_end - acum_s) on the rows of B
        w = exp2_decay(a_end - acum, ASM) * dt
        Bw = (Bc.to(tl.float32) * w[:, None]).to(xt.dtype)  # (T, N)
        chunk_decay = exp2_decay(a_end, ASM)
        if BLOCK_T >= 64 and BLOCK_N < 64:
            # a state tile narrower than 64 as the N of this warpgroup MMA is miscompiled by Triton 3.6 at
            # BLOCK_T = 64 (see transposed_tiles); as (N, T) @ (T, P), an mma.sync product transposed back,
            # it is right, and (N = 32) faster than the tile widened to 64
            h = h * chunk_decay + tl.trans(tl.dot(tl.trans(Bw), tl.trans(xt), input_precision=PRECISION))
        else:
            h = tl.dot(xt, Bw, acc=h * chunk_decay, input_precision=PRECISION)
        if BLOCK_N2 > 0:  # never narrower than 64 at BLOCK_T = 64 (transposed_tiles)
            Bw2 = (Bc2.to(tl.float32) * w[:, None]).to(xt.dtype)
            h2 = tl.dot(xt, Bw2, acc=h2 * chunk_decay, input_precision=PRECISION)

        if not STATES_ONLY:
            if HAS_D:
                y += xt.to(tl.float32) * d_skip[:, None]
            if HAS_Z:
                zt = tl.load(z_base + t[None, :] * s_zl, mask=pt_mask, other=0.0).to(tl.float32)
                y = y * silu_act(zt, FAST_ACT)
            tl.store(y_base + t[None, :] * s_yl, y.to(y_ptr.dtype.element_ty), mask=pt_mask)

    if STORE_FINAL:
        hT_base = hT_ptr + b * s_fb + seg * s_fs + head * s_fh + offs_p[:, None] * s_fp
        tl.store(hT_base + offs_n[None, :] * s_fn, h, mask=pn_mask)
        if BLOCK_N2 > 0:
            tl.store(hT_base + offs_n2[None, :] * s_fn, h2, mask=pn_mask2)
    if STATES_ONLY:
        tl.store(asum_ptr + b * s_ab + seg * s_as + head, a_total, mask=pid_p == 0)


def state_tiles(n_state: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_N2): the power-of-two state tiles covering N states; BLOCK_N2 = 0 for one tile.

    Each tile is >= 16 (every dimension of tl.dot).  One tile pads N to M = max(16, next_pow2(N)); two
    tiles can do better only as M/2 + a second tile covering the rest, M/2 + max(16, next_pow2(N - M/2))
    (a smaller first tile leaves more than M/2 for the second, which then needs M/2 or more itself).  Two
    tiles are used only when that is strictly less padding (96 = 64 + 32, 40 = 32 + 16); on a tie (112:
    64 + 64 = 128, or 17: 16 + 16 = 32) one tile does the same work in fewer, larger dots.
    """
    one = max(16, next_pow2(n_state))
    first = one // 2
    if first < 16:
        return one, 0
    second = max(16, next_pow2(n_state - first))
    return (first, second) if first + second < one else (one, 0)


def transposed_tiles(n_state: int, block_t: int) -> tuple[int, int]:
    """``state_tiles`` for the transposed kernel: at BLOCK_T > 32 a second state tile is never narrower than 64.

    Measured on an H200 with Triton 3.6 (2026-12-01, scratch/narrow_dbg.py): at BLOCK_T = 64 a state tile
    narrower than 64 as the N of the state update's warpgroup MMA, x^T (P, T) @ (w B) (T, N), compiles to
    a wrong state or an out-of-range shared-memory read (N = 16, 32 alone; the 32-wide second tile of 96),
    while the interpreter is right.  Tiles of 64 and 128 are right.  A single narrow tile runs its update
    as (N, T) @ (T, P) instead (the kernel's ``BLOCK_N < 64`` branch): right, and at N = 32 0.183-0.186
    ms against 0.190 for the tile widened to 64 (B=8, L=4096, 24x64).  The same for a narrow second tile
    (96 = 64 + 32) took 0.251 ms against 0.235 for one 128-state tile, and a 64-wide update for that tile
    alone 0.237, so a narrow second tile is widened instead (the extra states are masked off: zero), and
    two tiles become one when that is no more states.
    """
    first, second = state_tiles(n_state)
    if block_t <= 32 or second == 0 or second >= 64:
        return first, second
    one = next_pow2(n_state)
    if first + 64 >= one:
        return one, 0
    return first, 64


def descriptors_readable(*tensors) -> bool:
    """Whether the copy engine (TMA) can read these tensors through descriptors: on Hopper or later (or the
    interpreter), innermost stride 1, base address and every leading stride multiples of 16 bytes (not
    N = 13 contiguous, say)."""
    if tensors[0].is_cuda and torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1]) for t in tensors)


def descriptors_wanted(device: torch.device) -> bool:
    """Whether calls on ``device`` should read B and C through descriptors where they can: under the
    interpreter, and inside ``perfmamba.ops.replay.for_replay()`` (a CUDA graph's warm-up and capture), not in
    eager GPU calls.  Building and passing two descriptors cost 0.04-0.07 ms of host time a call (0.20
    against 0.17 and 0.17 against 0.10 ms per eager call at B=1, L=128 in two runs, H200 2026-12-03), paid
    once in a graph but on every eager call, which the host already bounds.

    Decided by ``for_replay``, not by whether a capture is under way, so that a graph's warm-up takes the
    path its capture will: the choice is part of the autotuner's key, and a capture cannot tune.  Keyed on
    the capture, the warm-up tuned the pointer-load key while the capture asked for another, and so ran that
    key's first candidate untimed, which the warm-up need not have compiled.  On an H200 (2026-12-03) the
    model benchmark's mamba2-130m graph prefill at L = 16383 (after 16384) then failed to capture ("operation
    not permitted when stream is capturing"); with this rule every capture asks for a key its warm-up tuned,
    and the same benchmark captured every shape.  A compile inside the capture is the likely cause, not a
    shown one: the same two prefills under the old rule captured in a process of their own."""
    return interpreting() or (torch.device(device).type == "cuda" and launches_are_free())


def tma_tiles(n_state: int, block_t: int, elem_bytes: int):
    """The transposed kernel's one state tile with B and C through descriptors, or None where they stay on
    pointer loads.  Measured on an H200 (2026-12-03, ``docs/benchmarks/tuning-h200/ssd-tma.txt``; B=8,
    L=4096, 24 x 64, bf16, device time): descriptors win below 64 states (N = 56: 0.193 against 0.202 ms,
    48: 0.194 / 0.196, 32: 0.181 / 0.186, 16: 0.165 / 0.169) and lose from 64 on (64: 0.1935 / 0.1924;
    one 128-state box: 0.271 / 0.237 at N=128; two 64-state boxes: 0.304 / 0.237 at N=128, 0.248 / 0.238
    at N=96).  So: one tile (``transposed_tiles``) of at most 128 bytes a row, for N < 64."""
    first, second = transposed_tiles(n_state, block_t)
    return (first, 0) if second == 0 and first * elem_bytes <= 128 and n_state < 64 else None


def bc_descriptors(B, C, block_t: int, block_n: int):
    """Tensor descriptors of B and C (Bsz, L, G, N) for the transposed kernel's ``BC_TMA`` loads, boxes of
    (1, block_t, 1, block_n); the caller has checked ``descriptors_readable(B, C)``.

    Tried first for N = 96 (its 192-byte rows straddle 128-byte lines under the pointer loads' async
    copies, ``tuning-h200/n96-counters.txt``): the copy engine reads whole boxes whatever the rows'
    alignment, but N = 96 got slower; it pays below 64 states only (``tma_tiles``).
    """
    from triton.tools.tensor_descriptor import TensorDescriptor
    box = [1, block_t, 1, block_n]
    return TensorDescriptor.from_tensor(B, box), TensorDescriptor.from_tensor(C, box)


def _ssd_configs(headdim: int, n_state: int, chunk_size: int):
    """Candidate (BLOCK_T, BLOCK_P, num_warps, num_stages[, TRANSPOSED]), the default first.

    A short BLOCK_T keeps the quadratic in-chunk work (T^2 (N + P) per chunk) small next to the state
    products (T N P); the fp32 state tile N x BLOCK_P in registers bounds BLOCK_P.

    The transposed layout (a fifth element True: ``_ssd_fused_t_kernel``) is offered at BLOCK_T = 64 only,
    and first when BLOCK_P = 64.  On an H200 (Triton 3.6, bf16, 2026-12-01; scratch/ssd_t_sweep.py) at
    B=8, L=4096, H=24, P=64 its (64, 64, 4, 2) took 0.232 / 0.234 / 0.190 / 0.190 / 0.188 ms at N = 128 /
    96 / 64 / 32 / 16 (N <= 32 then widened to a 64-state tile), against 0.301 / 0.255 / 0.209 / 0.217 /
    0.194 for the best default-layout config (and also won at batch 1, L=16384, split-L, and at P=128),
    while at BLOCK_T = 32 it was 5-45% slower than the default layout for every N.  With BLOCK_P < 64
    (head dims up to 32) its tiles are below the warpgroup MMA's 64 rows and it was neither measured nor
    checked on a GPU for the miscompile around which ``transposed_tiles`` and the narrow-tile update
    work, so it is not offered there, nor past 128 states, where a 64 x 256 fp32 state tile was not
    measured either (``ssd_triton(config=...)`` still runs it).
    """
    block_p = max(16, min(64, next_pow2(headdim)))
    t_max = max(16, next_pow2(chunk_size) if chunk_size & (chunk_size - 1) == 0 else next_pow2(chunk_size) // 2)
    if interpreting():
        return [(min(32, t_max), block_p, 1, 1)]
    t32 = min(32, t_max)
    cands = [(t32, block_p, 4, 2), (t32, block_p, 4, 3), (t32, block_p, 4, 4), (min(64, t_max), block_p, 4, 2),
             (min(16, t_max), block_p, 4, 2), (t32, block_p, 8, 2)]
    if block_p >= 32:  # twice the programs (each head's C B^T is then computed twice)
        cands.append((t32, block_p // 2, 4, 2))
    # the transposed layout where it was measured, and fastest: BLOCK_T = BLOCK_P = 64, up to 128 states
    if t_max >= 64 and block_p >= 64 and n_state <= 128:
        cands = [(64, block_p, 4, 2, True)] + cands + [(64, block_p, 4, 3, True)]
    return list(dict.fromkeys(cands))


# (BLOCK_T, BLOCK_P) of the latest call per shape class (the chosen configuration, not the autotuner's
# trials), for the profiler's cost model (``tiles_run``); the class holds the dtype, since the autotuner keys
# (and may choose) per dtype
_LAUNCHED: dict = {}


def _shape_class(bsz: int, seqlen: int, nheads: int, headdim: int, n_state: int, dtype: torch.dtype) -> tuple:
    return bsz * nheads, next_pow2(seqlen), headdim, n_state, dtype


def tiles_run(bsz: int, seqlen: int, nheads: int, headdim: int, n_state: int, chunk_size: int,
              dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_P) the kernel ran this shape with in this process, else the first candidate it would
    try: BLOCK_T is the chunk of its in-chunk quadratic form, and each program of BLOCK_P head channels
    computes its head's C B^T itself."""
    ran = _LAUNCHED.get(_shape_class(bsz, seqlen, nheads, headdim, n_state, dtype))
    return ran if ran is not None else tuple(_ssd_configs(headdim, n_state, int(chunk_size))[0][:2])


def ssd_triton(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
               return_final_states=False, dt_limit=(0.0, float("inf")), out=None, config=None, splits=None,
               bc_tma=None):
    """Same arguments, shapes and results as ``ssd_ref``.

    x, z: (Bsz, L, H, P); dt: (Bsz, L, H); A: (H,); B, C: (Bsz, L, G, N); D: (H,) or (H, P);
    dt_bias: (H,); initial_states: (Bsz, H, P, N).  Returns y (Bsz, L, H, P) in x's dtype and, with
    return_final_states, the final state (Bsz, H, P, N) in fp32.  ``out`` may receive y (tests pre-fill
    it with NaN); ``config`` = (BLOCK_T, BLOCK_P, num_warps, num_stages[, TRANSPOSED]) overrides the choice
    for tuning (TRANSPOSED, default False, picks ``_ssd_fused_t_kernel``); ``splits`` the number of sequence
    segments run in parallel (default: enough to fill the GPU).  ``bc_tma``: whether the transposed kernel
    reads B and C through tensor descriptors where it can (``bc_descriptors``); the default (None) is
    ``descriptors_wanted``: under the interpreter and for calls a CUDA graph will replay, not in eager GPU
    calls.
    """
    from perfmamba.ops.triton import split as split_l
    bsz, seqlen, nheads, headdim = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    # the P (x, z) and N (B, C) axes are read as contiguous vectors; other strides pass through
    x = x if x.stride(-1) == 1 else x.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    C = C if C.stride(-1) == 1 else C.contiguous()
    if z is not None and z.stride(-1) != 1:
        z = z.contiguous()
    A = A.contiguous()
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    y = out if out is not None else torch.empty_like(x)
    final = (torch.empty(bsz, nheads, headdim, n_state, device=x.device, dtype=torch.float32)
             if return_final_states else None)
    if seqlen == 0:
        if final is not None:
            final.copy_(initial_states) if initial_states is not None else final.zero_()
        return (y, final) if return_final_states else y
    block_n, block_n2 = state_tiles(n_state)
    dt_min, dt_max = float(dt_limit[0]), float(dt_limit[1])
    clamp = (dt_min, dt_max) != (0.0, math.inf)
    if D is not None:
        d_strides = (D.stride(0), 0) if D.dim() == 1 else tuple(D.stride())
    else:
        d_strides = (0, 0)
    zz = z if z is not None else x
    bc_unit, bc_strides, _ = stride_unit(B, C)
    x_unit, (x_strides,), _ = stride_unit(x)  # its own unit (see _strides_in_elements)
    if bc_tma is None:
        bc_tma = descriptors_wanted(x.device)
    tma = bc_tma and descriptors_readable(B, C)

    def kernel(cfg, tiles, grid, seg, h_in, h_out, a_sums, states_only):
        block_t, block_p, num_warps, num_stages = cfg[:4]
        transposed = len(cfg) > 4 and cfg[4]
        fn = _ssd_fused_t_kernel if transposed else _ssd_fused_kernel
        descs = None
        # tma_tiles is the transposed kernel's own single tile where it applies, so ``tiles`` stays as it is
        if transposed and tma and tma_tiles(n_state, block_t, B.element_size()) is not None:
            descs = bc_descriptors(B, C, block_t, tiles[0])
        extra = {"BC_TMA": True} if descs is not None else {}
        fn[grid](
            x, dt, A, *(descs or (B, C)), D if D is not None else x, zz, dt_bias if dt_bias is not None else x,
            h_in if h_in is not None else x, y, h_out if h_out is not None else x,
            a_sums if a_sums is not None else x,
            seqlen, nheads, headdim, nheads // groups, dt_min, dt_max, seg // block_t,
            *x_strides, *dt.stride(), *bc_strides[0], *bc_strides[1], *d_strides, *zz.stride(),
            *split_l.seg_strides(h_in, 5), *y.stride(), *split_l.seg_strides(h_out, 5),
            *(a_sums.stride()[:2] if a_sums is not None else (0, 0)),
            N=n_state, BC_UNIT=bc_unit, X_UNIT=x_unit, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_DT_BIAS=dt_bias is not None,
            SOFTPLUS=bool(dt_softplus), CLAMP_DT=clamp, HAS_INIT=h_in is not None,
            STORE_FINAL=h_out is not None, STATES_ONLY=states_only, SPLIT=grid[2] > 1,
            BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=tiles[0], BLOCK_N2=tiles[1],
            PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            **asm_flags(x), **extra,
            num_warps=num_warps, num_stages=num_stages,
        )

    def launch(cfg):
        block_t, block_p = cfg[0], cfg[1]
        tiles = transposed_tiles(n_state, block_t) if len(cfg) > 4 and cfg[4] else (block_n, block_n2)
        # a head's decay over a segment is one number, exp2 of its summed log2 decay (no coefficient)
        split_l.run_segmented(
            functools.partial(kernel, cfg, tiles),
            (bsz * nheads, triton.cdiv(headdim, block_p)), bsz, seqlen, block_t, x.device, splits,
            (nheads, headdim, n_state), init=initial_states, final=final, eager_from=split_l.SSD_EAGER_SPLIT_FROM)

    if config is None:
        # the tile split is part of the shape class: 96 (64 + 32) and 128 (one tile) are different kernels
        key = ("ssd", block_n, block_n2, next_pow2(headdim), next_pow2(seqlen), bsz * nheads, x.dtype, tma,
               z is not None, splits, split_l.whole_when_eager(seqlen, split_l.SSD_EAGER_SPLIT_FROM))
        config = pick_config(key, lambda: _ssd_configs(headdim, n_state, int(chunk_size)), launch)
    launch(config)
    _LAUNCHED[_shape_class(bsz, seqlen, nheads, headdim, n_state, x.dtype)] = tuple(config[:2])
    return (y, final) if return_final_states else y

