"""Weight initialisation shared by both families (what mamba_ssm does for a freshly built model)."""

from __future__ import annotations

import math

import torch


def dt_bias_init(n: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """A bias b such that softplus(b) = dt, with dt log-uniform in [dt_min, dt_max] (at least ``floor``).

    This sets each channel's initial time scale, i.e. how fast its state forgets.
    """
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
