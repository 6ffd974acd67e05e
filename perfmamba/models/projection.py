"""A mixer's in_proj / out_proj in the decode step, through ``ops.linear`` (at a few rows the faster of
cuBLAS and a Triton GEMV, ``ops/triton/gemv.py``) when the layer is a plain ``nn.Linear``.

A layer that is anything else (a subclass, an adapter put in its place) or that carries forward hooks,
its own or global ones (``nn.modules.module.register_module_forward_hook``, which some FLOP counters and
tracers use), is called as a module, so that what it adds to the product and what its hooks watch stay
in effect.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules import module as nn_module

from perfmamba import ops


def _global_hooks() -> bool:
    """Whether any forward hook is registered for every module (torch keeps them in module-level dicts)."""
    return bool(getattr(nn_module, "_global_forward_hooks", None)
                or getattr(nn_module, "_global_forward_pre_hooks", None))


def project(layer: nn.Module, x: torch.Tensor, backend: str) -> torch.Tensor:
    """layer(x) for one decode step's rows x (Bsz, in_features)."""
    if type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks or _global_hooks()):
        return ops.linear(x, layer.weight, layer.bias, backend=backend)
    return layer(x)
