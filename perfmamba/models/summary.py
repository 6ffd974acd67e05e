"""What ``perfmamba info`` reports: parameters per component, per-layer shapes and state-cache bytes."""

from __future__ import annotations

from collections import OrderedDict

from perfmamba.models.lm import MambaLM
from perfmamba.profiling.components import MAMBA1_COMPONENTS, component_of_parameter


def cache_bytes_per_sequence(config, dtype_bytes: int) -> dict:
    """State-cache bytes for one sequence: conv state in the model dtype, SSM state in fp32."""
    conv = ssm = 0
    for i in range(config.n_layer):
        n = config.layer_d_state(i)
        if config.family == "mamba1":
            conv += config.d_inner * config.d_conv * dtype_bytes
            ssm += config.d_inner * n * 4
        else:
            conv += (config.d_inner + 2 * config.ngroups * n) * config.d_conv * dtype_bytes
            ssm += config.nheads * config.headdim * n * 4
    return {"conv": conv, "ssm": ssm, "total": conv + ssm}


def model_summary(model: MambaLM) -> dict:
    """Plain numbers (JSON-ready): counts, shapes, bytes.  Tied weights are counted once."""
    cfg = model.config
    per_component: "OrderedDict[str, int]" = OrderedDict()
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        comp = component_of_parameter(name)
        per_component[comp] = per_component.get(comp, 0) + p.numel()
    order = ("embedding",) + MAMBA1_COMPONENTS + ("norm", "lm_head")
    per_component = OrderedDict((c, per_component[c]) for c in order if c in per_component)
    layer0 = model.backbone.layers[0].mixer
    shapes = {name: list(p.shape) for name, p in layer0.named_parameters()}
    dtype = model.backbone.embedding.weight.dtype
    layer_states = [cfg.layer_d_state(i) for i in range(cfg.n_layer)]
    return {
        "family": cfg.family,
        "config": cfg.to_dict(),
        "dtype": str(dtype).replace("torch.", ""),
        "parameters": sum(per_component.values()),
        "parameters_per_component": dict(per_component),
        "layer_parameter_shapes": shapes,
        "d_state_per_layer": layer_states,
        "state_cache_bytes_per_sequence": cache_bytes_per_sequence(cfg, dtype.itemsize),
    }
