"""Analytic cost model: FLOPs and bytes moved per component of a Mamba-1 / Mamba-2 block or model.

One description per component serves prefill and decode alike: a call processes ``tokens`` tokens
(batch * L in prefill, batch in decode) of sequences that advance ``span`` steps (L in prefill, 1 in
decode), and decode additionally reads the carried state that prefill starts from zero.

Conventions (documented here once; the report links to this docstring):

* FLOPs count a multiply-add as 2.  ``matmul_flops`` is the part done as matrix products or convolutions,
  exactly what ``torch.utils.flop_counter`` counts for nn.Linear (bias not counted) and conv1d;
  ``flops`` adds the elementwise work (bias, activations, norms) with the per-element constants below.
* Bytes are the compulsory traffic of a fused kernel: every weight, every input activation and every
  output read or written once; states are fp32.  Backends that materialise intermediates (the "ref"
  scans) move more than this, which the achieved-bandwidth column then shows as "more than compulsory".
* Mamba-1 selective scan: ``SCAN_FLOPS_PER_STATE`` = 9 FLOPs per (token, channel, state), the
  9*B*L*D*N of Gu & Dao (2023): discretisation exp(dt*A) and dt*B*u, the update h = dA*h + dBu, the
  readout C.h.  Per (token, channel) on top: dt bias + softplus, the D skip, and the SiLU(z) gate, which
  our ops fuse into the scan; gating is therefore attributed to "ssm" for Mamba-1 (see components.py).
* Mamba-2 SSD, chunked with chunk length Q = min(chunk, span), where chunk is what the backend runs
  (``ops.ssd_tiles``; the config's chunk_size when not given): the plain-torch SSD's
  ``ops.ref_chunk_length`` on a CPU, the Triton kernel's step tile (32 or 64) on a GPU, 1 for the loop;
  Q = 1 in decode, where the chunked form is the recurrence.  Per token: 2*Q*(S*N + H*P) for the
  intra-chunk C.B^T scores and scores @ x, with S the (Q, Q) score tiles computed per chunk (dense
  tiles, as the kernels compute them; S = H by default, since both of our backends compute the scores
  per head rather than once per group as mamba_ssm's kernels do, and the Triton kernel once per program
  of BLOCK_P channels, H * ceil(P / BLOCK_P)); 2*Q*H for the decay mask; 4*H*P*N for each chunk's state
  (B^T x) and the readout of the entering state (C h); plus 2*H*P*N per chunk to pass the state on.
  The SSD's contractions count as matmul FLOPs (they run on tensor cores in the kernels).
* Decode additionally reads and writes the carried conv state (d_conv inputs per channel) and SSM state;
  prefill writes the final states once (the mixers return them for the cache).
* The Mamba-2 "gate_norm" is the gated RMSNorm: y * SiLU(z), then RMSNorm per group.
* "norm" is the block's pre-norm RMSNorm plus the residual add (kept in fp32 when residual_in_fp32); a
  whole model runs each residual add fused into the next norm (one kernel: mixer output and residual in,
  new residual and normalized input out), and "norm" also holds the final norm.  "embedding" is a row
  gather; "lm_head" a GEMM over the vocab.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from perfmamba.profiling.components import profiled_components

# Per-element FLOP constants (see the module docstring).
SCAN_FLOPS_PER_STATE = 9  # Mamba-1: exp(dt*A), dt*B*u, dA*h + dBu, C.h   (Gu & Dao's 9*B*L*D*N)
SILU_FLOPS = 4  # x * sigmoid(x): neg, exp, add, div
GATE_FLOPS = SILU_FLOPS + 1  # y * SiLU(z)
DT_PREP_FLOPS = 5  # dt + bias, softplus (exp, log1p)
D_SKIP_FLOPS = 2  # y + D * u
RMS_FLOPS = 4  # square, mean, scale by rsqrt, scale by weight (the rsqrt itself is per row)

STATE_BYTES = 4  # SSM states are fp32 whatever the model dtype
ID_BYTES = 8  # int64 token ids


@dataclass(frozen=True)
class Cost:
    """Analytic work of one component for one call (plain numbers)."""

    flops: float = 0.0
    matmul_flops: float = 0.0
    weight_bytes: float = 0.0
    act_read_bytes: float = 0.0
    act_write_bytes: float = 0.0
    state_read_bytes: float = 0.0
    state_write_bytes: float = 0.0

    @property
    def bytes(self) -> float:
        return (self.weight_bytes + self.act_read_bytes + self.act_write_bytes + self.state_read_bytes
                + self.state_write_bytes)

    @property
    def state_bytes(self) -> float:
        return self.state_read_bytes + self.state_write_bytes

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bytes"] = self.bytes
        return d


@dataclass(frozen=True)
class Work:
    """What one call processes.  ``act_bytes``: model dtype size; ``res_bytes``: residual stream dtype size;
    ``in_bytes``: dtype size of the unit's input hidden state."""

    mode: str  # "prefill" | "decode"
    batch: int
    seqlen: int  # prompt length L (prefill) or context length already in the cache (decode)
    act_bytes: int
    res_bytes: int
    in_bytes: int

    @property
    def span(self) -> int:
        """Steps each sequence advances in this call (the scan length)."""
        return self.seqlen if self.mode == "prefill" else 1

    @property
    def tokens(self) -> int:
        return self.batch * self.span

    @property
    def carries_state(self) -> bool:
        return self.mode == "decode"


# ---------------------------------------------------------------------------------------- building blocks
def linear_cost(w: Work, d_in: int, d_out: int, bias: bool) -> Cost:
    mm = 2.0 * w.tokens * d_in * d_out
    return Cost(flops=mm + (w.tokens * d_out if bias else 0), matmul_flops=mm,
                weight_bytes=(d_in * d_out + (d_out if bias else 0)) * w.act_bytes,
                act_read_bytes=w.tokens * d_in * w.act_bytes, act_write_bytes=w.tokens * d_out * w.act_bytes)


def conv_cost(w: Work, channels: int, d_conv: int, bias: bool) -> Cost:
    """Causal depthwise conv1d + SiLU over ``channels``; the conv state (d_conv inputs) carried in decode."""
    mm = 2.0 * w.tokens * channels * d_conv
    state = w.batch * channels * d_conv * w.act_bytes
    return Cost(flops=mm + w.tokens * channels * ((1 if bias else 0) + SILU_FLOPS), matmul_flops=mm,
                weight_bytes=channels * (d_conv + (1 if bias else 0)) * w.act_bytes,
                act_read_bytes=w.tokens * channels * w.act_bytes, act_write_bytes=w.tokens * channels * w.act_bytes,
                state_read_bytes=state if w.carries_state else 0, state_write_bytes=state)


def rmsnorm_cost(w: Work, dim: int, in_bytes: int) -> Cost:
    return Cost(flops=w.tokens * dim * RMS_FLOPS, weight_bytes=dim * w.act_bytes,
                act_read_bytes=w.tokens * dim * in_bytes, act_write_bytes=w.tokens * dim * w.act_bytes)


def add_norm_cost(w: Work, d_model: int, with_residual: bool) -> Cost:
    """A whole model's fused residual add + RMSNorm (``add_rms_norm``): reads the mixer output (or, before
    layer 0, the embedding) and the residual stream, writes the new residual and the normalized input."""
    residual_read = w.tokens * d_model * w.res_bytes if with_residual else 0
    return Cost(flops=w.tokens * d_model * (RMS_FLOPS + (1 if with_residual else 0)),
                weight_bytes=d_model * w.act_bytes,
                act_read_bytes=w.tokens * d_model * w.act_bytes + residual_read,
                act_write_bytes=w.tokens * d_model * (w.act_bytes + w.res_bytes))


def block_norm_cost(w: Work, d_model: int, in_bytes: int) -> Cost:
    """Pre-norm RMSNorm + the residual add (residual + mixer output -> residual dtype)."""
    residual = Cost(flops=w.tokens * d_model,
                    act_read_bytes=w.tokens * d_model * (in_bytes + w.act_bytes),
                    act_write_bytes=w.tokens * d_model * w.res_bytes)
    return rmsnorm_cost(w, d_model, in_bytes) + residual


# ---------------------------------------------------------------------------------------- the two SSMs
def selective_scan_cost(w: Work, d_inner: int, d_state: int) -> Cost:
    """Mamba-1 scan with the D skip and the SiLU(z) gate fused (B, C shared by all channels: one group)."""
    state = w.batch * d_inner * d_state * STATE_BYTES
    per_channel = SCAN_FLOPS_PER_STATE * d_state + DT_PREP_FLOPS + D_SKIP_FLOPS + GATE_FLOPS
    return Cost(flops=w.tokens * d_inner * per_channel,
                weight_bytes=(d_inner * d_state + 2 * d_inner) * STATE_BYTES,  # A, D, dt bias (fp32)
                act_read_bytes=w.tokens * (3 * d_inner + 2 * d_state) * w.act_bytes,  # u, dt, z; B, C
                act_write_bytes=w.tokens * d_inner * w.act_bytes,
                state_read_bytes=state if w.carries_state else 0, state_write_bytes=state)


def ssd_cost(w: Work, nheads: int, headdim: int, ngroups: int, d_state: int, chunk: int,
             score_tiles: int | None = None) -> Cost:
    """Mamba-2 SSD (chunked; Q = 1 is the decode recurrence), D skip and dt bias/softplus included;
    ``score_tiles``: the C B^T score tiles per chunk (default: one per head)."""
    H, P, G, N = nheads, headdim, ngroups, d_state
    S = H if score_tiles is None else score_tiles
    Q = max(1, min(chunk, w.span))
    chunks = w.batch * math.ceil(w.span / Q)
    matmul = w.tokens * (2.0 * Q * (S * N + H * P) + 4.0 * H * P * N)
    elementwise = w.tokens * (2 * Q * H + H * DT_PREP_FLOPS + H * P * D_SKIP_FLOPS) + chunks * 2.0 * H * P * N
    state = w.batch * H * P * N * STATE_BYTES
    return Cost(flops=matmul + elementwise, matmul_flops=matmul,
                weight_bytes=3 * H * STATE_BYTES,  # A, D, dt bias (fp32)
                act_read_bytes=w.tokens * (H * P + H + 2 * G * N) * w.act_bytes,  # x, dt, B, C
                act_write_bytes=w.tokens * H * P * w.act_bytes,
                state_read_bytes=state if w.carries_state else 0, state_write_bytes=state)


def gated_rmsnorm_cost(w: Work, dim: int) -> Cost:
    return Cost(flops=w.tokens * dim * (GATE_FLOPS + RMS_FLOPS), weight_bytes=dim * w.act_bytes,
                act_read_bytes=2 * w.tokens * dim * w.act_bytes, act_write_bytes=w.tokens * dim * w.act_bytes)


# ---------------------------------------------------------------------------------------- per component
def mixer_costs(config, layer: int, w: Work, ssd_tiles: Callable | None = None) -> dict:
    """{component: Cost} of one layer's mixer (block_components order); ``ssd_tiles``: see component_costs."""
    cfg, n = config, config.layer_d_state(layer)
    if cfg.family == "mamba1":
        D, R = cfg.d_inner, cfg.dt_rank
        dt_proj = linear_cost(w, R, D, False)  # its bias is added inside the scan
        ssm = selective_scan_cost(w, D, n)
        if w.mode == "decode":
            # Mamba1Mixer.step projects dt inside the state update: dt_proj's GEMV and weight join ssm, which
            # then reads the low-rank dt (R values a token) instead of the projected one (D values)
            ssm = dataclasses.replace(
                ssm, flops=ssm.flops + dt_proj.flops, matmul_flops=ssm.matmul_flops + dt_proj.matmul_flops,
                weight_bytes=ssm.weight_bytes + dt_proj.weight_bytes,
                act_read_bytes=ssm.act_read_bytes + w.tokens * (R - D) * w.act_bytes)
            dt_proj = Cost()  # fused into ssm
        return {
            "in_proj": linear_cost(w, cfg.d_model, 2 * D, cfg.bias),
            "conv1d": conv_cost(w, D, cfg.d_conv, cfg.conv_bias),
            "x_proj": linear_cost(w, D, R + 2 * n, False),
            "dt_proj": dt_proj,
            "ssm": ssm,
            "gate_norm": Cost(),  # fused into ssm
            "out_proj": linear_cost(w, D, cfg.d_model, cfg.bias),
        }
    D, G = cfg.d_inner, cfg.ngroups
    return {
        "in_proj": linear_cost(w, cfg.d_model, 2 * D + 2 * G * n + cfg.nheads, cfg.bias),
        "conv1d": conv_cost(w, D + 2 * G * n, cfg.d_conv, cfg.conv_bias),
        "ssm": ssd_cost(w, cfg.nheads, cfg.headdim, G, n, *(ssd_tiles(n) if ssd_tiles else (cfg.chunk_size,))),
        "gate_norm": gated_rmsnorm_cost(w, D),
        "out_proj": linear_cost(w, D, cfg.d_model, cfg.bias),
    }


def make_work(config, mode: str, batch: int, seqlen: int, dtype_bytes: int, in_bytes: int | None = None) -> Work:
    res_bytes = 4 if config.residual_in_fp32 else dtype_bytes
    return Work(mode=mode, batch=batch, seqlen=seqlen, act_bytes=dtype_bytes, res_bytes=res_bytes,
                in_bytes=dtype_bytes if in_bytes is None else in_bytes)


def component_costs(config, scope: str, mode: str, batch: int, seqlen: int, dtype_bytes: int,
                    layer: int = 0, ssd_tiles: Callable | None = None) -> dict:
    """{component: Cost} in ``profiled_components`` order, for one block (layer ``layer``, fed in the model
    dtype) or the whole model (all layers summed, embedding, final norm and head).  ``ssd_tiles``: a
    layer's d_state -> (chunk, score tiles per chunk) of the Mamba-2 SSD that runs (``ops.ssd_tiles``);
    default: the config's ``chunk_size``, one score tile per head."""
    w = make_work(config, mode, batch, seqlen, dtype_bytes)
    names = profiled_components(config.family, scope)
    totals = {name: Cost() for name in names}
    if scope == "block":
        totals["norm"] = block_norm_cost(w, config.d_model, w.in_bytes)
        totals.update(mixer_costs(config, layer, w, ssd_tiles))
        return totals
    totals["embedding"] = Cost(weight_bytes=w.tokens * config.d_model * w.act_bytes, act_read_bytes=w.tokens * ID_BYTES,
                               act_write_bytes=w.tokens * config.d_model * w.act_bytes)
    # as MambaLM runs them: each residual add fused into the next norm (layer 0's has no residual yet)
    for i in range(config.n_layer):
        totals["norm"] = totals["norm"] + add_norm_cost(w, config.d_model, with_residual=i > 0)
        for name, cost in mixer_costs(config, i, w, ssd_tiles).items():
            totals[name] = totals[name] + cost
    totals["norm"] = totals["norm"] + add_norm_cost(w, config.d_model, with_residual=True)  # the final norm
    totals["lm_head"] = linear_cost(w, config.d_model, config.vocab_size, False)
    return totals


def state_cache_bytes(config, batch: int, dtype_bytes: int, layers=None) -> int:
    """Inference-cache bytes (conv state in the model dtype, SSM state fp32) for ``layers`` (default: all)."""
    total = 0
    for i in (range(config.n_layer) if layers is None else layers):
        n = config.layer_d_state(i)
        if config.family == "mamba1":
            total += config.d_inner * config.d_conv * dtype_bytes + config.d_inner * n * STATE_BYTES
        else:
            conv_dim = config.d_inner + 2 * config.ngroups * n
            total += conv_dim * config.d_conv * dtype_bytes + config.nheads * config.headdim * n * STATE_BYTES
    return total * batch
