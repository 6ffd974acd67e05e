"""One SSM decode step (either family) as a single Triton kernel; the state is updated in place.

Both families are the same computation on a state viewed as (Bsz, heads, P, N):

    h = exp(dt A) h + (dt x) B^T;   y = h C + D x;   y *= SiLU(z)

Mamba-2 has H heads of P channels with one dt and one A per head; Mamba-1 is viewed as G "heads" (its
B/C groups) of D/G channels, each channel with its own dt and its own row of A.  The launcher only
builds strides for that view (0 where a quantity is shared), so one kernel serves both.  One program
handles a block of BLOCK_P channels of one (batch row, head) with all N states: the state tile is read
once and written once, which is the whole cost of a decode step.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.alignment import unit_of
from perfmamba.ops.triton.selective_scan import next_pow2, softplus


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, y_ptr, w_ptr,
    H, P, HEADS_PER_GROUP, dt_min, dt_max, R,
    s_sb, s_sh, s_sp, s_sn,  # state (Bsz, H, P, N)
    s_xb, s_xh, s_xp,  # x (Bsz, H, P)
    s_tb, s_th, s_tp,  # dt (Bsz, H, P); s_tp = 0 when shared by a head
    s_ah, s_ap, s_an,  # A (H, P, N); zeros where shared
    s_bb, s_bg, s_bn,  # B (Bsz, G, N)
    s_cb, s_cg, s_cn,  # C (Bsz, G, N)
    s_dh, s_dp,  # D (H, P)
    s_zb, s_zh, s_zp,  # z (Bsz, H, P)
    s_eh, s_ep,  # dt_bias (H, P)
    s_yb, s_yh, s_yp,  # y (Bsz, H, P)
    s_wh, s_wp, s_wr,  # dt_proj weight (H, P, R) when DT_PROJ; dt is then (Bsz, R) with strides (s_tb, s_tp)
    NQ,  # PARTIALS: dt_ptr holds x_proj's partial sums (NQ, Bsz, R + 2N), strides (s_th, s_tb, 1)
    N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CLAMP_DT: tl.constexpr, DT_PROJ: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, PARTIALS: tl.constexpr, BLOCK_Q: tl.constexpr,
    S_UNIT: tl.constexpr = 1,  # the state's batch, head and channel strides arrive divided by it (see launcher)
):
    s_sb, s_sh, s_sp = s_sb * S_UNIT, s_sh * S_UNIT, s_sp * S_UNIT
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    head = pid_bh % H
    grp = head // HEADS_PER_GROUP
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    offs_n = tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    pn_mask = p_mask[:, None] & n_mask[None, :]  # (BLOCK_P, BLOCK_N)

    s_tile = state_ptr + b * s_sb + head * s_sh + offs_p[:, None] * s_sp + offs_n[None, :] * s_sn
    h = tl.load(s_tile, mask=pn_mask, other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_N)
    x = tl.load(x_ptr + b * s_xb + head * s_xh + offs_p * s_xp, mask=p_mask, other=0.0).to(tl.float32)
    if PARTIALS:  # x_proj's output as the sum of its per-block partials, rounded as F.linear returns it
        offs_q = tl.arange(0, BLOCK_Q)
        q_rows = dt_ptr + b * s_tb + offs_q[:, None] * s_th  # (BLOCK_Q, 1)
        q_mask = (offs_q < NQ)[:, None]
    if DT_PROJ:  # Mamba-1's dt_proj GEMV for this block of channels, rounded to dt's dtype as F.linear is
        offs_r = tl.arange(0, BLOCK_R)
        r_mask = offs_r < R
        w = tl.load(w_ptr + head * s_wh + offs_p[:, None] * s_wp + offs_r[None, :] * s_wr,
                    mask=p_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
        if PARTIALS:
            dt_low = tl.sum(tl.load(q_rows + offs_r[None, :], mask=q_mask & r_mask[None, :], other=0.0), axis=0)
            dt_low = dt_low.to(x_ptr.dtype.element_ty).to(tl.float32)
            dt = tl.sum(w * dt_low[None, :], axis=1).to(x_ptr.dtype.element_ty).to(tl.float32)
        else:
            dt_low = tl.load(dt_ptr + b * s_tb + offs_r * s_tp, mask=r_mask, other=0.0).to(tl.float32)
            dt = tl.sum(w * dt_low[None, :], axis=1).to(dt_ptr.dtype.element_ty).to(tl.float32)
    else:
        dt = tl.load(dt_ptr + b * s_tb + head * s_th + offs_p * s_tp, mask=p_mask, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dtb_ptr + head * s_eh + offs_p * s_ep, mask=p_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    if CLAMP_DT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    A = tl.load(A_ptr + head * s_ah + offs_p[:, None] * s_ap + offs_n[None, :] * s_an, mask=pn_mask,
                other=0.0).to(tl.float32)
    if PARTIALS:  # one group: B at columns R .. R+N-1, C after it
        qn_mask = q_mask & n_mask[None, :]
        Bv = tl.sum(tl.load(q_rows + R + offs_n[None, :], mask=qn_mask, other=0.0), axis=0)
        Cv = tl.sum(tl.load(q_rows + R + N + offs_n[None, :], mask=qn_mask, other=0.0), axis=0)
        Bv = Bv.to(x_ptr.dtype.element_ty).to(tl.float32)
        Cv = Cv.to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        Bv = tl.load(B_ptr + b * s_bb + grp * s_bg + offs_n * s_bn, mask=n_mask, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + b * s_cb + grp * s_cg + offs_n * s_cn, mask=n_mask, other=0.0).to(tl.float32)

    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_tile, h.to(state_ptr.dtype.element_ty), mask=pn_mask)
    y = tl.sum(h * Cv[None, :], axis=1)  # (BLOCK_P,)
    if HAS_D:
        y += x * tl.load(D_ptr + head * s_dh + offs_p * s_dp, mask=p_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + head * s_zh + offs_p * s_zp, mask=p_mask, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_yb + head * s_yh + offs_p * s_yp, y.to(y_ptr.dtype.element_ty), mask=p_mask)


M1_BLOCK_P = 32


def state_stride_unit(strides) -> tuple[int, list]:
    """(unit, strides): the state's (batch, head, channel) strides divided by their largest common power-of-two
    factor (unit 1 where that is 16 or more: Triton then sees the alignment itself), the state axis's stride
    as it is.  The state is the whole traffic of a decode step, and Triton
    loads a row vector by vector only when it can prove the row start aligned, which it knows of an integer
    argument only as "a multiple of 16": states of 56 (a pruned Mamba-2) or 14 (a pruned Mamba-1) have rows
    that many elements apart, which it would load element by element.  The kernel multiplies the strides
    back by the constant unit (as ``alignment.stride_unit`` does for the scans)."""
    leading = list(strides[:-1])
    unit = unit_of(sizes=tuple(leading))
    return unit, [st // unit for st in leading] + [strides[-1]]


def _split(t: torch.Tensor, dim: int, per: int):
    """Strides of ``t`` with axis ``dim`` (of length heads*per) seen as two axes (heads, per)."""
    st = list(t.stride())
    return st[:dim] + [st[dim] * per, st[dim]] + st[dim + 1:]


def state_block(n_state: int) -> int:
    """BLOCK_N of a decode step: the state axis padded to a power of two (at least 2)."""
    return max(2, next_pow2(n_state))


def block_config(per: int, block_n: int, mamba1: bool) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of a decode step whose state tile is ``block_n`` (``state_block``) wide.

    Mamba-2: about 512 state elements (4 channels x 128 states) per one-warp program.  On an H200 (bf16,
    2026-12-02, ``tuning-h200/ssu-rule.txt``) that took 0.83-0.97x the per-call time of the former rule
    (~2K elements with 4 warps) for 16 to 128 states at batch 1, 16 and 64, except 64 states at batch 16
    (1.02x); mamba2-130m's graph decode took 0.95x the time a token at batch 64 (1.19 against 1.26 ms,
    medians of three interleaved rounds) and 0.96x at 16 (0.696 against 0.722), batch 1 within the noise.
    Mamba-1 keeps ~2K elements with 4 warps and at most M1_BLOCK_P channels a program (its heads are whole
    groups of D/G channels, so 2K elements would leave batch 1 with a dozen programs): one warp made
    mamba-130m's decode at batch 1 (the fused step, ``mamba1_step``) 1.13x slower in the same run."""
    if not mamba1:
        return max(1, min(next_pow2(per), 512 // block_n)), 1
    return min(next_pow2(per), max(4, 2048 // block_n), M1_BLOCK_P), 4


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  dt_limit=(0.0, float("inf")), out=None, dt_proj_weight=None, partials=None,
                                  config=None):
    """Same arguments, shapes and results as ``selective_state_update_ref``; ``state`` is updated in place.
    With ``dt_proj_weight`` (Mamba-1, (D, R)), dt is (Bsz, R) and is projected inside the kernel.
    ``partials`` = (sums, R, N) (Mamba-1 with dt_proj_weight; ``mamba1_step.py``): dt, B and C are not
    given but summed from x_proj's partial sums (n_blocks, Bsz, R + 2N) fp32, one group.

    Mamba-1: state (Bsz, D, N); x, dt, z (Bsz, D); A (D, N); B, C (Bsz, N) or (Bsz, G, N); D, dt_bias (D,).
    Mamba-2: state (Bsz, H, P, N); x, z (Bsz, H, P); dt (Bsz, H); A, D, dt_bias (H,) (D also (H, P));
    B, C (Bsz, G, N).  ``config`` = (BLOCK_P, num_warps) overrides ``block_config`` (for tuning).
    """
    y = out if out is not None else torch.empty_like(x)
    if partials is not None:  # B, C, dt stand in as views of the sums (one group); only their strides are used
        sums, rank_p, n_p = partials
        dt, B, C = sums[0, :, :rank_p], sums[0, :, None, rank_p:rank_p + n_p], sums[0, :, None, rank_p + n_p:]
    if state.dim() == 3:  # Mamba-1: G heads of D/G channels
        bsz, dim, n_state = state.shape
        Bg = B if B.dim() == 3 else B.unsqueeze(1)  # (Bsz, G, N)
        Cg = C if C.dim() == 3 else C.unsqueeze(1)
        heads = Bg.shape[1]
        per = dim // heads
        st_s = _split(state, 1, per)
        x_s, y_s = _split(x, 1, per), _split(y, 1, per)
        # with the dt_proj weight, dt is (Bsz, R): its batch and rank strides stand in (s_tb, -, s_tp)
        t_s = _split(dt, 1, per) if dt_proj_weight is None else [dt.stride(0), 0, dt.stride(1)]
        if partials is not None:  # (batch, block, column) strides of the sums
            t_s = [sums.stride(1), sums.stride(0), 1]
        a_s = _split(A, 0, per)
        z_s = _split(z, 1, per) if z is not None else (0, 0, 0)
        d_s = _split(D, 0, per) if D is not None else (0, 0)
        e_s = _split(dt_bias, 0, per) if dt_bias is not None else (0, 0)
        clamp = False  # the Mamba-1 reference step takes no dt_limit
    else:  # Mamba-2
        bsz, heads, per, n_state = state.shape
        Bg, Cg = B, C
        st_s = list(state.stride())
        x_s, y_s = list(x.stride()), list(y.stride())
        t_s = [dt.stride(0), dt.stride(1), 0]
        a_s = [A.stride(0), 0, 0]
        z_s = list(z.stride()) if z is not None else (0, 0, 0)
        d_s = ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride())) if D is not None else (0, 0)
        e_s = (dt_bias.stride(0), 0) if dt_bias is not None else (0, 0)
        clamp = (float(dt_limit[0]), float(dt_limit[1])) != (0.0, math.inf)
    groups = Bg.shape[1]
    w = dt_proj_weight
    w_s = _split(w, 0, per) if w is not None else (0, 0, 0)
    rank = w.shape[1] if w is not None else 1
    block_n = state_block(n_state)
    block_p, num_warps = config if config is not None else block_config(per, block_n, state.dim() == 3)
    grid = (bsz * heads, triton.cdiv(per, block_p))
    s_unit, st_s = state_stride_unit(st_s)
    _state_update_kernel[grid](
        state, x, dt, A, Bg, Cg, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, y, w if w is not None else x,
        heads, per, heads // groups, float(dt_limit[0]), float(dt_limit[1]), rank,
        *st_s, *x_s, *t_s, *a_s, *Bg.stride(), *Cg.stride(), *d_s, *z_s, *e_s, *y_s, *w_s,
        partials[0].shape[0] if partials is not None else 1,
        N=n_state, HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), CLAMP_DT=clamp, DT_PROJ=w is not None, BLOCK_P=block_p, BLOCK_N=block_n,
        BLOCK_R=max(2, next_pow2(rank)), PARTIALS=partials is not None,
        BLOCK_Q=max(2, next_pow2(partials[0].shape[0])) if partials is not None else 2, S_UNIT=s_unit,
        num_warps=num_warps,
    )
    return y
