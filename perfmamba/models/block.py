"""Pre-norm residual block: x + mixer(RMSNorm(x)), the residual stream kept in fp32 when configured."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from perfmamba import ops
from perfmamba.models.cache import InferenceCache
from perfmamba.models.mamba1 import Mamba1Mixer
from perfmamba.models.mamba2 import Mamba2Mixer
from perfmamba.models.norm import RMSNorm

MIXERS = {"mamba1": Mamba1Mixer, "mamba2": Mamba2Mixer}


class Block(nn.Module):
    def __init__(self, config, layer_idx: int, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps, backend=backend, device=device, dtype=dtype)
        self.mixer = MIXERS[config.family](config, layer_idx, backend=backend, device=device, dtype=dtype)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if self.residual_in_fp32 else x

    def forward(self, x: torch.Tensor, cache: Optional[InferenceCache] = None) -> torch.Tensor:
        """x: (Bsz, L, d_model) residual stream -> same shape."""
        return self._residual(x) + self.mixer(self.norm(x), cache)

    def step(self, x: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """x: (Bsz, d_model) -> same shape, one token."""
        out, residual = self.step_from_residual(x, None, cache, torch.float32 if self.residual_in_fp32 else None)
        return residual + out

    def step_from_residual(self, x: torch.Tensor, residual: Optional[torch.Tensor], cache: InferenceCache,
                           residual_dtype=None):
        """One token from the residual stream's pieces, as ``MambaLM`` runs it: r = residual + x (the
        previous block's output joining the stream), then (mixer.step(norm(r)), r).  The add, the norm and
        the mixer's in_proj are one op (one kernel on the GPU for small batches)."""
        proj = self.mixer.in_proj
        projected, residual = ops.add_rms_norm_linear(x, residual, self.norm.weight, self.norm.eps, proj.weight,
                                                      proj.bias, residual_dtype=residual_dtype,
                                                      backend=self.norm.backend)
        return self.mixer.step_projected(projected, cache), residual
