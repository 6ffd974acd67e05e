"""Mamba-1 selective scan for channels-last inputs: one time step after another, states in registers.

When u, delta, z (and y) have the channel axis contiguous -- the layout in_proj, the conv and dt_proj
produce, (Bsz, L, D) seen as (Bsz, D, L) -- one time step of a block of channels is one coalesced row.
The recurrence can then be walked step by step with no scan tree at all: each thread owns one channel
and VEC of its states (N_IN threads share a channel when N is large), and a step is, per state,

    a = exp2(delta * A log2 e);  h = a * h + (delta u) B;  y += h C

i.e. one exp2 and four FP32 operations.  B and C of the step are one short vector load per thread
(N-contiguous in the x_proj output; the same address across the warp, so one transaction).  Counted in
the sm_90 SASS for N=16, the loop needs about 15 instructions per state element (the tile-scan kernel
of ``selective_scan.py`` 40 to 55, for its scan tree and shuffles).  It is nevertheless not faster:
each warp's walk waits on memory every iteration, and there are only D * N_IN / 32 walks per batch row
(measured on an H100 in docs/benchmarks/kernels-h100.md; split-L adds walks when the grid is small).

Layout.  Tiles are (STEPS, BLOCK_D, N_IN, VEC) for B and C and (STEPS, BLOCK_D, N_IN, 1) for the
per-channel tensors: the B/C loads are vectorized along VEC (contiguous), and Triton then gives threads
to N_IN before BLOCK_D (both non-contiguous; the later axis goes first) and keeps STEPS inside each
thread, so a channel's N_IN threads are neighbours (the y reduction is a short shuffle) and a step's
slice of a tile is an in-register selection.  The per-channel strides are kept out of Triton's
specialization so those loads get the same thread mapping, with no layout conversion per step.  The
next tile is loaded before the current one is used (software pipelining by hand).
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl

from perfmamba.ops.triton import split as split_l
from perfmamba.ops.triton.selective_scan import (asm_flags, exp2_decay, interpreting, next_pow2, pick_config,
                                                 scan_launch_args, scan_launch_flags, scan_outputs,
                                                 segment_decay_coef, silu_act, softplus_act)


@triton.jit
def _load_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, l, live, s_tl, s_ul, s_bl, s_cl, s_zl, d_mask, n_mask,
               LOAD_C: tl.constexpr, LOAD_Z: tl.constexpr):
    """delta, u, B, C, z of the STEPS steps starting at ``l`` (zeros past the end), in the input dtypes.
    C and z are only read when the pass needs them; otherwise B and delta stand in (never used)."""
    dt = tl.load(t_ptrs + l * s_tl, mask=d_mask & live, other=0.0)
    u = tl.load(u_ptrs + l * s_ul, mask=d_mask & live, other=0.0)
    Bt = tl.load(B_ptrs + l * s_bl, mask=n_mask & live, other=0.0)
    Ct = Bt
    if LOAD_C:
        Ct = tl.load(C_ptrs + l * s_cl, mask=n_mask & live, other=0.0)
    zt = dt
    if LOAD_Z:
        zt = tl.load(z_ptrs + l * s_zl, mask=d_mask & live, other=0.0)
    return dt, u, Bt, Ct, zt


# The channel strides are kept out of Triton's specialization (a stride of 1 would be seen as
# contiguity along BLOCK_D, and the per-channel loads would get a layout of their own, different from
# the B/C loads', with a shared-memory conversion every step).
@triton.jit(do_not_specialize=["s_ud", "s_td", "s_zd", "s_yd", "s_hd", "s_id", "s_sd"])
def _scan_steps_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, Dp_ptr, z_ptr, dtb_ptr, y_ptr, hlast_ptr, h0_ptr, dts_ptr,
    L, DG, G, SEG,
    s_ub, s_ud, s_ul,  # u (Bsz, D, L), s_ud == 1 for speed
    s_tb, s_td, s_tl,  # delta
    s_ad, s_an,  # A (D, N)
    s_bb, s_bg, s_bn, s_bl,  # B (Bsz, G, N, L), s_bn == 1 for speed
    s_cb, s_cg, s_cn, s_cl,  # C
    s_zb, s_zd, s_zl,  # z
    s_yb, s_yd, s_yl,  # y
    s_hb, s_hs, s_hd, s_hn,  # state leaving each segment (Bsz, S, D, N)
    s_ib, s_is, s_id, s_in,  # state entering each segment
    s_sb, s_ss, s_sd,  # sum of delta over each segment (Bsz, S, D)
    N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_STATE: tl.constexpr, HAS_INIT: tl.constexpr, STATES_ONLY: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_D: tl.constexpr, N_IN: tl.constexpr, VEC: tl.constexpr, STEPS: tl.constexpr,
    ASM: tl.constexpr, FAST_ACT: tl.constexpr,
):
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    seg = tl.program_id(2)
    if SPLIT:  # SEG counts steps here (a multiple of STEPS)
        l_begin = seg * SEG
        l_end = tl.minimum(l_begin + SEG, L)
    else:
        l_begin = 0
        l_end = L
    b = pid_bg // G
    g = pid_bg % G
    # Tiles are (STEPS, BLOCK_D, N_IN, VEC) for B and C and (STEPS, BLOCK_D, N_IN, 1) for the
    # per-channel tensors; the state is one step's slice, (BLOCK_D, N_IN, VEC).
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d4 = offs_d[None, :, None, None]
    chan4 = g * DG + d4
    lane4 = tl.arange(0, N_IN)[None, None, :, None]
    n4 = lane4 * VEC + tl.arange(0, VEC)[None, None, None, :]  # (1, 1, N_IN, VEC)
    step4 = tl.arange(0, STEPS)[:, None, None, None]
    PC: tl.constexpr = (STEPS, BLOCK_D, N_IN, 1)
    ST: tl.constexpr = (STEPS, BLOCK_D, N_IN, VEC)
    d_mask = tl.broadcast_to(d4 < DG, PC)
    chan = tl.broadcast_to(chan4, PC)
    st_mask = (d4 < DG) & (n4 < N)  # (1, BLOCK_D, N_IN, VEC)

    A2 = tl.sum(tl.load(A_ptr + chan4 * s_ad + n4 * s_an, mask=st_mask, other=0.0), axis=0) * 1.4426950408889634
    if HAS_DT_BIAS:
        dt_bias = tl.load(dtb_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(Dp_ptr + chan, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_INIT:
        h = tl.sum(tl.load(h0_ptr + b * s_ib + seg * s_is + chan4 * s_id + n4 * s_in, mask=st_mask, other=0.0),
                   axis=0)
    else:
        h = tl.zeros((BLOCK_D, N_IN, VEC), dtype=tl.float32)
    if STATES_ONLY:
        dt_sum = tl.zeros(PC, dtype=tl.float32)
    u_ptrs = u_ptr + b * s_ub + chan * s_ud + step4 * s_ul
    t_ptrs = dt_ptr + b * s_tb + chan * s_td + step4 * s_tl
    y_ptrs = y_ptr + b * s_yb + chan * s_yd + step4 * s_yl
    z_ptrs = z_ptr + b * s_zb + chan * s_zd + step4 * s_zl
    # B and C pointers at full shape: the same address for every channel (one transaction per warp)
    B_ptrs = tl.broadcast_to(B_ptr + b * s_bb + g * s_bg + n4 * s_bn + step4 * s_bl, ST)
    C_ptrs = tl.broadcast_to(C_ptr + b * s_cb + g * s_cg + n4 * s_cn + step4 * s_cl, ST)
    n_mask = tl.broadcast_to(n4 < N, ST)

    # software pipelining by hand: the next tile's loads are issued before this tile's y is stored (the
    # compiler may not move a load above a store that could alias it)
    dt_n, u_n, B_n, C_n, z_n = _load_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, l_begin, l_begin + step4 < l_end,
                                          s_tl, s_ul, s_bl, s_cl, s_zl, d_mask, n_mask,
                                          not STATES_ONLY, HAS_Z and not STATES_ONLY)
    for l0 in range(l_begin, l_end, STEPS):
        live = (l0 + step4) < l_end
        dt = dt_n.to(tl.float32)
        u = u_n.to(tl.float32)
        Bt = B_n.to(tl.float32)
        Ct = C_n.to(tl.float32)
        zt = z_n.to(tl.float32)
        nxt = l0 + STEPS
        dt_n, u_n, B_n, C_n, z_n = _load_tile(t_ptrs, u_ptrs, B_ptrs, C_ptrs, z_ptrs, nxt, nxt + step4 < l_end,
                                              s_tl, s_ul, s_bl, s_cl, s_zl, d_mask, n_mask,
                                              not STATES_ONLY, HAS_Z and not STATES_ONLY)

        if HAS_DT_BIAS:
            dt = dt + dt_bias
        if SOFTPLUS:
            dt = softplus_act(dt, FAST_ACT)
        dt = tl.where(live, dt, 0.0)  # steps past the end leave h alone (a = 1, b = 0)
        dtu = dt * u
        if STATES_ONLY:
            dt_sum += dt
        else:
            yt = tl.zeros(PC, dtype=tl.float32)
        for i in tl.static_range(STEPS):
            # step i's slice of an in-thread axis: the selects fold away once unrolled (-0.0 is the
            # identity of the sum, so no add survives either)
            sel = step4 == i
            dt_i = tl.sum(tl.where(sel, dt, -0.0), axis=0)  # (BLOCK_D, N_IN, 1)
            h = exp2_decay(dt_i * A2, ASM) * h + tl.sum(tl.where(sel, dtu, -0.0), axis=0) * tl.sum(
                tl.where(sel, Bt, -0.0), axis=0)
            if not STATES_ONLY:
                y_i = tl.sum(tl.sum(h * tl.sum(tl.where(sel, Ct, -0.0), axis=0), axis=2, keep_dims=True), axis=1,
                             keep_dims=True)  # (BLOCK_D, 1, 1)
                yt = tl.where(sel, tl.broadcast_to(y_i, (BLOCK_D, N_IN, 1))[None], yt)
        if not STATES_ONLY:
            if HAS_D:
                yt += u * d_skip
            if HAS_Z:
                yt = yt * silu_act(zt, FAST_ACT)
            # the N_IN threads of a channel hold the same y; only the first stores it
            tl.store(y_ptrs + l0 * s_yl, yt.to(y_ptr.dtype.element_ty), mask=d_mask & live & (lane4 == 0))

    if STORE_STATE:
        tl.store(hlast_ptr + b * s_hb + seg * s_hs + chan4 * s_hd + n4 * s_hn, h[None], mask=st_mask)
    if STATES_ONLY:
        dt_tot = tl.broadcast_to(tl.sum(dt_sum, axis=0, keep_dims=True), PC)
        tl.store(dts_ptr + b * s_sb + seg * s_ss + chan * s_sd, dt_tot, mask=d_mask & (lane4 == 0) & (step4 == 0))


def steps_configs(n_state: int, dtype_bytes: int):
    """Candidate (BLOCK_D, N_IN, VEC, STEPS, num_warps) for the step kernel, the default first.

    VEC states per thread are one B/C vector load (16 bytes); N_IN = BLOCK_N / VEC threads share a
    channel.  More threads per channel cost a shuffle level per step but give more warps to hide the
    latency of the step's loads.
    """
    block_n = max(1, 1 << (max(1, n_state) - 1).bit_length())
    if interpreting():
        return [(16, 1, block_n, 4, 1)]
    cands = []
    # measured on an H100 (bf16, D=1536, N=16): 1 to 2 steps per iteration; 4 ran 2x slower
    for nw, steps in ((1, 1), (4, 2), (2, 2), (1, 2)):
        vec = max(1, min(block_n, 16 // dtype_bytes))
        n_in = block_n // vec
        if n_in > 32:
            continue
        cfg = ((32 // n_in) * nw, n_in, vec, steps, nw)
        if cfg not in cands:
            cands.append(cfg)
    return cands


def selective_scan_steps(u, delta, A, Bg, Cg, D, z, delta_bias, delta_softplus, return_last_state, out, splits,
                         config=None):
    """``selective_scan_triton`` for channels-last u / delta / z; B, C: (Bsz, G, N, L), any strides.

    y is returned channels-last too ((Bsz, D, L) with the channel stride 1), the layout out_proj reads.
    ``config`` overrides the (BLOCK_D, N_IN, VEC, STEPS, num_warps) choice.
    """
    bsz, dim, seqlen = u.shape
    n_state = A.shape[1]
    groups = Bg.shape[1]
    dg = dim // groups
    y, hlast = scan_outputs(u, n_state, out, return_last_state, channels_last=True)
    if seqlen == 0:
        return (y, hlast) if return_last_state else y
    # a group stride of 0 when there is one group: Triton then knows the B/C row is 16-byte aligned
    bstr = (Bg.stride(0), Bg.stride(1) if groups > 1 else 0, Bg.stride(2), Bg.stride(3))
    cstr = (Cg.stride(0), Cg.stride(1) if groups > 1 else 0, Cg.stride(2), Cg.stride(3))
    strides = (u.stride(), delta.stride(), bstr, cstr, (z if z is not None else u).stride(), y.stride())

    def kernel(cfg, grid, seg, h_in, h_out, dt_sums, states_only):
        block_d, n_in, vec, steps, num_warps = cfg
        _scan_steps_kernel[grid](
            *scan_launch_args(u, delta, A, Bg, Cg, D, z, delta_bias, y, h_in, h_out, dt_sums, seg, strides),
            **scan_launch_flags(n_state, D, z, delta_bias, delta_softplus, h_in, h_out, states_only, grid),
            BLOCK_D=block_d, N_IN=n_in, VEC=vec, STEPS=steps, **asm_flags(u),
            num_warps=num_warps,
        )

    def launch(cfg):
        split_l.run_segmented(
            functools.partial(kernel, cfg), (bsz * groups, triton.cdiv(dg, cfg[0])), bsz, seqlen, cfg[3], u.device,
            splits, (dim, n_state), per_sm=16, warps_per_program=cfg[4], final=hlast,
            make_coef=lambda: segment_decay_coef(A))

    if config is None:
        key = ("steps", n_state, next_pow2(dg), next_pow2(seqlen), bsz * groups, u.dtype, Bg.dtype, z is not None,
               splits)
        config = pick_config(key, lambda: steps_configs(n_state, Bg.element_size()), launch)
    launch(config)
    return (y, hlast) if return_last_state else y
