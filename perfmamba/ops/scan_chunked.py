"""A chunked Mamba-1 selective scan in plain torch: fast enough for the CPU, differentiable by autograd.

Inside a chunk of T steps, with S_t = sum_{s<=t} delta_s*A the cumulative log-decay (per channel and
state), the recurrence h_t = exp(delta_t A) h_{t-1} + b_t has the closed form

    h_t = exp(S_t) * (h_0 + sum_{s<=t} exp(-S_s) * b_s),

i.e. one cumulative sum instead of T dependent steps.  exp(-S_s) overflows fp32 once |S| passes ~88, so
a chunk whose |S| exceeds ``_MAX_LOG_DECAY`` (fast-forgetting channels) takes a stable log-depth scan
instead, which costs ~3x more arithmetic but never exponentiates a growth.  Between chunks the state
(Bsz, D, N) is carried sequentially.
"""

from __future__ import annotations

import torch

from perfmamba.ops.scan_ref import finish_output, group_view, prepare_delta

# exp(60) ~ 1e26 leaves ~12 orders of magnitude of fp32 headroom for |b| and the running sum.
_MAX_LOG_DECAY = 60.0


def _scan_doubling(h0, log_decay, drive):
    """Stable fallback: a log-depth (Hillis-Steele) scan over the piece, with no exp of a positive number.

    After the round with offset k, position t holds the composition of steps t-2k+1 .. t: its summed
    log-decay ``la`` and its accumulated input ``b``.  Then h_t = exp(la_t) * h0 + b_t.
    """
    la, b = log_decay, drive  # (Bsz, G, D/G, T, N)
    T, k = la.shape[-2], 1
    while k < T:
        b = torch.cat([b[..., :k, :], b[..., k:, :] + torch.exp(la[..., k:, :]) * b[..., :-k, :]], dim=-2)
        la = torch.cat([la[..., :k, :], la[..., k:, :] + la[..., :-k, :]], dim=-2)
        k *= 2
    return torch.exp(la) * h0[..., None, :] + b


def _scan_piece(h0, log_decay, drive, C):
    """One chunk of the sequence.

    h0: (Bsz, G, D/G, N); log_decay, drive: (Bsz, G, D/G, T, N); C: (Bsz, G, 1, T, N).
    Returns y (Bsz, G, D/G, T) and the state after the chunk.
    """
    # S is counted from the chunk's second step (S = 0 at the first) and the first step's own decay
    # multiplies h0 directly, so a chunk of one step never needs exp(-S).
    first = log_decay[..., :1, :]
    S = torch.cumsum(torch.cat([torch.zeros_like(first), log_decay[..., 1:, :]], dim=-2), dim=-2)
    if bool(S.detach().abs().amax() > _MAX_LOG_DECAY):
        h = _scan_doubling(h0, log_decay, drive)
    else:
        # exp(-S) as its own exp, not drive / exp(S): the backward of a division needs exp(-2S), which
        # overflows fp32 (inf/NaN gradients) once |S| passes ~44, well inside _MAX_LOG_DECAY.
        h = torch.exp(S) * (torch.exp(first) * h0[..., None, :] + torch.cumsum(torch.exp(-S) * drive, dim=-2))
    y = (h * C).sum(-1)
    return y, h[..., -1, :]


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, chunk_size=32):
    """Same arguments, shapes and results as ``selective_scan_ref`` (plus chunk_size)."""
    bsz, dim, seqlen = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    Bg, Cg = group_view(B, dim).float(), group_view(C, dim).float()  # (Bsz, G, N, L)
    groups, n = Bg.shape[1], Bg.shape[2]
    A4 = A.float().view(groups, dim // groups, 1, n)  # (G, D/G, 1, N)
    d4 = delta.view(bsz, groups, dim // groups, seqlen)  # (Bsz, G, D/G, L)
    du = d4 * u.float().view(bsz, groups, dim // groups, seqlen)
    h = u.new_zeros(bsz, groups, dim // groups, n, dtype=torch.float32)
    ys = []
    for start in range(0, seqlen, chunk_size):
        stop = min(start + chunk_size, seqlen)
        log_decay = d4[..., start:stop, None] * A4  # (Bsz, G, D/G, T, N)
        drive = du[..., start:stop, None] * Bg[:, :, None, :, start:stop].transpose(-1, -2)
        y, h = _scan_piece(h, log_decay, drive, Cg[:, :, None, :, start:stop].transpose(-1, -2))
        ys.append(y)
    y = torch.cat(ys, dim=-1).reshape(bsz, dim, seqlen) if ys else u.new_zeros(bsz, dim, 0).float()
    y = finish_output(y, u, D, z, u.dtype)
    return (y, h.reshape(bsz, dim, n)) if return_last_state else y
