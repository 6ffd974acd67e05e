"""A mixer's in_proj / out_proj in the decode step, through ``ops.linear`` (at a few rows the faster of
cuBLAS and a Triton GEMV, ``ops/triton/gemv.py``) when the layer is a plain ``nn.Linear``.

A layer that is anything else (a subclass, an adapter put in its place) or that carries forward hooks is
called as a module, so that what it adds to the product and what its hooks watch stay in effect.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from perfmamba import ops


def project(layer: nn.Module, x: torch.Tensor, backend: str) -> torch.Tensor:
    """layer(x) for one decode step's rows x (Bsz, in_features)."""
    if type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks):
        return ops.linear(x, layer.weight, layer.bias, backend=backend)
    return layer(x)
