"""Pre-norm residual block: x + mixer(RMSNorm(x)), the residual stream kept in fp32 when configured."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

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
        return self._residual(x) + self.mixer.step(self.norm(x), cache)
