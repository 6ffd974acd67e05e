"""The mixers' forward and step, cut into stages that can be timed one at a time.

Each stage calls the SAME module weights and the same ``perfmamba.ops`` functions, in the same order and
with the same arguments, as ``Mamba1Mixer`` / ``Mamba2Mixer`` (``forward`` for prefill, ``step`` for
decode), ``Block`` and ``MambaLM``; tests/profiling/test_stages.py checks that running the stages in
sequence gives exactly the model's output, so the staging cannot drift from the model.

A stage is a function ``env -> env``: ``env`` is a dict of the live tensors at that point (the residual
stream, the mixer's intermediates); a stage never modifies its input tensors (decode stages advance the
inference cache in place, as the model does), so it can be called again and again on the same ``env`` to
time it in isolation on realistic inputs.  Stages carry their component name (profiling/components.py);
a component may own several stages ("norm": in a block the pre-norm and the residual add; in a whole
model one fused add + norm per layer, and the final norm).  A component whose work runs inside another's
kernel has no stage (Mamba-1's gate_norm inside the scan; in decode also its dt_proj inside the state
update), and the profile marks it fused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from perfmamba import ops
from perfmamba.models.projection import project


@dataclass
class Stage:
    component: str
    kind: str  # unique within one layer: "norm_pre", "in_proj", ..., "norm_post"; "embedding", "norm_f", "lm_head"
    fn: Callable[[dict], dict]
    layer: Optional[int] = None


def run_stages(stages, env: dict) -> dict:
    for stage in stages:
        env = stage.fn(env)
    return env


# ---------------------------------------------------------------------------------------------- Mamba-1
def _mamba1_prefill(m) -> list:
    """Mamba1Mixer.forward (no cache): u (Bsz, L, d_model) -> out (Bsz, L, d_model)."""

    def in_proj(e):  # "length": set where the whole model padded the prompt (MambaLM.prompt_steps)
        x, z, seqlen = m.prefill_in_proj(e["u"], e.get("length"))
        return {"res": e["res"], "x": x, "z": z, "seqlen": seqlen, "length": e.get("length")}  # (Bsz, D, steps)

    def conv1d(e):
        return {**e, "x": m.prefill_conv(e["x"], e["seqlen"], with_state=False)[0]}

    def x_proj(e):
        return {**e, "x_dbl": m.prefill_x_proj(e["x"])}  # (Bsz, R + 2N, steps)

    def dt_proj(e):
        return {**e, "dt": m.prefill_dt_proj(e["x_dbl"])}  # (Bsz, D, steps)

    def ssm(e):
        y, _ = m.prefill_scan(e["x"], e["dt"], e["x_dbl"], e["z"], e["seqlen"],  # (Bsz, D, steps), gate fused
                              keep_padding=e["length"] is not None)
        return {"res": e["res"], "y": y, "seqlen": e["seqlen"], "length": e["length"]}

    def out_proj(e):  # every step's row where the model padded the prompt: they go on to the next layer
        out = m.prefill_out_proj(e["y"], e["seqlen"], keep_padding=e["length"] is not None)
        return {"res": e["res"], "out": out, "length": e["length"]}

    return [("in_proj", in_proj), ("conv1d", conv1d), ("x_proj", x_proj), ("dt_proj", dt_proj), ("ssm", ssm),
            ("out_proj", out_proj)]


def _mamba1_decode(m, cache) -> list:
    """Mamba1Mixer.step: u (Bsz, d_model) -> out (Bsz, d_model); the layer's cache advances in place."""
    li = m.layer_idx

    def in_proj(e):
        x, z = project(m.in_proj, e["u"], m.backend).chunk(2, dim=-1)  # (Bsz, D) each, as the step runs it
        return {"res": e["res"], "x": x, "z": z}

    def conv1d(e):
        x = ops.causal_conv1d_update(e["x"], cache.conv_states[li], m._conv_weight(), m.conv1d.bias,
                                     activation="silu", backend=m.backend)
        return {**e, "x": x}

    def x_proj(e):
        dt, B, C = m._split_xproj(m.x_proj(e["x"]))  # dt: (Bsz, R)
        return {**e, "dt": dt, "B": B, "C": C}

    def ssm(e):
        # dt_proj runs inside the state update, as in the mixer (component dt_proj: fused into ssm)
        y = ops.selective_state_update(cache.ssm_states[li], e["x"], e["dt"], m.neg_exp_A(), e["B"], e["C"], D=m.D,
                                       z=e["z"], dt_bias=m.dt_proj.bias, dt_softplus=True,
                                       dt_proj_weight=m.dt_proj.weight, backend=m.backend)
        return {"res": e["res"], "y": y}

    def out_proj(e):  # as the step runs it
        return {"res": e["res"], "out": project(m.out_proj, e["y"], m.backend)}

    return [("in_proj", in_proj), ("conv1d", conv1d), ("x_proj", x_proj), ("ssm", ssm), ("out_proj", out_proj)]


# ---------------------------------------------------------------------------------------------- Mamba-2
def _mamba2_prefill(m) -> list:
    """Mamba2Mixer.forward (no cache)."""

    def in_proj(e):
        z, xbc, dt = m._split_in_proj(m.in_proj(e["u"]))  # (Bsz, L, d_inner | conv_dim | H)
        return {"res": e["res"], "z": z, "xbc": xbc, "dt": dt}

    def conv1d(e):
        xbc, _ = ops.causal_conv1d(e["xbc"].transpose(1, 2), m._conv_weight(), m.conv1d.bias, activation="silu",
                                   return_final_state=True, backend=m.backend)
        x, B, C = m._split_xbc(xbc.transpose(1, 2))  # (Bsz, L, d_inner), (Bsz, L, G*N) x2
        return {"res": e["res"], "z": e["z"], "dt": e["dt"], "x": x, "B": B, "C": C}

    def ssm(e):
        x = e["x"]
        bsz, seqlen = x.shape[:2]
        y, _ = ops.ssd(
            x.reshape(bsz, seqlen, m.nheads, m.headdim), e["dt"], m.neg_exp_A(),
            e["B"].reshape(bsz, seqlen, m.ngroups, m.d_state), e["C"].reshape(bsz, seqlen, m.ngroups, m.d_state),
            m.config.chunk_size, D=m.D, dt_bias=m.dt_bias, dt_softplus=True,
            return_final_states=True, dt_limit=m.config.dt_limit, backend=m.backend)  # (Bsz, L, H, P)
        return {"res": e["res"], "z": e["z"], "y": y}

    def gate_norm(e):
        y = e["y"]
        return {"res": e["res"], "y": m.norm(y.reshape(y.shape[0], y.shape[1], m.d_inner), e["z"])}

    def out_proj(e):
        return {"res": e["res"], "out": m.out_proj(e["y"])}

    return [("in_proj", in_proj), ("conv1d", conv1d), ("ssm", ssm), ("gate_norm", gate_norm),
            ("out_proj", out_proj)]


def _mamba2_decode(m, cache) -> list:
    """Mamba2Mixer.step."""
    li = m.layer_idx

    def in_proj(e):
        z, xbc, dt = m._split_in_proj(project(m.in_proj, e["u"], m.backend))  # as the step runs it
        return {"res": e["res"], "z": z, "xbc": xbc, "dt": dt}

    def conv1d(e):
        xbc = ops.causal_conv1d_update(e["xbc"], cache.conv_states[li], m._conv_weight(), m.conv1d.bias,
                                       activation="silu", backend=m.backend)
        x, B, C = m._split_xbc(xbc)
        return {"res": e["res"], "z": e["z"], "dt": e["dt"], "x": x, "B": B, "C": C}

    def ssm(e):
        bsz = e["x"].shape[0]
        y = ops.selective_state_update(
            cache.ssm_states[li], e["x"].reshape(bsz, m.nheads, m.headdim), e["dt"], m.neg_exp_A(),
            e["B"].reshape(bsz, m.ngroups, m.d_state), e["C"].reshape(bsz, m.ngroups, m.d_state),
            D=m.D, dt_bias=m.dt_bias, dt_softplus=True, dt_limit=m.config.dt_limit,
            backend=m.backend)  # (Bsz, H, P)
        return {"res": e["res"], "z": e["z"], "y": y}

    def gate_norm(e):
        y = e["y"]
        return {"res": e["res"], "y": m.norm(y.reshape(y.shape[0], m.d_inner), e["z"])}

    def out_proj(e):  # as the step runs it
        return {"res": e["res"], "out": project(m.out_proj, e["y"], m.backend)}

    return [("in_proj", in_proj), ("conv1d", conv1d), ("ssm", ssm), ("gate_norm", gate_norm),
            ("out_proj", out_proj)]


_MIXER_STAGES = {("mamba1", "prefill"): _mamba1_prefill, ("mamba1", "decode"): _mamba1_decode,
                 ("mamba2", "prefill"): _mamba2_prefill, ("mamba2", "decode"): _mamba2_decode}


def _mixer_parts(mixer, mode: str, cache) -> list:
    """(component, fn) pairs of one mixer's forward (prefill) or step (decode, advancing ``cache``)."""
    make = _MIXER_STAGES[(mixer.config.family, mode)]
    return make(mixer) if mode == "prefill" else make(mixer, cache)


# ---------------------------------------------------------------------------------------------- blocks
def block_stages(block, mode: str, cache=None) -> list:
    """Block.forward (prefill, no cache) or Block.step (decode): env {"h": x} -> {"h": x + mixer(norm(x))}.
    (A whole model fuses each residual add into the next norm instead: ``model_stages``.)"""
    parts = _mixer_parts(block.mixer, mode, cache)

    def norm_pre(e):
        return {"res": e["h"], "u": block.norm(e["h"])}

    def norm_post(e):
        return {"h": block._residual(e["res"]) + e["out"]}

    stages = [Stage("norm", "norm_pre", norm_pre)]
    stages += [Stage(name, name, fn) for name, fn in parts]
    stages.append(Stage("norm", "norm_post", norm_post))
    return stages


def model_stages(model, mode: str, cache=None) -> list:
    """MambaLM's forward (prefill, no cache; env {"ids": (Bsz, L)}) or step (decode; env {"ids": (Bsz,)})
    -> {"logits": ...}.  ``model.forward``'s input check is left out (it validates, it computes nothing).

    As in ``MambaLM._run_blocks``, each block's residual add is fused into the norm that follows it (the
    next block's pre-norm, or the final norm): one "norm" stage per layer, ``add_forward``, and none after
    the mixer.  As in ``MambaLM.forward``, a prompt that the model runs as more steps than its length
    (``MambaLM.prompt_steps``) is padded at the embedding, and the padding's rows are dropped before lm_head.
    """
    bb = model.backbone
    fp32 = torch.float32 if model.config.residual_in_fp32 else None

    def add_norm(norm):
        def fn(e):  # the mixer output (or the embedding, before layer 0) joins the residual stream
            normed, res = norm.add_forward(e["out"] if "out" in e else e["h"], e.get("res"), residual_dtype=fp32)
            return {"res": res, "u": normed, "length": e.get("length")}
        return fn

    def embedding(e):
        ids = e["ids"]
        seqlen = ids.shape[1] if mode == "prefill" else None
        steps = model.prompt_steps(seqlen) if seqlen is not None else None
        if steps == seqlen:  # decode, or a prompt run as it is
            return {"h": bb.embedding(ids)}
        return {"h": bb.embedding(torch.nn.functional.pad(ids, (0, steps - seqlen))), "length": seqlen}

    def lm_head(e):
        h = e["h"] if e.get("length") is None else e["h"][:, :e["length"]]
        return {"logits": model.lm_head(h)}

    stages = [Stage("embedding", "embedding", embedding)]
    for i, block in enumerate(bb.layers):
        stages.append(Stage("norm", "norm_add", add_norm(block.norm), i))
        stages += [Stage(name, name, fn, i) for name, fn in _mixer_parts(block.mixer, mode, cache)]
    final = add_norm(bb.norm_f)
    stages.append(Stage("norm", "norm_f", lambda e: {"h": final(e)["u"], "length": e.get("length")}))
    stages.append(Stage("lm_head", "lm_head", lm_head))
    return stages


def whole_call(unit, scope: str, mode: str, env: dict, cache=None) -> Callable[[], torch.Tensor]:
    """The unprofiled call that the stages reproduce: Block.forward / Block.step / MambaLM.forward / .step."""
    if scope == "block":
        return (lambda: unit(env["h"])) if mode == "prefill" else (lambda: unit.step(env["h"], cache))
    return (lambda: unit(env["ids"])) if mode == "prefill" else (lambda: unit.step(env["ids"], cache))


def unit_stages(unit, scope: str, mode: str, cache=None) -> list:
    return block_stages(unit, mode, cache) if scope == "block" else model_stages(unit, mode, cache)
