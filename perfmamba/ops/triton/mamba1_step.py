"""Mamba-1's decode step between in_proj and out_proj in two Triton kernels instead of three.

Unfused, a token's mixer runs the conv update, x_proj (cuBLAS), the state update (with dt_proj inside)
and their launches in a row; at batch 1 each kernel costs a few microseconds, whatever it computes.
Here:

1. ``_conv_xproj_kernel``, one program per block of BLOCK_D channels (and BLOCK_M batch rows): the conv
   update of its channels (the conv state shifted in place, the SiLU output stored for the state
   update), then its share of x_proj, x_conv[:, block] @ W_x[:, block]^T, as fp32 partial sums
   (n_blocks, Bsz, R + 2N).  Splitting x_proj along its reduction axis is what lets the conv and the
   projection share a program without any program reading another's conv state.
2. the state update (``state_update.py``) with ``partials``: each program adds up the partial sums of
   dt (low rank), B and C itself (n_blocks x (R + 2N) values from L2), rounds them to the activation
   dtype as F.linear would, and goes on as before (dt_proj, the state, the gate).

The result equals the unfused step up to the summation order of x_proj.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.conv1d import causal_conv1d_update_triton
from perfmamba.ops.triton.selective_scan import interpreting, next_pow2
from perfmamba.ops.triton.state_update import selective_state_update_triton


@triton.jit
def _conv_xproj_kernel(
    x_ptr, state_ptr, cw_ptr, cb_ptr, xw_ptr, xc_ptr, part_ptr, M, Dm, J,
    s_xb, s_xd, s_sb, s_sd, s_sk, s_cd, s_ck, s_wj, s_wd, s_cb_, s_pq, s_pb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_d = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < Dm
    md_mask = m_mask[:, None] & d_mask[None, :]
    s_row = state_ptr + offs_m[:, None] * s_sb + offs_d[None, :] * s_sd  # (BLOCK_M, BLOCK_D)

    # conv state columns 1 .. W-1 and the new input, oldest first: all loaded before any is stored
    xv = tl.load(x_ptr + offs_m[:, None] * s_xb + offs_d[None, :] * s_xd, mask=md_mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(cb_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(W - 1):
        col = tl.load(s_row + (k + 1) * s_sk, mask=md_mask, other=0.0)
        acc += col.to(tl.float32) * tl.load(cw_ptr + offs_d * s_cd + k * s_ck, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(s_row + k * s_sk, col, mask=md_mask)
    newest = xv.to(state_ptr.dtype.element_ty)
    tl.store(s_row + (W - 1) * s_sk, newest, mask=md_mask)
    acc += newest.to(tl.float32) * tl.load(cw_ptr + offs_d * s_cd + (W - 1) * s_ck, mask=d_mask,
                                           other=0.0).to(tl.float32)[None, :]
    xc = (acc * tl.sigmoid(acc)).to(xc_ptr.dtype.element_ty)  # SiLU, in the activation dtype
    tl.store(xc_ptr + offs_m[:, None] * s_cb_ + offs_d[None, :], xc, mask=md_mask)

    # this block's share of x_proj: (BLOCK_M, BLOCK_D) @ (BLOCK_D, BLOCK_J), W_x^T read along D
    offs_j = tl.arange(0, BLOCK_J)
    wt = tl.load(xw_ptr + offs_j[None, :] * s_wj + offs_d[:, None] * s_wd,
                 mask=d_mask[:, None] & (offs_j < J)[None, :], other=0.0)
    part = tl.dot(xc.to(xw_ptr.dtype.element_ty), wt, input_precision=PRECISION)
    tl.store(part_ptr + pid_d * s_pq + offs_m[:, None] * s_pb + offs_j[None, :], part,
             mask=m_mask[:, None] & (offs_j < J)[None, :])


BLOCK_M = 16  # the rows of a tensor-core dot; decode batches up to 16 take one program row
# Larger batches take the unfused kernels (``mamba1_mixer_step_triton``).  mamba-130m, H200, CUDA graph,
# per token (2026-12-01): fused 557 / 561 / 569 / 622 / 701 us against 584 / 582 / 591 / 593 / 598 us
# unfused at batch 1 / 2 / 4 / 8 / 16 (``docs/benchmarks/tuning-h200/decode-fused.txt``).
MAX_BATCH = 4


# cuBLAS's choice for x_proj's GEMM at batch > MAX_BATCH depends on its output width R + 2N: at a width that is
# not a multiple of 8 it took an sm80 WMMA kernel.  demo-mamba1-sized layers at 14 states (44 outputs; H200,
# 2026-12-01, docs/benchmarks/tuning-h200/decode-x-proj.txt): 4.6 us per layer against 2.7 us for 48 outputs,
# batch-64 decode at 0.88x the 16-state speed and batch 16 at 0.79x; giving the output rows a pitch of 48
# alone changed nothing.  As a GEMM of 48 outputs (4 more weight rows) it took the 16-state kernel: 0.99x.
XPROJ_ROWS_MULTIPLE = 8


def x_proj_rows(x, weight):
    """x @ weight^T (Bsz, R + 2N), computed as a GEMM of R + 2N rounded up to XPROJ_ROWS_MULTIPLE outputs
    where the weight's storage holds that many rows from its start (``Mamba1Mixer.step`` keeps its x_proj
    weight in such storage; see ``pitched_rows``).  The extra rows' outputs are computed and dropped: each
    output column depends on its own weight row only, so whatever those rows hold changes nothing."""
    rows = pitched_rows(weight)
    if rows is None:
        return torch.nn.functional.linear(x, weight)
    return torch.nn.functional.linear(x, rows)[:, :weight.shape[0]]


def row_pitch(rows: int) -> int:
    """``rows`` rounded up to a multiple of XPROJ_ROWS_MULTIPLE."""
    return rows + (-rows % XPROJ_ROWS_MULTIPLE)


def _can_pitch(weight) -> bool:
    """J (rows) not a multiple of XPROJ_ROWS_MULTIPLE, and the weight row-major: the rows a longer storage would
    add follow its own."""
    rows, cols = weight.shape
    return row_pitch(rows) != rows and weight.stride() == (cols, 1)


def _storage_holds_pitch(weight) -> bool:
    rows, cols = weight.shape
    needed = (weight.storage_offset() + row_pitch(rows) * cols) * weight.element_size()
    return weight.untyped_storage().nbytes() >= needed


def pitched_rows(weight):
    """``weight`` (J, D) extended to the next multiple of XPROJ_ROWS_MULTIPLE rows as a view of its own storage,
    or None: when J is already such a multiple, or the weight is not row-major, or its storage ends sooner."""
    if not _can_pitch(weight) or not _storage_holds_pitch(weight):
        return None
    rows, cols = weight.shape
    return weight.as_strided((row_pitch(rows), cols), (cols, 1))


def wants_pitched_storage(weight) -> bool:
    """True where ``pitched_rows`` would extend ``weight`` but its storage ends too soon (see
    ``Mamba1Mixer._keep_x_proj_rows_pitched``, which then moves it into longer storage)."""
    return _can_pitch(weight) and not _storage_holds_pitch(weight)


def mamba1_mixer_step_triton(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, ssm_state, A, D,
                             dt_proj_weight, dt_proj_bias):
    """``mamba1_mixer_step_ref`` in two kernels up to batch MAX_BATCH, in three beyond (the conv update,
    x_proj by cuBLAS, the state update with dt_proj inside).  x, z (Bsz, D) (views of in_proj's output);
    conv_state (Bsz, D, W) and ssm_state (Bsz, D, N), both updated in place; conv_weight (D, W);
    x_proj_weight (R + 2N, D); dt_proj_weight (D, R).  Returns y (Bsz, D), gated, in x's dtype."""
    bsz, dim = x.shape
    n_state = ssm_state.shape[-1]
    rank = dt_proj_weight.shape[1]
    if bsz > MAX_BATCH:
        x = causal_conv1d_update_triton(x, conv_state, conv_weight, conv_bias, activation="silu")
        dt, B, C = torch.split(x_proj_rows(x, x_proj_weight), [rank, n_state, n_state], dim=-1)
        return selective_state_update_triton(ssm_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_proj_bias,
                                             dt_softplus=True, dt_proj_weight=dt_proj_weight)
    n_proj = x_proj_weight.shape[0]  # R + 2N
    block_d = 32 if interpreting() else 64
    n_blocks = triton.cdiv(dim, block_d)
    x_conv = torch.empty_like(x, memory_format=torch.contiguous_format)
    partials = torch.empty(n_blocks, bsz, n_proj, device=x.device, dtype=torch.float32)
    _conv_xproj_kernel[(n_blocks, triton.cdiv(bsz, BLOCK_M))](
        x, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight, x_proj_weight,
        x_conv, partials, bsz, dim, n_proj,
        *x.stride(), *conv_state.stride(), *conv_weight.stride(), *x_proj_weight.stride(), x_conv.stride(0),
        partials.stride(0), partials.stride(1),
        W=conv_weight.shape[1], HAS_BIAS=conv_bias is not None, BLOCK_M=BLOCK_M, BLOCK_D=block_d,
        BLOCK_J=max(16, next_pow2(n_proj)), PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=1 if interpreting() else 4,
    )
    return selective_state_update_triton(ssm_state, x_conv, None, A, None, None, D=D, z=z, dt_bias=dt_proj_bias,
                                         dt_softplus=True, dt_proj_weight=dt_proj_weight,
                                         partials=(partials, rank, n_state))
