"""The canonical component names of a Mamba block, shared by parameter counts, timers, the analytic cost
model and every report, so that they line up row for row."""

from __future__ import annotations

# Order = data flow through a block.  Mamba-2 has no x_proj / dt_proj (B, C and dt come out of in_proj).
MAMBA1_COMPONENTS = ("in_proj", "conv1d", "x_proj", "dt_proj", "ssm", "gate_norm", "out_proj")
MAMBA2_COMPONENTS = ("in_proj", "conv1d", "ssm", "gate_norm", "out_proj")
MODEL_COMPONENTS = ("embedding", "norm", "lm_head")  # outside the mixers: embeddings, RMSNorms, head


def block_components(family: str) -> tuple:
    return MAMBA1_COMPONENTS if family == "mamba1" else MAMBA2_COMPONENTS


def component_of_parameter(name: str) -> str:
    """Map a parameter name (our mamba_ssm-style names) to its component."""
    if name.startswith("backbone.embedding"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".mixer." not in name:
        return "norm"  # block pre-norms and the final norm
    leaf = name.split(".mixer.", 1)[1]
    if leaf.startswith(("A_log", "D", "dt_bias")):
        return "ssm"
    if leaf.startswith("norm"):
        return "gate_norm"
    return leaf.split(".", 1)[0]  # in_proj, conv1d, x_proj, dt_proj, out_proj
