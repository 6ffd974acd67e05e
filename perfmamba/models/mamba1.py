"""The Mamba-1 mixer: in_proj -> causal conv1d + SiLU -> x_proj -> dt_proj + softplus -> selective scan
(with D skip) -> gate SiLU(z) -> out_proj.  Parameter names follow mamba_ssm and transformers."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from perfmamba import ops
from perfmamba.config import Mamba1Config
from perfmamba.errors import PerfMambaError
from perfmamba.models.cache import InferenceCache
from perfmamba.models.init import KeepSsmParamsFp32, dt_bias_init
from perfmamba.models.projection import project

# With the Triton kernels, prompts run as a multiple of this many steps (Mamba1Mixer.prefill_in_proj): 64
# 16-bit values are one 128-byte cache line, so that every activation row starts on one
STEP_MULTIPLE = 64
# ... or of 16 steps (16-byte vectors), whichever adds at most 1/PAD_AT_MOST more steps; else none.  Short
# prompts are then run as they are: padded to 64 steps, serving 64 prompts of 16 tokens peaked at 53.1 MiB
# on demo-mamba1 (a1c5281) against 34.8 MiB unpadded (59bdaa9; H200, docs/benchmarks/pruning-h200/)
PAD_AT_MOST = 16


def padded_steps(seqlen: int) -> int:
    """The number of steps a prompt of ``seqlen`` tokens runs as on the Triton kernels (see STEP_MULTIPLE)."""
    for multiple in (STEP_MULTIPLE, 16):
        steps = seqlen + (-seqlen % multiple)
        if (steps - seqlen) * PAD_AT_MOST <= seqlen:
            return steps
    return seqlen


class Mamba1Mixer(KeepSsmParamsFp32, nn.Module):
    def __init__(self, config: Mamba1Config, layer_idx: int, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.config, self.layer_idx, self.backend = config, layer_idx, backend
        d_model, d_inner, n = config.d_model, config.d_inner, config.layer_d_state(layer_idx)
        self.d_inner, self.d_state, self.dt_rank = d_inner, n, config.dt_rank
        kw = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=config.bias, **kw)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1,
                                bias=config.conv_bias, **kw)
        self.x_proj = nn.Linear(d_inner, config.dt_rank + 2 * n, bias=False, **kw)
        self.dt_proj = nn.Linear(config.dt_rank, d_inner, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(d_inner, n, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(d_inner, d_model, bias=config.bias, **kw)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real A (A[:, n] = -(n+1)), unit D, and dt_proj initialised for dt in [dt_min, dt_max]."""
        cfg = self.config
        std = self.dt_rank ** -0.5 * cfg.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        arange = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(arange).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def _conv_weight(self) -> torch.Tensor:  # (D, W)
        return self.conv1d.weight[:, 0, :]

    def _split_xproj(self, x_dbl: torch.Tensor):
        return torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)

    def forward(self, hidden: torch.Tensor, cache: Optional[InferenceCache] = None,
                length: Optional[int] = None) -> torch.Tensor:
        """hidden: (Bsz, L, d_model) -> (Bsz, L, d_model).  With a fresh cache, its states are filled.  The
        steps are methods of their own, which the profiler times one by one (profiling/stages.py).

        ``length``: hidden's rows past it are padding that the caller added (MambaLM pads a prompt once for
        all its layers, see ``prompt_steps``); the states are those after step ``length``, and the output
        keeps every row, so that the padded rows go on to the next layer.
        """
        if cache is not None and cache.seqlen_offset > 0:
            return torch.stack([self.step(hidden[:, t], cache) for t in range(hidden.shape[1])], dim=1)
        keep_padding = length is not None  # the padded rows go on to the next layer
        x, z, seqlen = self.prefill_in_proj(hidden, length)
        x, conv_state = self.prefill_conv(x, seqlen, with_state=cache is not None)
        x_dbl = self.prefill_x_proj(x)
        y, ssm_state = self.prefill_scan(x, self.prefill_dt_proj(x_dbl), x_dbl, z, seqlen,
                                         keep_padding=keep_padding)
        if cache is not None:
            cache.conv_states[self.layer_idx].copy_(conv_state)
            cache.ssm_states[self.layer_idx].copy_(ssm_state)
        return self.prefill_out_proj(y, seqlen, keep_padding=keep_padding)

    def prompt_steps(self, seqlen: int, device) -> int:
        """How many steps this mixer runs a prompt of ``seqlen`` tokens as: ``padded_steps`` on the Triton
        kernels (``prefill_in_proj`` says why), the prompt itself on the other backends."""
        return padded_steps(seqlen) if ops.resolve_backend(self.backend, device) == "triton" else seqlen

    def prefill_in_proj(self, hidden: torch.Tensor, length: Optional[int] = None):
        """(x, z, L): in_proj's output as channels-first views (Bsz, D, steps) each, and the sequence length.

        Channels-first activations straight out of the GEMMs (the weight times the transposed input, as
        mamba_ssm does): (Bsz, channels, L) with L contiguous is what the conv and the scan read, so no
        transposed copies are made.  With the Triton kernels a length that is not a multiple of
        ``STEP_MULTIPLE`` is run as ``steps = padded_steps(L)`` (L itself where padding would add more than
        1/PAD_AT_MOST of the steps: short prompts), the input padded with zeros after its end: rows L apart
        in 16-bit data start on no 16-byte vector, and cuBLAS then takes its slow unaligned GEMMs (on an
        H200 mamba-130m's prefill took 49.0 ms at L = 16383 against 18.3 ms at 16384; see
        docs/kernel_notes.md).  The model is causal, so the padding changes nothing before it; the scan
        stops at L and the conv state is taken there (``prefill_conv``).  Given ``length``, hidden is already
        padded (its rows past ``length`` are the caller's padding) and is taken as it is.
        """
        bsz, steps, _ = hidden.shape
        if length is not None:
            if not 0 < length <= steps:
                raise PerfMambaError(f"length must be in 1..{steps} (hidden's rows); got {length}")
            seqlen = length
        else:
            seqlen, steps = steps, self.prompt_steps(steps, hidden.device)
            if steps != seqlen:
                hidden = F.pad(hidden, (0, 0, 0, steps - seqlen))
        d = self.d_inner
        # in_proj: (2D, Bsz*steps) viewed as (Bsz, 2D, steps)
        xz = (self.in_proj.weight @ hidden.reshape(bsz * steps, -1).t()).view(2 * d, bsz, steps).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        return xz[:, :d], xz[:, d:], seqlen

    def prefill_conv(self, x: torch.Tensor, seqlen: int, with_state: bool):
        """(conv1d + SiLU of x, the conv state after step L (Bsz, D, W), or None without ``with_state``)."""
        own_state = with_state and x.shape[-1] == seqlen  # the kernel's final state is the one at L
        y = ops.causal_conv1d(x, self._conv_weight(), self.conv1d.bias, activation="silu",
                              return_final_state=own_state, backend=self.backend)
        if own_state or not with_state:
            return y if own_state else (y, None)
        width = self.conv1d.kernel_size[0]  # the last W inputs before the padding (zeros before the start)
        return y, F.pad(x[..., max(0, seqlen - width):seqlen], (max(0, width - seqlen), 0))

    def prefill_x_proj(self, x: torch.Tensor) -> torch.Tensor:
        """(Bsz, R + 2N, steps).  A batched GEMM writes it in this layout; ``weight @ x`` would write it
        transposed and then copy it (on an H200, 2 x 24 copies took 4.2 of mamba-130m's 18.1 ms at L=16384)."""
        return torch.bmm(self.x_proj.weight.expand(x.shape[0], -1, -1), x)

    def prefill_dt_proj(self, x_dbl: torch.Tensor) -> torch.Tensor:
        """(Bsz, D, steps); the bias is added inside the scan."""
        return torch.bmm(self.dt_proj.weight.expand(x_dbl.shape[0], -1, -1), x_dbl[:, :self.dt_rank])

    def prefill_scan(self, x, dt, x_dbl, z, seqlen: int, keep_padding: bool = False):
        """(y (Bsz, D, steps), the state after step L (Bsz, D, N) fp32): the selective scan with D and the
        gate.  With ``keep_padding`` (the caller padded the prompt, and the padding's rows go on through the
        model) y past step L is zeros; otherwise those steps are left as the scan leaves them, since
        ``prefill_out_proj`` drops their rows."""
        r, n = self.dt_rank, self.d_state
        y = torch.empty_like(x, memory_format=torch.contiguous_format) if x.shape[-1] != seqlen else None
        y_valid, state = ops.selective_scan(x, dt, self.neg_exp_A(), x_dbl[:, r:r + n], x_dbl[:, r + n:], D=self.D,
                                            z=z, delta_bias=self.dt_proj.bias, delta_softplus=True,
                                            return_last_state=True, backend=self.backend, length=seqlen, out=y)
        if y is not None and keep_padding:  # the steps no scan writes (past L; on the Triton kernels past L's
            # next multiple of 16): zeros, so that the padding's rows, which go on through the model
            # (MambaLM.prompt_steps), hold no leftover memory
            y[..., seqlen:].zero_()
        return (y_valid if y is None else y), state

    def prefill_out_proj(self, y: torch.Tensor, seqlen: int, keep_padding: bool = False) -> torch.Tensor:
        """(Bsz, L, d_model) from y (Bsz, D, steps).  y transposed is the GEMM's operand, not a copy (batch 1);
        all the steps, so that its rows stay whole (at L rows cuBLAS took an unaligned GEMM: 7.5 of the
        21.1 ms of mamba-130m's prefill at L = 16383 on an H200), and the padding's rows are dropped after,
        unless ``keep_padding`` (the caller padded the prompt: ``forward``'s ``length``)."""
        out = self.out_proj(y.transpose(1, 2))
        return out if keep_padding or out.shape[1] == seqlen else out[:, :seqlen]

    def step(self, hidden: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token.  hidden: (Bsz, d_model) -> (Bsz, d_model); the layer's cache entries advance in place.
        Between in_proj and out_proj (conv, x_proj, dt_proj, the state update, the gate) it is one op: two
        kernels on the GPU at small batches."""
        x, z = project(self.in_proj, hidden, self.backend).chunk(2, dim=-1)  # (Bsz, D) each
        li = self.layer_idx
        if ops.resolve_backend(self.backend, hidden.device) == "triton":
            self._keep_x_proj_rows_pitched()
        y = ops.mamba1_mixer_step(x, z, cache.conv_states[li], self._conv_weight(), self.conv1d.bias,
                                  self.x_proj.weight, cache.ssm_states[li], self.neg_exp_A(), self.D,
                                  self.dt_proj.weight, self.dt_proj.bias, backend=self.backend)
        return project(self.out_proj, y, self.backend)

    def _keep_x_proj_rows_pitched(self) -> None:
        """Move x_proj's weight (R + 2N, D) into zeroed storage of ``mamba1_step.row_pitch(R + 2N)`` rows, once,
        so that the decode step's GEMM can run as one of that many outputs (``mamba1_step.x_proj_rows``: at
        R + 2N = 44 cuBLAS's kernel for 44 outputs took 1.7x its time for 48).  The parameter stays the same
        object with the same values, shape and contiguous layout (checkpoints, optimizers and in-place updates
        see no difference; a CUDA graph reads the live weight); only its storage is 8 rows or fewer longer.
        Not while a CUDA graph is being captured (the storage would come from the graph's private pool; the
        capture's warm-up has done it), nor for a model made in inference mode (its weights are inference
        tensors; the step then runs the GEMM as it is).  The new storage is a normal tensor even when this
        runs in inference mode, so that the weight stays usable by autograd."""
        from perfmamba.ops.triton.mamba1_step import row_pitch, wants_pitched_storage
        weight = self.x_proj.weight
        if (weight.is_inference() or (weight.is_cuda and torch.cuda.is_current_stream_capturing())
                or not wants_pitched_storage(weight)):
            return
        rows, cols = weight.shape
        with torch.inference_mode(False), torch.no_grad():
            storage = weight.new_zeros(row_pitch(rows), cols)
            storage[:rows].copy_(weight)
            weight.data = storage[:rows]
