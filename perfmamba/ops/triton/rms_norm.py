"""RMSNorm (optionally gated by SiLU(z), optionally group-wise) as one Triton kernel.

In plain torch the norm is 6 to 11 small kernels (casts, square, mean, rsqrt, products); here it is one
read of x (and z) and one write, which matters in a launch-bound decode step and in a long prefill alike.
One program normalizes one group of one row; rows may be strided views (z is a slice of in_proj's
output), only the channel axis must be contiguous.  Rounding matches ``rms_norm_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from perfmamba.ops.triton.selective_scan import interpreting, next_pow2


@triton.jit
def _rms_norm_kernel(x_ptr, z_ptr, w_ptr, y_ptr, r_ptr, ro_ptr, s_xr, s_zr, s_yr, s_rr, s_or, GS, eps,
                     HAS_Z: tl.constexpr, HAS_RES: tl.constexpr, STORE_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * GS + tl.arange(0, BLOCK)  # channels of this group
    mask = tl.arange(0, BLOCK) < GS
    h = tl.load(x_ptr + row * s_xr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        # the residual stream's add in fp32, rounded to the residual's dtype: what torch does for fp32 and
        # for bf16 + bf16 (it adds in fp32 and rounds); the rounded sum is stored and normalized
        h += tl.load(r_ptr + row * s_rr + offs, mask=mask, other=0.0).to(tl.float32)
    if STORE_RES:
        h = h.to(ro_ptr.dtype.element_ty)
        tl.store(ro_ptr + row * s_or + offs, h, mask=mask)
        h = h.to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row * s_zr + offs, mask=mask, other=0.0).to(tl.float32)
        h = h * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / GS + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    normed = (h * rstd).to(w_ptr.dtype.element_ty).to(tl.float32)  # the reference casts, then multiplies
    tl.store(y_ptr + row * s_yr + offs, (w.to(tl.float32) * normed).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x, weight, eps, z=None, group_size=None, out=None, residual=None, residual_out=None):
    """Same arguments and result as ``rms_norm_ref``; x and z (..., dim) need a contiguous last axis.

    With ``residual_out`` (x's shape, the residual dtype), x + ``residual`` (or x alone) is stored there
    and normalized: ``add_rms_norm_ref`` in one kernel.
    """
    dim = x.shape[-1]
    group_size = group_size or dim
    x2, z2, r2 = (_rows(t, dim) for t in (x, z, residual))
    rows = x2.shape[0]
    y = out if out is not None else torch.empty(x.shape, device=x.device, dtype=weight.dtype)
    y2 = y.view(-1, dim)
    ro2 = residual_out.view(-1, dim) if residual_out is not None else None
    if rows == 0:
        return y
    block = next_pow2(group_size)
    num_warps = 1 if interpreting() else min(8, max(1, block // 256))
    _rms_norm_kernel[(rows, dim // group_size)](
        x2, z2 if z2 is not None else x2, weight, y2, r2 if r2 is not None else x2, ro2 if ro2 is not None else y2,
        x2.stride(0), (z2 if z2 is not None else x2).stride(0), y2.stride(0),
        (r2 if r2 is not None else x2).stride(0), (ro2 if ro2 is not None else y2).stride(0),
        group_size, float(eps), HAS_Z=z is not None, HAS_RES=residual is not None,
        STORE_RES=residual_out is not None, BLOCK=block, num_warps=num_warps,
    )
    return y


def _rows(t, dim):
    """t as (rows, dim) with a contiguous last axis (a view when it has one), or None."""
    if t is None:
        return None
    t2 = t.reshape(-1, dim)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def add_rms_norm_triton(x, residual, weight, eps, residual_dtype=None):
    """``add_rms_norm_ref`` as one kernel: (normalized, new residual)."""
    if residual is not None:
        res_dtype = torch.promote_types(residual.dtype, x.dtype)
    else:
        res_dtype = x.dtype
    res_dtype = residual_dtype or res_dtype
    if residual is not None and residual.dtype != res_dtype:
        residual = residual.to(res_dtype)
    r_out = torch.empty(x.shape, device=x.device, dtype=res_dtype)
    return rms_norm_triton(x, weight, eps, residual=residual, residual_out=r_out), r_out
