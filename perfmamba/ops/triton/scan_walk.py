"""Mamba-1 selective scan on channels-first inputs, walked step by step with the whole tile in registers.

The tile kernel of ``selective_scan.py`` solves each tile of BLOCK_L steps with ``tl.associative_scan``;
with more steps per tile than one 16-byte vector holds, Triton puts some lanes on L and the scan needs a
shuffle tree (40 to 55 SASS instructions per state element on sm_90).  This kernel keeps every step of the
tile inside one thread instead, and walks them one after another:

    a = exp2(delta * A log2 e);  h = a * h + (delta u) B;  y_t = sum_n h C

Layout.  Tiles are five-dimensional, (LO, LI, N_OUT, BLOCK_D, N_IN) with step l = lo * LI + li: LI steps
are one 16-byte vector (contiguous along L in the (Bsz, D, L) / (Bsz, G, N, L) inputs), and the separate LO
axis keeps Triton's default layout from giving lanes to L (it fills lanes from the contiguous axis, then
from the last axes): lanes go to N_IN then BLOCK_D, warps to BLOCK_D, and LO, LI and N_OUT stay inside
each thread.  So a step's slice of a tile is a choice of registers (the selects fold away once the step
loop is unrolled), the recurrence needs no shuffle, and the y reduction over N is N_OUT in-register adds
plus log2(N_IN) shuffle levels.  The per-channel tiles (u, delta, z) are loaded at the same full shape,
broadcast over N_IN (the same address across those lanes), so they get the same thread mapping as B and C
and no layout conversion.

Used as extra autotuning candidates beside the tile kernel's (``selective_scan.py``): the faster one wins
per shape class.  Same arguments and split-L support as the tile kernel (``scan_launch_args``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from perfmamba.ops.triton.scan_steps import _fast_exp2, _silu, _softplus


@triton.jit
def _load_walk_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, l0, l_end, step5, s_tl, s_ul, s_bl, s_cl, s_zl, d_mask,
                    n_mask, LOAD_C: tl.constexpr, LOAD_Z: tl.constexpr, ACTIVE: tl.constexpr):
    """delta, u, B, C, z of the tile starting at ``l0`` in the loaded dtypes (zeros past ``l_end``); C and z
    only when the pass reads them (delta and B stand in otherwise, never used).  Not ACTIVE: no loads."""
    live = (l0 + step5) < l_end
    if ACTIVE:
        dt = tl.load(t_ptrs + l0 * s_tl, mask=d_mask & live, other=0.0)
        u = tl.load(u_ptrs + l0 * s_ul, mask=d_mask & live, other=0.0)
        Bt = tl.load(B_ptrs + l0 * s_bl, mask=n_mask & live, other=0.0)
        Ct = Bt
        if LOAD_C:
            Ct = tl.load(C_ptrs + l0 * s_cl, mask=n_mask & live, other=0.0)
        zt = dt
        if LOAD_Z:
            zt = tl.load(z_ptrs + l0 * s_zl, mask=d_mask & live, other=0.0)
    else:
        dt = tl.zeros(d_mask.shape, dtype=t_ptrs.dtype.element_ty)
        u = dt
        Bt = tl.zeros(n_mask.shape, dtype=B_ptrs.dtype.element_ty)
        Ct = Bt
        zt = dt
    return dt, u, Bt, Ct, zt


@triton.jit
def _scan_walk_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, Dp_ptr, z_ptr, dtb_ptr, y_ptr, hlast_ptr, h0_ptr, dts_ptr,
    L, DG, G, SEG,
    s_ub, s_ud, s_ul,  # u (Bsz, D, L), s_ul == 1 for speed
    s_tb, s_td, s_tl,  # delta
    s_ad, s_an,  # A (D, N)
    s_bb, s_bg, s_bn, s_bl,  # B (Bsz, G, N, L), s_bl == 1 for speed
    s_cb, s_cg, s_cn, s_cl,  # C
    s_zb, s_zd, s_zl,  # z
    s_yb, s_yd, s_yl,  # y
    s_hb, s_hs, s_hd, s_hn,  # state leaving each segment (Bsz, S, D, N)
    s_ib, s_is, s_id, s_in,  # state entering each segment
    s_sb, s_ss, s_sd,  # sum of delta over each segment (Bsz, S, D)
    N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_STATE: tl.constexpr, HAS_INIT: tl.constexpr, STATES_ONLY: tl.constexpr, SPLIT: tl.constexpr,
    LO: tl.constexpr, LI: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, N_IN: tl.constexpr,
    PREFETCH: tl.constexpr, FAST_EXP: tl.constexpr, FAST_ACT: tl.constexpr,
):
    BLOCK_L: tl.constexpr = LO * LI
    N_OUT: tl.constexpr = BLOCK_N // N_IN
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    seg = tl.program_id(2)
    if SPLIT:  # SEG counts whole tiles; without splits the bounds stay plain (fewer registers)
        l_begin = seg * SEG * BLOCK_L
        l_end = tl.minimum(l_begin + SEG * BLOCK_L, L)
    else:
        l_begin = 0
        l_end = L
    b = pid_bg // G
    g = pid_bg % G
    # index tensors of the five tile axes (LO, LI, N_OUT, BLOCK_D, N_IN)
    lo5 = tl.arange(0, LO)[:, None, None, None, None]
    li5 = tl.arange(0, LI)[None, :, None, None, None]
    step5 = lo5 * LI + li5  # (LO, LI, 1, 1, 1) step inside the tile
    n5 = tl.arange(0, N_OUT)[None, None, :, None, None] * N_IN + tl.arange(0, N_IN)[None, None, None, None, :]
    lane5 = tl.arange(0, N_IN)[None, None, None, None, :]
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d5 = offs_d[None, None, None, :, None]
    chan5 = g * DG + d5
    PC: tl.constexpr = (LO, LI, 1, BLOCK_D, N_IN)  # per-channel tiles, broadcast over the N_IN lanes
    ST: tl.constexpr = (LO, LI, N_OUT, BLOCK_D, N_IN)  # B / C tiles, broadcast over BLOCK_D
    d_mask = tl.broadcast_to(d5 < DG, PC)
    chan = tl.broadcast_to(chan5, PC)
    n_mask = tl.broadcast_to(n5 < N, ST)
    st_mask = (d5 < DG) & (n5 < N)  # (1, 1, N_OUT, BLOCK_D, N_IN)

    # per-channel constants and the state, as one step's slice (N_OUT, BLOCK_D, N_IN) of the tile layout
    A2 = tl.sum(tl.sum(tl.load(A_ptr + chan5 * s_ad + n5 * s_an, mask=st_mask, other=0.0), axis=0), axis=0)
    A2 = A2 * 1.4426950408889634
    if HAS_DT_BIAS:
        dt_bias = tl.load(dtb_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(Dp_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_INIT:
        h = tl.sum(tl.sum(tl.load(h0_ptr + b * s_ib + seg * s_is + chan5 * s_id + n5 * s_in, mask=st_mask,
                                  other=0.0), axis=0), axis=0)
    else:
        h = tl.zeros((N_OUT, BLOCK_D, N_IN), dtype=tl.float32)
    if STATES_ONLY:
        dt_sum = tl.zeros(PC, dtype=tl.float32)
    u_ptrs = u_ptr + b * s_ub + chan * s_ud + step5 * s_ul
    t_ptrs = dt_ptr + b * s_tb + chan * s_td + step5 * s_tl
    y_ptrs = y_ptr + b * s_yb + chan * s_yd + step5 * s_yl
    z_ptrs = z_ptr + b * s_zb + chan * s_zd + step5 * s_zl
    # B and C at full shape: the same address for every channel of a warp (one transaction)
    B_ptrs = tl.broadcast_to(B_ptr + b * s_bb + g * s_bg + n5 * s_bn + step5 * s_bl, ST)
    C_ptrs = tl.broadcast_to(C_ptr + b * s_cb + g * s_cg + n5 * s_cn + step5 * s_cl, ST)

    # the next tile's loads are issued before this tile is computed (software pipelining in registers, in
    # the loaded dtype; Triton's own pipelining through shared memory measured slower in the sm_90 SASS:
    # a barrier and shared-memory loads per step)
    nxt = _load_walk_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, l_begin, l_end, step5, s_tl, s_ul, s_bl, s_cl,
                          s_zl, d_mask, n_mask, not STATES_ONLY, HAS_Z and not STATES_ONLY, PREFETCH)
    for l0 in range(l_begin, l_end, BLOCK_L):
        live = (l0 + step5) < l_end  # (LO, LI, 1, 1, 1)
        pc_mask = d_mask & live
        if PREFETCH:
            dt_r, u_r, B_r, C_r, z_r = nxt
            nxt = _load_walk_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, l0 + BLOCK_L, l_end, step5, s_tl, s_ul,
                                  s_bl, s_cl, s_zl, d_mask, n_mask, not STATES_ONLY, HAS_Z and not STATES_ONLY, True)
        else:
            dt_r, u_r, B_r, C_r, z_r = _load_walk_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, l0, l_end, step5, s_tl,
                                                       s_ul, s_bl, s_cl, s_zl, d_mask, n_mask, not STATES_ONLY,
                                                       HAS_Z and not STATES_ONLY, True)
        dt = dt_r.to(tl.float32)
        u = u_r.to(tl.float32)
        Bt = B_r.to(tl.float32)
        if HAS_DT_BIAS:
            dt = dt + dt_bias
        if SOFTPLUS:
            dt = _softplus(dt, FAST_ACT)
        dt = tl.where(live, dt, 0.0)  # steps past the end leave h alone (a = 1, b = 0)
        dtu = dt * u
        if STATES_ONLY:
            dt_sum += dt
        else:
            Ct = C_r.to(tl.float32)
            yt = tl.zeros(PC, dtype=tl.float32)
        for i in tl.static_range(BLOCK_L):
            # step i's slice of the in-thread axes: the selects fold away once unrolled (-0.0 is the
            # identity of the sum, so no add survives either)
            sel = step5 == i
            dt_i = tl.sum(tl.sum(tl.where(sel, dt, -0.0), axis=0), axis=0)  # (1, BLOCK_D, N_IN)
            dtu_i = tl.sum(tl.sum(tl.where(sel, dtu, -0.0), axis=0), axis=0)
            B_i = tl.sum(tl.sum(tl.where(sel, Bt, -0.0), axis=0), axis=0)  # (N_OUT, BLOCK_D, N_IN)
            h = _fast_exp2(dt_i * A2, FAST_EXP) * h + dtu_i * B_i
            if not STATES_ONLY:
                C_i = tl.sum(tl.sum(tl.where(sel, Ct, -0.0), axis=0), axis=0)
                # N_OUT in registers, then N_IN across lanes: every lane of the channel holds y
                y_i = tl.sum(tl.sum(h * C_i, axis=0, keep_dims=True), axis=2, keep_dims=True)  # (1, BLOCK_D, 1)
                yt = tl.where(sel, y_i[None, None], yt)
        if not STATES_ONLY:
            if HAS_D:
                yt += u * d_skip
            if HAS_Z:
                yt = yt * _silu(z_r.to(tl.float32), FAST_ACT)
            # the N_IN lanes of a channel hold the same y; only the first stores it
            tl.store(y_ptrs + l0 * s_yl, yt.to(y_ptr.dtype.element_ty), mask=pc_mask & (lane5 == 0))

    if STORE_STATE:
        tl.store(hlast_ptr + b * s_hb + seg * s_hs + chan5 * s_hd + n5 * s_hn, h[None, None], mask=st_mask)
    if STATES_ONLY:
        dt_tot = tl.broadcast_to(tl.sum(tl.sum(dt_sum, axis=0, keep_dims=True), axis=1, keep_dims=True), PC)
        tl.store(dts_ptr + b * s_sb + seg * s_ss + chan * s_sd, dt_tot,
                 mask=d_mask & (lane5 == 0) & (step5 == 0))


def walk_configs(n_state: int, dtype_bytes: int, interpret: bool):
    """Candidate ("walk", BLOCK_L, N_IN, num_warps, prefetch) for the walk kernel (prefetch 1: the next
    tile is loaded while this one is computed; 0: not).

    N_IN lanes share a channel (N_OUT = BLOCK_N / N_IN states each): fewer lanes mean a shorter y
    reduction but fewer channels' worth of warps to hide latency.  Each thread keeps BLOCK_L * N_OUT
    values of B and of C, which bounds BLOCK_L.
    """
    block_n = max(2, 1 << (max(1, n_state) - 1).bit_length())
    if interpret:
        return [("walk", 4, min(2, block_n), 1, 1)]
    cands = []
    # ordered by the sm_90 SASS per state element (compiled offline with triton 3.9 for N=16, bf16): about
    # 17 instructions at (8, 2, 4, 0), 20 at (16, 4, 4, 0), against 28 for the tile kernel's first candidate
    for n_in, block_l, nw, prefetch in ((2, 8, 4, 0), (4, 16, 4, 0), (4, 8, 4, 1), (8, 16, 4, 1), (2, 8, 2, 0)):
        n_in = min(n_in, block_n, 32)
        if (block_n // n_in) * block_l > 128:
            continue
        cfg = ("walk", block_l, n_in, nw, prefetch)
        if cfg not in cands:
            cands.append(cfg)
    return cands


def launch_walk(cfg, grid, dtype_bytes: int, interpret: bool, block_n: int, args: tuple, flags: dict):
    """One pass of the walk kernel with ``cfg`` = ("walk", BLOCK_L, N_IN, num_warps, prefetch)."""
    _, block_l, n_in, num_warps, prefetch = cfg
    li = min(block_l, max(1, 16 // dtype_bytes))
    _scan_walk_kernel[grid](
        *args, **flags, LO=block_l // li, LI=li, BLOCK_N=block_n, BLOCK_D=(32 // n_in) * num_warps, N_IN=n_in,
        PREFETCH=bool(prefetch), FAST_EXP=not interpret, FAST_ACT=not interpret and dtype_bytes < 4,
        num_warps=num_warps,
    )


def walk_block_d(cfg) -> int:
    """Channels per program of a walk configuration."""
    return (32 // cfg[2]) * cfg[3]

