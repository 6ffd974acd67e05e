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


# ------------------------------------------------------------------------------------- profiled components
# What `perfmamba profile` times, costs and reports, in data-flow order.  Besides the mixer's components:
#   "norm"      the block's pre-norm RMSNorm and its residual add (in a whole model also the final norm);
#   "embedding" and "lm_head" for whole models.
# Mamba-1's gate SiLU(z) and D skip are fused into the selective scan (our ops, like mamba_ssm's
# selective_scan_fn, take z and D), so they are measured and costed under "ssm"; Mamba-1's "gate_norm" row
# is kept, marked fused into "ssm", with zero time, FLOPs and bytes.  In decode Mamba-1's dt_proj also runs
# inside the SSM state update (Mamba1Mixer.step passes dt_proj_weight), so its row is fused into "ssm" too.
SCOPES = ("block", "model")
_MAMBA1_FUSED = {"gate_norm": "ssm"}
FUSED_INTO = {("mamba1", "prefill"): _MAMBA1_FUSED, ("mamba1", "decode"): {**_MAMBA1_FUSED, "dt_proj": "ssm"}}
MATMUL_COMPONENTS = ("in_proj", "x_proj", "dt_proj", "out_proj", "lm_head")  # plain GEMMs (nn.Linear)


def profiled_components(family: str, scope: str = "block") -> tuple:
    """Component names of one profiled unit: a block ("norm" + the mixer's) or a whole model."""
    if scope == "block":
        return ("norm",) + block_components(family)
    return ("embedding", "norm") + block_components(family) + ("lm_head",)


def fused_into(family: str, component: str, mode: str):
    """The component whose kernel does ``component``'s work in ``mode`` (prefill | decode), or None when it
    runs on its own."""
    return FUSED_INTO.get((family, mode), {}).get(component)


def flop_checked(family: str, component: str, mode: str) -> bool:
    """Whether the component's analytic matmul FLOPs are checked against torch.utils.flop_counter: the GEMMs
    that run on their own, and the conv in prefill (F.conv1d; the decode update is an elementwise dot the
    counter does not see)."""
    if fused_into(family, component, mode):
        return False
    return component in MATMUL_COMPONENTS or (component == "conv1d" and mode == "prefill")
