"""Fused decode-step ops in plain torch: each is the unfused sequence of reference ops it stands for.

The Triton version (``triton/mamba1_step.py``) does the same work in fewer kernels; this defines what
it must compute, and is what the CPU runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perfmamba.ops.conv_ref import causal_conv1d_update_ref
from perfmamba.ops.scan_ref import selective_state_update_ref


def mamba1_mixer_step_ref(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, ssm_state, A, D,
                          dt_proj_weight, dt_proj_bias):
    """Mamba-1's token step from in_proj's output (x, z) to the gated SSM output (before out_proj):
    conv update + SiLU, x_proj, dt_proj, the state update with D and the SiLU(z) gate.  conv_state and
    ssm_state are updated in place."""
    x = causal_conv1d_update_ref(x, conv_state, conv_weight, conv_bias, activation="silu")
    rank, n_state = dt_proj_weight.shape[1], ssm_state.shape[-1]
    dt, B, C = torch.split(F.linear(x, x_proj_weight), [rank, n_state, n_state], dim=-1)
    return selective_state_update_ref(ssm_state, x, F.linear(dt, dt_proj_weight), A, B, C, D=D, z=z,
                                      dt_bias=dt_proj_bias, dt_softplus=True)
