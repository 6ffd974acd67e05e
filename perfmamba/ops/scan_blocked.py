"""A Mamba-1 selective scan for inference in plain torch: the recurrence itself, step by step, in few ops.

On CPU tensors where no gradient is needed, ``ops.selective_scan``'s reference path runs this instead of
the chunked closed form (``scan_chunked.py``, which autograd differentiates; on a GPU the chunked form
also needs far fewer launches than two per step).  The chunked form writes about ten
(Bsz, D, T, N) tensors per chunk of T steps; on a CPU those passes through memory take the time, not the
arithmetic.  Here the decays exp(Δ A) and drives Δ u B of BLOCK_STEPS steps are computed in one op
each, laid out step-major so that each step's slice is contiguous, and then each step is one
``addcmul`` (h = decay * h + drive) and one product summed over the states (y_t = h C_t) on Bsz x D x N
values that stay in cache.  It computes the same recurrence as ``selective_scan_ref``, in the same order
(and its y_t the same way: a matmul there took no less time and summed in another order).

Measured on a 2-core x86_64 CPU (fp32, torch 2.13, 2026-12-02; ``benchmarks/bench_ref_cpu.py``,
docs/benchmarks/ref-cpu.md): on a mamba-130m layer's own inputs (D=1536, N=16, B=1) the scan took 18.9 /
69.4 / 329 ms at L = 256 / 1024 / 4096, against 55.8 / 149 / 594 ms chunked and 38.2 / 171 / 665 ms for
the loop.  Blocks of 4, 16 and 64 steps were within 15% of each other on random inputs at D=512; 16 was
best or close at every shape tried.
"""

from __future__ import annotations

import torch

from perfmamba.ops.scan_ref import finish_output, group_view, prepare_delta

BLOCK_STEPS = 16


def selective_scan_blocked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    """Same arguments, shapes and results as ``selective_scan_ref``; not meant for autograd (every step
    would be a node of the graph: ``ops.selective_scan`` takes the chunked form when gradients are on)."""
    bsz, dim, seqlen = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    Bg, Cg = group_view(B, dim).float(), group_view(C, dim).float()  # (Bsz, G, N, L)
    groups, n = Bg.shape[1], Bg.shape[2]
    m = dim // groups
    A3 = A.float().view(groups, m, n)
    # step-major: (L, Bsz, G, M) for delta and delta * u, (L, Bsz, G, 1, N) for B and C
    d = delta.view(bsz, groups, m, seqlen).permute(3, 0, 1, 2).contiguous()
    du = d * u.float().view(bsz, groups, m, seqlen).permute(3, 0, 1, 2)
    Bt = Bg.permute(3, 0, 1, 2).unsqueeze(3).contiguous()
    Ct = Cg.permute(3, 0, 1, 2).unsqueeze(3).contiguous()
    h = u.new_zeros(bsz, groups, m, n, dtype=torch.float32)  # (Bsz, G, M, N)
    y = u.new_empty(seqlen, bsz, groups, m, dtype=torch.float32)
    for start in range(0, seqlen, BLOCK_STEPS):
        stop = min(start + BLOCK_STEPS, seqlen)
        decay = torch.exp(d[start:stop, ..., None] * A3)  # (T, Bsz, G, M, N)
        drive = du[start:stop, ..., None] * Bt[start:stop]
        for t in range(stop - start):
            h = torch.addcmul(drive[t], decay[t], h)
            torch.sum(h * Ct[start + t], dim=-1, out=y[start + t])
    y = y.view(seqlen, bsz, dim).permute(1, 2, 0).contiguous()  # (Bsz, D, L), as the other scans return it
    y = finish_output(y, u, D, z, u.dtype)
    return (y, h.reshape(bsz, dim, n)) if return_last_state else y
