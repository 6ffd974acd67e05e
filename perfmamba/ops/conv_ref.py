"""Causal depthwise conv1d (the short convolution before the SSM) and its one-step decode update.

The conv state follows mamba_ssm and transformers: the last ``W`` (= d_conv) inputs, oldest first,
shape (Bsz, D, W).  A step shifts it left by one, appends the new input, and dots it with the kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _activate(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    if activation in ("silu", "swish"):
        return F.silu(y)
    if activation is None:
        return y
    raise ValueError(f"unknown activation {activation!r}; use 'silu' or None")


def causal_conv1d_ref(x, weight, bias=None, activation=None, return_final_state=False, initial_state=None):
    """x: (Bsz, D, L); weight: (D, W); bias: (D,); initial_state: (Bsz, D, W) or None (zeros).

    y_t = act(bias + sum_k weight[:, k] * x_{t - W + 1 + k}) with x before the start taken from
    initial_state (its last W-1 columns).  Returns y (Bsz, D, L) in x's dtype and, when asked, the new
    conv state (Bsz, D, W): the last W inputs.
    """
    bsz, dim, seqlen = x.shape
    width = weight.shape[-1]
    if initial_state is not None:
        history = initial_state[..., 1:].to(x.dtype)  # (Bsz, D, W-1)
    else:
        history = x.new_zeros(bsz, dim, width - 1)
    padded = torch.cat([history, x], dim=-1)  # (Bsz, D, W-1+L)
    y = F.conv1d(padded.float(), weight.float().unsqueeze(1), None if bias is None else bias.float(),
                 groups=dim)  # (Bsz, D, L)
    y = _activate(y, activation).to(x.dtype)
    if not return_final_state:
        return y
    state = padded[..., -width:] if padded.shape[-1] >= width else F.pad(padded, (width - padded.shape[-1], 0))
    return y, state.contiguous()


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """One decode step.  x: (Bsz, D); conv_state: (Bsz, D, W), updated in place.  Returns y (Bsz, D)."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[..., -1] = x.to(conv_state.dtype)
    y = (conv_state.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return _activate(y, activation).to(x.dtype)
