"""RMSNorm and Mamba-2's gated, group-wise RMSNorm in plain torch (the reference for the Triton kernel).

The rounding follows transformers' MambaRMSNorm / MambaRMSNormGated: statistics in fp32, the normalized
values cast to the weight's dtype, then multiplied by the weight in that dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, z: Optional[torch.Tensor] = None,
                 group_size: Optional[int] = None) -> torch.Tensor:
    """x (..., dim) -> weight * normalize(x) in weight's dtype.  With z (same shape as x), x * SiLU(z) is
    normalized instead; with group_size, statistics are taken per group of that many channels."""
    h = x.float()
    if z is not None:
        h = h * F.silu(z.float())
    grouped = h.view(*h.shape[:-1], -1, group_size or h.shape[-1])  # (..., groups, group_size)
    grouped = grouped * grouped_inv_rms(grouped, eps)
    return weight * grouped.view_as(h).to(weight.dtype)


def grouped_inv_rms(grouped: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) over the last dim of ``grouped`` (..., groups, group_size): the norm's
    per-group statistic (pruning's calibration reads it too)."""
    return torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)


def add_rms_norm_ref(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                     residual_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm residual step: r = residual + x (or x alone when ``residual`` is None, cast to
    ``residual_dtype`` when given), then (rms_norm(r), r).  The sum follows torch's type promotion, so an
    fp32 residual stream plus a bf16 mixer output is summed in fp32, as ``x.float() + y`` is."""
    r = x if residual is None else residual.to(residual_dtype or residual.dtype) + x
    if residual_dtype is not None:
        r = r.to(residual_dtype)
    return rms_norm_ref(r, weight, eps), r
