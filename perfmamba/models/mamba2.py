"""The Mamba-2 mixer: in_proj -> (z, x, B, C, dt) -> conv1d + SiLU over xBC -> SSD (per-head scalar A, D,
dt_bias, softplus) -> gated RMSNorm -> out_proj.  Parameter names follow mamba_ssm and transformers."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from perfmamba import ops
from perfmamba.config import Mamba2Config
from perfmamba.models.cache import InferenceCache
from perfmamba.models.init import KeepSsmParamsFp32, dt_bias_init
from perfmamba.models.norm import GatedRMSNorm
from perfmamba.models.projection import project


class Mamba2Mixer(KeepSsmParamsFp32, nn.Module):
    def __init__(self, config: Mamba2Config, layer_idx: int, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.config, self.layer_idx, self.backend = config, layer_idx, backend
        n = config.layer_d_state(layer_idx)
        self.d_state, self.d_inner, self.nheads = n, config.d_inner, config.nheads
        self.headdim, self.ngroups = config.headdim, config.ngroups
        self.conv_dim = config.d_inner + 2 * config.ngroups * n
        d_in_proj = 2 * config.d_inner + 2 * config.ngroups * n + config.nheads
        kw = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(config.d_model, d_in_proj, bias=config.bias, **kw)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.d_conv, groups=self.conv_dim,
                                padding=config.d_conv - 1, bias=config.conv_bias, **kw)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, device=device, dtype=torch.float32))
        self.A_log = nn.Parameter(torch.empty(self.nheads, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.nheads, device=device, dtype=torch.float32))
        self.norm = GatedRMSNorm(config.d_inner, config.d_inner // config.ngroups, eps=config.norm_eps,
                                 backend=backend, **kw)
        self.out_proj = nn.Linear(config.d_inner, config.d_model, bias=config.bias, **kw)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A uniform in A_init_range, unit D, dt_bias for dt log-uniform in [dt_min, dt_max]."""
        cfg = self.config
        lo, hi = cfg.A_init_range
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(lo, hi)))
        self.dt_bias.copy_(dt_bias_init(self.nheads, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.D.fill_(1.0)

    def _conv_weight(self) -> torch.Tensor:  # (conv_dim, W)
        return self.conv1d.weight[:, 0, :]

    def _split_in_proj(self, zxbcdt: torch.Tensor):
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xbc: torch.Tensor):
        gn = self.ngroups * self.d_state
        return torch.split(xbc, [self.d_inner, gn, gn], dim=-1)

    def forward(self, hidden: torch.Tensor, cache: Optional[InferenceCache] = None) -> torch.Tensor:
        """hidden: (Bsz, L, d_model) -> (Bsz, L, d_model).  With a fresh cache, its states are filled."""
        if cache is not None and cache.seqlen_offset > 0:
            return torch.stack([self.step(hidden[:, t], cache) for t in range(hidden.shape[1])], dim=1)
        bsz, seqlen, _ = hidden.shape
        z, xbc, dt = self._split_in_proj(self.in_proj(hidden))  # (Bsz, L, d_inner | conv_dim | H)
        xbc, conv_state = ops.causal_conv1d(xbc.transpose(1, 2), self._conv_weight(), self.conv1d.bias,
                                            activation="silu", return_final_state=True, backend=self.backend)
        x, B, C = self._split_xbc(xbc.transpose(1, 2))  # (Bsz, L, d_inner), (Bsz, L, G*N) x2
        y, ssm_state = ops.ssd(
            x.reshape(bsz, seqlen, self.nheads, self.headdim), dt, self.neg_exp_A(),
            B.reshape(bsz, seqlen, self.ngroups, self.d_state), C.reshape(bsz, seqlen, self.ngroups, self.d_state),
            self.config.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
            return_final_states=True, dt_limit=self.config.dt_limit, backend=self.backend)
        if cache is not None:
            cache.conv_states[self.layer_idx].copy_(conv_state)
            cache.ssm_states[self.layer_idx].copy_(ssm_state)
        y = self.norm(y.reshape(bsz, seqlen, self.d_inner), z)
        return self.out_proj(y)

    def step(self, hidden: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token.  hidden: (Bsz, d_model) -> (Bsz, d_model); the layer's cache entries advance in place."""
        bsz = hidden.shape[0]
        z, xbc, dt = self._split_in_proj(project(self.in_proj, hidden, self.backend))
        xbc = ops.causal_conv1d_update(xbc, cache.conv_states[self.layer_idx], self._conv_weight(),
                                       self.conv1d.bias, activation="silu", backend=self.backend)
        x, B, C = self._split_xbc(xbc)
        y = ops.selective_state_update(
            cache.ssm_states[self.layer_idx], x.reshape(bsz, self.nheads, self.headdim), dt, self.neg_exp_A(),
            B.reshape(bsz, self.ngroups, self.d_state), C.reshape(bsz, self.ngroups, self.d_state),
            D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.config.dt_limit,
            backend=self.backend)  # (Bsz, H, P)
        return project(self.out_proj, self.norm(y.reshape(bsz, self.d_inner), z), self.backend)
