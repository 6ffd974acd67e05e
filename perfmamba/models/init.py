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


class KeepSsmParamsFp32:
    """Mixin for mixers: ``model.to(torch.bfloat16)`` leaves A_log, D and dt_bias in fp32.

    Their exponentials set each channel's memory (exp(dt*A)); bf16's 8-bit mantissa would shift them
    visibly, which is why mamba_ssm keeps them fp32 too.  Device moves still apply.
    """

    _fp32_params = ("A_log", "D", "dt_bias")

    def _apply(self, fn, recurse=True):
        saved = {n: getattr(self, n).data for n in self._fp32_params if isinstance(getattr(self, n, None), torch.Tensor)}
        super()._apply(fn, recurse)
        for name, before in saved.items():
            param = getattr(self, name)
            if param.dtype != torch.float32 and before.dtype == torch.float32:
                param.data = before.to(device=param.device)
        return self

    def neg_exp_A(self) -> torch.Tensor:
        """A = -exp(A_log) in fp32.  Cached while A_log is unchanged (same storage and version counter), so
        that a decode step does not spend a kernel per layer on it; recomputed whenever autograd is on (a
        tensor cached under inference mode could not be saved for backward)."""
        a_log = self.A_log
        if torch.is_grad_enabled() or a_log.is_inference():  # inference tensors have no version counter
            return -torch.exp(a_log.float())
        key = (a_log.data_ptr(), a_log._version, a_log.device)
        cached = self.__dict__.get("_neg_exp_A_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, -torch.exp(a_log.detach().float()))
            self.__dict__["_neg_exp_A_cache"] = cached
        return cached[1]
