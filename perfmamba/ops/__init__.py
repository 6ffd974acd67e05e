"""The one dispatch point for every SSM op: picks a backend and calls it.

Backends:
  ``"ref"``    plain torch, runs anywhere, differentiable (chunked scans; the conv and one-step updates);
  ``"loop"``   plain torch sequential loops over time: the ground truth, slow, for tests and benchmarks;
  ``"triton"`` the Triton GPU kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
  ``"auto"``   Triton for CUDA tensors when triton imports, otherwise ``"ref"``.

This module is the only place with optional imports (triton).  Shapes follow mamba_ssm's
``selective_scan_fn`` and ``mamba_chunk_scan_combined``; each function documents them.
"""

from __future__ import annotations

import functools
import os

import torch

from perfmamba.errors import PerfMambaError
from perfmamba.ops.conv_ref import causal_conv1d_ref, causal_conv1d_update_ref
from perfmamba.ops.decode_ref import mamba1_mixer_step_ref
from perfmamba.ops.norm_ref import add_rms_norm_ref, rms_norm_ref
from perfmamba.ops.scan_blocked import selective_scan_blocked
from perfmamba.ops.scan_chunked import selective_scan_chunked
from perfmamba.ops.scan_ref import selective_scan_ref, selective_state_update_ref, ssd_loop_ref, ssd_ref

BACKENDS = ("auto", "ref", "loop", "triton")

__all__ = ["BACKENDS", "selective_scan", "ssd", "causal_conv1d", "causal_conv1d_update", "selective_state_update",
           "rms_norm", "add_rms_norm", "mamba1_mixer_step", "linear", "resolve_backend", "ssd_tiles",
           "triton_available", "first_steps"]


@functools.lru_cache(maxsize=None)
def _triton_module():
    """The perfmamba.ops.triton package, or None when triton cannot be imported."""
    try:
        import triton  # noqa: F401
        from perfmamba.ops import triton as triton_ops
    except ImportError:
        return None
    return triton_ops


def triton_available() -> bool:
    return _triton_module() is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device | str | None) -> str:
    """The concrete backend ("ref" | "loop" | "triton") for tensors on ``device``; bad choices are one-line errors."""
    if backend not in BACKENDS:
        raise PerfMambaError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    is_cuda = torch.device(device).type == "cuda" if device is not None else False
    if backend == "auto":
        return "triton" if is_cuda and triton_available() else "ref"
    if backend == "triton":
        if not triton_available():
            raise PerfMambaError("backend='triton' needs the triton package; install it (pip install triton) "
                                 "or use backend='ref'")
        if not is_cuda and not _interpreting():
            raise PerfMambaError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels "
                                 "on the CPU); use backend='ref' or 'auto' on a CPU")
    return backend


def first_steps(n: int, *tensors) -> list:
    """Views of the first ``n`` steps (the last dimension) of each tensor; None stays None: a scan call's
    inputs padded past the sequence, as the sequence's own (``selective_scan``'s ``length``)."""
    return [t[..., :n] if t is not None else None for t in tensors]


def _plain_scan(which: str, u, delta, A, B, C, kwargs):
    """The plain-torch scan for a "loop" or "ref" call: "ref" on CPU tensors is the step-by-step
    ``selective_scan_blocked`` where no gradient is needed (several times faster there:
    ``perfmamba/ops/scan_blocked.py``), and otherwise the chunked closed form, which autograd
    differentiates and which on a GPU takes ~L/32 x 10 launches instead of 2 L."""
    if which == "loop":
        return selective_scan_ref
    tensors = (u, delta, A, B, C, kwargs["D"], kwargs["z"], kwargs["delta_bias"])
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return selective_scan_blocked if u.device.type == "cpu" and not needs_grad else selective_scan_chunked


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto", length=None, out=None):
    """Mamba-1 selective scan.

    u, delta, z: (Bsz, D, L); A: (D, N); B, C: (Bsz, N, L) or (Bsz, G, N, L); D, delta_bias: (D,).
    Returns y (Bsz, D, L) in u's dtype, and the final state (Bsz, D, N) fp32 when return_last_state.
    ``length`` (default L): scan only the first ``length`` steps (y has ``length``; inputs padded past the
    sequence by the caller, finite there, which the Triton kernel then reads as they lie).  ``out``
    (Bsz, D, L): y is written into its first ``length`` steps and returned as a view of them.
    """
    _check_scan_shapes(u, delta, A, B, C, z)
    if length is not None and not 0 <= length <= u.shape[-1]:
        raise PerfMambaError(f"selective_scan: length {length} is outside 0..{u.shape[-1]}, the inputs' number of "
                             "steps; pass at most L")
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  return_last_state=return_last_state)
    which = resolve_backend(backend, u.device)
    if out is not None and out.shape != u.shape:
        raise PerfMambaError(f"selective_scan: out must have u's shape {tuple(u.shape)}; got {tuple(out.shape)}")
    if which == "triton":
        return _triton_module().selective_scan_triton(u, delta, A, B, C, **kwargs, length=length, out=out)
    if length is not None and length < u.shape[-1]:
        u, delta, B, C, kwargs["z"] = first_steps(length, u, delta, B, C, z)
    result = _plain_scan(which, u, delta, A, B, C, kwargs)(u, delta, A, B, C, **kwargs)
    if out is None:
        return result
    y = out[..., :u.shape[-1]].copy_(result[0] if return_last_state else result)
    return (y, result[1]) if return_last_state else y


# The chunk length of the plain-torch SSD on a CPU.  ``chunk_size`` sets only the granularity of the chunked
# algorithm (the result is the same up to rounding), and there the quadratic in-chunk work, L x T x (N + P)
# per head, is what takes the time.  Measured on a 2-core x86_64 CPU (torch 2.13, fp32, 2026-12-02; one
# mamba2-130m layer's SSD, 24 heads x 64, N = 128, batch 1): T = 256 / 128 / 64 / 32 took 90.0 / 56.5 /
# 39.7 / 37.8 ms at L = 1024, 222 / 117 / 83 / 96 ms at 2048, and at L = 64, which T = 256 pads to one
# whole chunk, 22.7 / 5.3 / 1.8 / 2.1 ms; forward + backward at demo-mamba2's heads (8 x 64, N = 64, batch
# 8, L = 1024) 851 ms at 256 against 305 at 64.  Outputs and gradients differ by ~1e-7 (relative).
# Not on a GPU, where at batch 1 long chunks won (fewer passes of the chunk loop; not profiled).  On an H200 (bf16,
# 2026-12-02, docs/benchmarks/tuning-h200/ref-chunk-gpu.txt; medians of three rounds) the same layer at
# batch 1 took 1.74 / 1.89 / 2.50 / 2.91 ms at L = 1024 and 5.7 / 6.9 / 11.9 / 21.4 ms at 16384 for T =
# 256 / 128 / 64 / 32; only the largest shape, batch 8 at L = 4096, favoured short chunks (10.8 / 8.0 /
# 6.9 / 7.7 ms), so on a GPU the caller's chunk_size stands.
CPU_REF_CHUNK = 64


def ref_chunk_length(chunk_size: int, seqlen: int, device: torch.device) -> int:
    """The chunk length ``ssd`` runs ``ssd_ref`` with: ``chunk_size`` on a GPU (see CPU_REF_CHUNK); on a
    CPU at most CPU_REF_CHUNK steps, and no longer than the sequence's next power of two (a chunk past the
    end is zero padding that the quadratic form still multiplies)."""
    if device.type != "cpu":
        return int(chunk_size)
    return max(1, min(int(chunk_size), CPU_REF_CHUNK, 1 << max(0, int(seqlen) - 1).bit_length()))


def ssd_tiles(backend: str, chunk_size: int, bsz: int, seqlen: int, nheads: int, headdim: int,
              n_state: int, device: torch.device, dtype: torch.dtype) -> tuple[int, int]:
    """(Q, S): how the SSD that ``backend`` (concrete) runs splits this shape's work, for the cost model.
    Q is the chunk of its in-chunk quadratic form: 1 for "loop" (the recurrence), ``ref_chunk_length`` for
    "ref", the kernel's step tile for "triton" (``ssd.tiles_run``: what ran in x's ``dtype``, else what
    would).  S is how many (Q, Q) C B^T score tiles each chunk computes: one per head in both plain-torch
    forms (B and C are broadcast to the heads) and one per program of the Triton kernel (per block of a
    head's channels)."""
    if backend == "triton":
        block_t, block_p = _triton_module().ssd.tiles_run(bsz, seqlen, nheads, headdim, n_state, chunk_size, dtype)
        return block_t, nheads * -(-headdim // block_p)
    return (1 if backend == "loop" else ref_chunk_length(chunk_size, seqlen, device)), nheads


def ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
        return_final_states=False, dt_limit=(0.0, float("inf")), backend="auto"):
    """Mamba-2 SSD (state-space duality) scan.

    x, z: (Bsz, L, H, P); dt: (Bsz, L, H); A: (H,); B, C: (Bsz, L, G, N); D: (H,) or (H, P);
    dt_bias: (H,); initial_states: (Bsz, H, P, N).  Returns y (Bsz, L, H, P) in x's dtype, and the final
    state (Bsz, H, P, N) fp32 when return_final_states.
    """
    _check_ssd_shapes(x, dt, A, B, C, z, initial_states)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, initial_states=initial_states,
                  return_final_states=return_final_states, dt_limit=tuple(dt_limit))
    which = resolve_backend(backend, x.device)
    if which == "triton":
        return _triton_module().ssd_triton(x, dt, A, B, C, chunk_size, **kwargs)
    if which == "loop":
        return ssd_loop_ref(x, dt, A, B, C, **kwargs)
    return ssd_ref(x, dt, A, B, C, ref_chunk_length(chunk_size, x.shape[1], x.device), **kwargs)


def causal_conv1d(x, weight, bias=None, activation=None, return_final_state=False, initial_state=None,
                  backend="auto"):
    """Causal depthwise conv1d.  x: (Bsz, D, L); weight: (D, W); bias: (D,); state (Bsz, D, W)."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise PerfMambaError(f"causal_conv1d: x must be (batch, D, L) and weight (D, W); got x {tuple(x.shape)}, "
                             f"weight {tuple(weight.shape)}")
    which = resolve_backend(backend, x.device)
    fn = _triton_module().causal_conv1d_triton if which == "triton" else causal_conv1d_ref
    return fn(x, weight, bias, activation=activation, return_final_state=return_final_state,
              initial_state=initial_state)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend="auto"):
    """One conv step.  x: (Bsz, D); conv_state: (Bsz, D, W), updated in place.  Returns (Bsz, D)."""
    _check_conv_update_shapes(x, conv_state, weight, bias)
    which = resolve_backend(backend, x.device)
    fn = _triton_module().causal_conv1d_update_triton if which == "triton" else causal_conv1d_update_ref
    return fn(x, conv_state, weight, bias, activation=activation)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           dt_limit=(0.0, float("inf")), dt_proj_weight=None, backend="auto"):
    """One SSM decode step of either family (shapes in ``selective_state_update_ref``); state updated in place.

    Mamba-1 only: with ``dt_proj_weight`` (D, R), ``dt`` is the low-rank (batch, R) input of dt_proj and
    dt = dt @ dt_proj_weight^T (rounded to dt's dtype, as F.linear returns it) is computed in the same
    kernel on the GPU -- one launch fewer per layer and token.
    """
    which = resolve_backend(backend, x.device)
    if dt_proj_weight is not None:
        if (state.dim() != 3 or dt_proj_weight.dim() != 2 or dt.dim() != 2
                or tuple(dt_proj_weight.shape) != (state.shape[1], dt.shape[1])):
            raise _shape_error("selective_state_update", "with dt_proj_weight: Mamba-1 state (batch, D, N), "
                               "dt (batch, R), dt_proj_weight (D, R)",
                               dict(state=state, dt=dt, dt_proj_weight=dt_proj_weight))
        if which != "triton":
            dt = torch.nn.functional.linear(dt, dt_proj_weight)
            dt_proj_weight = None
    # with the weight, dt's (batch, R) shape was checked above
    _check_state_update_shapes(state, x, dt if dt_proj_weight is None else None, A, B, C, z)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=tuple(dt_limit))
    if which == "triton":
        return _triton_module().selective_state_update_triton(state, x, dt, A, B, C, dt_proj_weight=dt_proj_weight,
                                                              **kwargs)
    return selective_state_update_ref(state, x, dt, A, B, C, **kwargs)


def rms_norm(x, weight, eps, z=None, group_size=None, backend="auto"):
    """RMSNorm of x (..., dim) with weight (dim,), in weight's dtype; with z, of x * SiLU(z) (Mamba-2's gated
    norm); with group_size, statistics per group of that many channels."""
    dim = x.shape[-1]
    group_size = group_size or dim
    if tuple(weight.shape) != (dim,) or (z is not None and z.shape != x.shape) or dim % group_size:
        raise _shape_error("rms_norm", f"x, z (..., dim); weight (dim,); group_size dividing dim (got {group_size})",
                           dict(x=x, z=z, weight=weight))
    which = resolve_backend(backend, x.device)
    fn = _triton_module().rms_norm_triton if which == "triton" else rms_norm_ref
    return fn(x, weight, eps, z=z, group_size=group_size)


def add_rms_norm(x, residual, weight, eps, residual_dtype=None, backend="auto"):
    """The pre-norm residual step as one op: r = residual + x (x alone when ``residual`` is None; cast to
    ``residual_dtype`` when given), returns (rms_norm(r), r).  One kernel on the GPU instead of an add and
    a norm, which matters in a launch-bound decode step."""
    dim = x.shape[-1]
    if tuple(weight.shape) != (dim,) or (residual is not None and residual.shape != x.shape):
        raise _shape_error("add_rms_norm", "x, residual (..., dim); weight (dim,)",
                           dict(x=x, residual=residual, weight=weight))
    which = resolve_backend(backend, x.device)
    fn = _triton_module().add_rms_norm_triton if which == "triton" else add_rms_norm_ref
    return fn(x, residual, weight, eps, residual_dtype=residual_dtype)


def linear(x, weight, bias=None, backend="auto"):
    """``torch.nn.functional.linear`` for the decode step's projections.  With the Triton backend and 1 to
    ``gemv.MAX_ROWS`` (2) rows (x (rows, K), weight (N, K)), the faster of cuBLAS and a Triton GEMV for the
    shape, timed once (``triton/gemv.py``); otherwise, and on the reference backend, F.linear itself."""
    if resolve_backend(backend, x.device) == "triton":
        return _triton_module().linear_triton(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def mamba1_mixer_step(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, ssm_state, A, D, dt_proj_weight,
                      dt_proj_bias, backend="auto"):
    """Mamba-1's decode step between in_proj and out_proj (``mamba1_mixer_step_ref``): x, z (batch, D);
    conv_state (batch, D, W) and ssm_state (batch, D, N), updated in place; conv_weight (D, W); x_proj_weight
    (R + 2N, D); A (D, N); dt_proj_weight (D, R).  Returns the gated y (batch, D).  On the GPU, two kernels
    instead of three up to batch ``mamba1_step.MAX_BATCH`` (``triton/mamba1_step.py``), the three beyond."""
    bsz, dim = x.shape if x.dim() == 2 else (None, None)
    n_state = ssm_state.shape[-1] if ssm_state.dim() == 3 else None
    rank = dt_proj_weight.shape[-1] if dt_proj_weight.dim() == 2 else None
    ok = (x.dim() == 2 and z.shape == x.shape and conv_state.dim() == 3 and tuple(conv_state.shape[:2]) == (bsz, dim)
          and tuple(conv_weight.shape) == (dim, conv_state.shape[2]) and ssm_state.dim() == 3
          and tuple(ssm_state.shape[:2]) == (bsz, dim) and tuple(A.shape) == (dim, n_state)
          and dt_proj_weight.dim() == 2 and dt_proj_weight.shape[0] == dim
          and tuple(x_proj_weight.shape) == (rank + 2 * n_state, dim))
    if not ok:
        raise _shape_error("mamba1_mixer_step", "x, z (batch, D); conv_state (batch, D, W); conv_weight (D, W); "
                           "x_proj_weight (R + 2N, D); ssm_state (batch, D, N); A (D, N); dt_proj_weight (D, R)",
                           dict(x=x, z=z, conv_state=conv_state, conv_weight=conv_weight, x_proj_weight=x_proj_weight,
                                ssm_state=ssm_state, A=A, dt_proj_weight=dt_proj_weight))
    args = (x, z, conv_state, conv_weight, conv_bias, x_proj_weight, ssm_state, A, D, dt_proj_weight, dt_proj_bias)
    if resolve_backend(backend, x.device) != "triton":
        return mamba1_mixer_step_ref(*args)
    return _triton_module().mamba1_mixer_step_triton(*args)


# ---------------------------------------------------------------------------------------- shape checks
def _shape_error(op: str, expected: str, got: dict) -> PerfMambaError:
    shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in got.items() if v is not None)
    return PerfMambaError(f"{op}: expected {expected}; got {shown}")


def _check_scan_shapes(u, delta, A, B, C, z):
    expected = "u, delta, z (batch, D, L); A (D, N); B, C (batch, N, L) or (batch, G, N, L)"
    got = dict(u=u, delta=delta, A=A, B=B, C=C, z=z)
    if u.dim() != 3 or A.dim() != 2:
        raise _shape_error("selective_scan", expected, got)
    bsz, dim, seqlen = u.shape
    ok = delta.shape == u.shape and A.shape[0] == dim and (z is None or z.shape == u.shape)
    for t in (B, C):
        ok = ok and t.dim() in (3, 4) and t.shape[0] == bsz and t.shape[-1] == seqlen and t.shape[-2] == A.shape[1]
        ok = ok and (t.dim() == 3 or dim % t.shape[1] == 0)
    if not ok:
        raise _shape_error("selective_scan", expected, got)


def _check_ssd_shapes(x, dt, A, B, C, z, initial_states):
    expected = "x, z (batch, L, H, P); dt (batch, L, H); A (H,); B, C (batch, L, G, N) with G dividing H"
    got = dict(x=x, dt=dt, A=A, B=B, C=C, z=z, initial_states=initial_states)
    if x.dim() != 4 or B.dim() != 4 or C.dim() != 4:
        raise _shape_error("ssd", expected, got)
    bsz, seqlen, nheads, headdim = x.shape
    ok = (tuple(dt.shape) == (bsz, seqlen, nheads) and tuple(A.shape) == (nheads,) and B.shape == C.shape
          and tuple(B.shape[:2]) == (bsz, seqlen) and nheads % B.shape[2] == 0 and (z is None or z.shape == x.shape))
    if initial_states is not None:
        ok = ok and tuple(initial_states.shape) == (bsz, nheads, headdim, B.shape[-1])
    if not ok:
        raise _shape_error("ssd", expected, got)


def _check_conv_update_shapes(x, conv_state, weight, bias):
    expected = "x (batch, D); conv_state (batch, D, W); weight (D, W); bias (D,)"
    got = dict(x=x, conv_state=conv_state, weight=weight, bias=bias)
    ok = x.dim() == 2 and conv_state.dim() == 3 and weight.dim() == 2
    ok = ok and tuple(conv_state.shape[:2]) == tuple(x.shape) and tuple(weight.shape) == (x.shape[1],
                                                                                          conv_state.shape[2])
    ok = ok and (bias is None or tuple(bias.shape) == (x.shape[1],))
    if not ok:
        raise _shape_error("causal_conv1d_update", expected, got)


def _check_state_update_shapes(state, x, dt, A, B, C, z):
    got = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, z=z)
    if state.dim() == 3:  # Mamba-1
        expected = ("Mamba-1 state (batch, D, N); x, dt, z (batch, D); A (D, N); B, C (batch, N) or "
                    "(batch, G, N) with G dividing D")
        bsz, dim, n = state.shape
        ok = (tuple(x.shape) == (bsz, dim) and (dt is None or dt.shape == x.shape) and tuple(A.shape) == (dim, n)
              and B.shape == C.shape and B.dim() in (2, 3) and B.shape[0] == bsz and B.shape[-1] == n
              and (B.dim() == 2 or dim % B.shape[1] == 0))
    elif state.dim() == 4:  # Mamba-2
        expected = ("Mamba-2 state (batch, H, P, N); x, z (batch, H, P); dt (batch, H); A (H,); "
                    "B, C (batch, G, N) with G dividing H")
        bsz, nheads, headdim, n = state.shape
        ok = (tuple(x.shape) == (bsz, nheads, headdim) and tuple(dt.shape) == (bsz, nheads)
              and tuple(A.shape) == (nheads,) and B.shape == C.shape and B.dim() == 3 and B.shape[0] == bsz
              and B.shape[-1] == n and nheads % B.shape[1] == 0)
    else:
        expected = "state (batch, D, N) for Mamba-1 or (batch, H, P, N) for Mamba-2"
        ok = False
    if not ok or (z is not None and z.shape != x.shape):
        raise _shape_error("selective_state_update", expected, got)
