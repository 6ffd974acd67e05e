"""Inference cache: per layer, the conv state (last d_conv inputs) and the SSM state.

Buffers are allocated once and updated in place, so a decode step can be captured in a CUDA graph.
Shapes per layer:  Mamba-1  conv (Bsz, d_inner, d_conv), ssm (Bsz, d_inner, N_layer);
                   Mamba-2  conv (Bsz, conv_dim_layer, d_conv), ssm (Bsz, H, P, N_layer).
The SSM state is kept in fp32 whatever the model dtype; the conv state in the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InferenceCache:
    conv_states: list = field(default_factory=list)  # one tensor per layer
    ssm_states: list = field(default_factory=list)
    seqlen_offset: int = 0  # tokens already consumed

    @classmethod
    def allocate(cls, config, batch_size: int, device=None, dtype=torch.float32) -> "InferenceCache":
        conv, ssm = [], []
        for i in range(config.n_layer):
            n = config.layer_d_state(i)
            if config.family == "mamba1":
                conv.append(torch.zeros(batch_size, config.d_inner, config.d_conv, device=device, dtype=dtype))
                ssm.append(torch.zeros(batch_size, config.d_inner, n, device=device, dtype=torch.float32))
            else:
                conv_dim = config.d_inner + 2 * config.ngroups * n
                conv.append(torch.zeros(batch_size, conv_dim, config.d_conv, device=device, dtype=dtype))
                ssm.append(torch.zeros(batch_size, config.nheads, config.headdim, n, device=device,
                                       dtype=torch.float32))
        return cls(conv, ssm, 0)

    @property
    def batch_size(self) -> int:
        return self.conv_states[0].shape[0]

    def nbytes(self) -> int:
        """State-cache bytes for the whole batch."""
        return sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states)

    def reset(self) -> None:
        for t in self.conv_states + self.ssm_states:
            t.zero_()
        self.seqlen_offset = 0
