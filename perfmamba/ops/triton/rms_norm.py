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
def _rms_norm_kernel(x_ptr, z_ptr, w_ptr, y_ptr, s_xr, s_zr, s_yr, GS, eps,
                     HAS_Z: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * GS + tl.arange(0, BLOCK)  # channels of this group
    mask = tl.arange(0, BLOCK) < GS
    h = tl.load(x_ptr + row * s_xr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row * s_zr + offs, mask=mask, other=0.0).to(tl.float32)
        h = h * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / GS + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    normed = (h * rstd).to(w_ptr.dtype.element_ty).to(tl.float32)  # the reference casts, then multiplies
    tl.store(y_ptr + row * s_yr + offs, (w.to(tl.float32) * normed).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x, weight, eps, z=None, group_size=None, out=None):
    """Same arguments and result as ``rms_norm_ref``; x and z (..., dim) need a contiguous last axis."""
    dim = x.shape[-1]
    group_size = group_size or dim
    x2 = x.reshape(-1, dim)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    z2 = None
    if z is not None:
        z2 = z.reshape(-1, dim)
        if z2.stride(-1) != 1:
            z2 = z2.contiguous()
    rows = x2.shape[0]
    y = out if out is not None else torch.empty(x.shape, device=x.device, dtype=weight.dtype)
    y2 = y.view(-1, dim)
    if rows == 0:
        return y
    block = next_pow2(group_size)
    num_warps = 1 if interpreting() else min(8, max(1, block // 256))
    _rms_norm_kernel[(rows, dim // group_size)](
        x2, z2 if z2 is not None else x2, weight, y2, x2.stride(0), (z2 if z2 is not None else x2).stride(0),
        y2.stride(0), group_size, float(eps), HAS_Z=z is not None, BLOCK=block, num_warps=num_warps,
    )
    return y
