"""RMSNorm and the gated, group-wise RMSNorm of Mamba-2, defined once for both families.

Both call ``perfmamba.ops.rms_norm`` (plain torch, or one Triton kernel on the GPU); ``backend`` follows
the model's (``MambaLM.set_backend`` sets it on every module that has one).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from perfmamba import ops


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        return ops.rms_norm(x, self.weight, self.eps, backend=self.backend)

    def add_forward(self, x: torch.Tensor, residual, residual_dtype=None):
        """(self(r), r) with r = residual + x: a block's residual add fused with the next norm."""
        return ops.add_rms_norm(x, residual, self.weight, self.eps, residual_dtype=residual_dtype,
                                backend=self.backend)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm(y * SiLU(z)) with statistics taken per group of ``group_size`` channels
    (one group per B/C group, as mamba_ssm's ``RMSNormGated(norm_before_gate=False)``)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, backend: str = "auto", device=None,
                 dtype=None):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # y, z: (..., dim)
        return ops.rms_norm(y, self.weight, self.eps, z=z, group_size=self.group_size, backend=self.backend)
