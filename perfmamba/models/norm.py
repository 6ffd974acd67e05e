"""RMSNorm and the gated, group-wise RMSNorm of Mamba-2, defined once for both families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(self.weight.dtype)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm(y * SiLU(z)) with statistics taken per group of ``group_size`` channels
    (one group per B/C group, as mamba_ssm's ``RMSNormGated(norm_before_gate=False)``)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # y, z: (..., dim)
        h = y.float() * F.silu(z.float())
        grouped = h.view(*h.shape[:-1], -1, self.group_size)  # (..., groups, group_size)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * grouped.view_as(h).to(self.weight.dtype)
