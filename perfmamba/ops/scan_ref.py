"""Ground-truth scans in plain torch: sequential loops over time, written for clarity, not speed.

Notation (mamba_ssm's): Bsz batch, D channels (d_inner), L sequence length, N state size, G groups of
B/C shared by D/G channels each; for SSD: H heads of P channels each.  All arithmetic is fp32; outputs
come back in the input dtype, states in fp32.

``ssd_ref`` (the chunked SSD algorithm: quadratic inside a chunk, state passing between chunks) also
lives here because it is the reference every Mamba-2 fast path is compared with.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def group_view(t: torch.Tensor, n_channels: int) -> torch.Tensor:
    """B or C as (Bsz, G, N, L), from (Bsz, N, L) (one group) or (Bsz, G, N, L)."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or n_channels % t.shape[1]:
        raise ValueError(f"B/C must be (batch, N, L) or (batch, G, N, L) with G dividing {n_channels} channels; "
                         f"got {tuple(t.shape)}")
    return t


def prepare_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], softplus: bool) -> torch.Tensor:
    """delta (Bsz, D, L) -> fp32 delta + bias, optionally through softplus."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if softplus else delta


def finish_output(y: torch.Tensor, u: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                  out_dtype: torch.dtype) -> torch.Tensor:
    """y (Bsz, D, L) fp32 -> y + D*u, gated by SiLU(z), in the output dtype."""
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Mamba-1 selective scan, one time step after another.

    u, delta, z: (Bsz, D, L); A: (D, N); B, C: (Bsz, N, L) or (Bsz, G, N, L); D, delta_bias: (D,).
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t;   y_t = <h_t, C_t> + D * u_t;   y *= SiLU(z).
    Returns y (Bsz, D, L) and, with return_last_state, h_L (Bsz, D, N) in fp32.
    """
    bsz, dim, seqlen = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    Bg, Cg = group_view(B, dim).float(), group_view(C, dim).float()  # (Bsz, G, N, L)
    groups = Bg.shape[1]
    A4 = A.float().view(groups, dim // groups, -1)  # (G, D/G, N)
    u4 = u.float().view(bsz, groups, dim // groups, seqlen)  # (Bsz, G, D/G, L)
    d4 = delta.view(bsz, groups, dim // groups, seqlen)
    h = u.new_zeros(bsz, groups, dim // groups, A.shape[1], dtype=torch.float32)  # (Bsz, G, D/G, N)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(d4[..., t, None] * A4)  # (Bsz, G, D/G, N)
        drive = (d4[..., t] * u4[..., t])[..., None] * Bg[:, :, None, :, t]
        h = decay * h + drive
        ys.append((h * Cg[:, :, None, :, t]).sum(-1))  # (Bsz, G, D/G)
    y = torch.stack(ys, dim=-1).reshape(bsz, dim, seqlen) if seqlen else u.new_zeros(bsz, dim, 0).float()
    y = finish_output(y, u, D, z, u.dtype)
    return (y, h.reshape(bsz, dim, -1)) if return_last_state else y


# ------------------------------------------------------------------------------------------------ SSD
def prepare_dt(dt, dt_bias, dt_softplus, dt_limit=(0.0, float("inf"))):
    """dt (Bsz, L, H) -> fp32 dt + bias, optionally softplus, clamped to dt_limit."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def heads_view(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """B or C (Bsz, L, G, N) -> (Bsz, L, H, N), each group repeated for its H/G heads."""
    groups = t.shape[2]
    if nheads % groups:
        raise ValueError(f"ngroups {groups} must divide nheads {nheads}")
    return t.repeat_interleave(nheads // groups, dim=2)


def finish_ssd_output(y, x, D, z, out_dtype):
    """y, x, z (Bsz, L, H, P); D (H,) or (H, P)."""
    if D is not None:
        Df = D.float()
        y = y + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


def ssd_loop_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
                 return_final_states=False, dt_limit=(0.0, float("inf"))):
    """Mamba-2 SSM, one time step after another (the ground truth for ssd_ref and the kernels).

    x, z: (Bsz, L, H, P); dt: (Bsz, L, H); A: (H,); B, C: (Bsz, L, G, N); initial_states: (Bsz, H, P, N).
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T;  y_t = h_t C_t + D * x_t.
    """
    bsz, seqlen, nheads, headdim = x.shape
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh, Ch = heads_view(B.float(), nheads), heads_view(C.float(), nheads)  # (Bsz, L, H, N)
    xf = x.float()
    h = (initial_states.float().clone() if initial_states is not None
         else x.new_zeros(bsz, nheads, headdim, B.shape[-1], dtype=torch.float32))  # (Bsz, H, P, N)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dt[:, t] * A.float())[:, :, None, None]  # (Bsz, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = torch.stack(ys, dim=1) if seqlen else xf.new_zeros(xf.shape)
    y = finish_ssd_output(y, x, D, z, x.dtype)
    return (y, h) if return_final_states else y


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: a (..., T) -> (..., T, T) with out[i, j] = a[j+1] + ... + a[i] for i >= j, else -inf.

    Built by cumulative sums of a masked copy rather than differences of one cumsum, which would lose
    precision as the cumsum grows along the chunk.
    """
    T = a.shape[-1]
    rep = a[..., None].expand(*a.shape, T)  # rep[..., i, j] = a[i]
    strict_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    out = torch.cumsum(rep.masked_fill(~strict_lower, 0.0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~lower, -math.inf)


def ssd_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, initial_states=None,
            return_final_states=False, dt_limit=(0.0, float("inf"))):
    """Chunked SSD (Mamba-2), differentiable; same arguments and shapes as ``ssd_loop_ref`` plus chunk_size.

    Inside each chunk of T = chunk_size steps the output is a masked quadratic form (attention-like,
    with decay mask exp(segsum(dt*A))); between chunks one state (Bsz, H, P, N) is passed along.
    Lengths that are not a multiple of chunk_size are zero-padded: dt = 0 there, so padding neither
    decays nor feeds the state.
    """
    bsz, seqlen, nheads, headdim = x.shape
    T = int(chunk_size)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit)  # (Bsz, L, H)
    xf, Bf, Cf = x.float(), heads_view(B.float(), nheads), heads_view(C.float(), nheads)
    pad = (-seqlen) % T
    if pad:
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
    nchunks = (seqlen + pad) // T
    xc = xf.view(bsz, nchunks, T, nheads, headdim)  # (Bsz, c, T, H, P)
    Bc = Bf.view(bsz, nchunks, T, nheads, -1)  # (Bsz, c, T, H, N)
    Cc = Cf.view(bsz, nchunks, T, nheads, -1)
    dtc = dt.view(bsz, nchunks, T, nheads)  # (Bsz, c, T, H)
    a = (dtc * A.float()).permute(0, 3, 1, 2)  # (Bsz, H, c, T): log-decay of each step
    a_cum = torch.cumsum(a, dim=-1)
    xdt = xc * dtc[..., None]  # (Bsz, c, T, H, P)

    # 1. inside each chunk: y[l] = sum_{s<=l} (C_l . B_s) exp(a[s+1..l]) dt_s x_s
    decay_mask = torch.exp(segsum(a))  # (Bsz, H, c, T, T)
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay_mask
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (Bsz, H, c, T)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, xdt)  # (Bsz, c, H, P, N)

    # 3. pass states between chunks (sequential over chunks; each state entering chunk c is kept)
    h = (initial_states.float() if initial_states is not None
         else xf.new_zeros(bsz, nheads, headdim, Bc.shape[-1]))
    chunk_decay = torch.exp(a_cum[..., -1])  # (Bsz, H, c)
    entering = []
    for c in range(nchunks):
        entering.append(h)
        h = chunk_decay[:, :, c, None, None] * h + chunk_states[:, c]
    states_in = torch.stack(entering, dim=1)  # (Bsz, c, H, P, N)

    # 4. the entering state's contribution inside each chunk
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states_in, torch.exp(a_cum))
    y = y.reshape(bsz, nchunks * T, nheads, headdim)[:, :seqlen]
    y = finish_ssd_output(y, x, D, z, x.dtype)
    return (y, h) if return_final_states else y


# ------------------------------------------------------------------------------------------ decode step
def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                               dt_limit=(0.0, float("inf"))):
    """One decode step of either family; updates ``state`` in place and returns y.

    Mamba-1: state (Bsz, D, N); x, dt, z (Bsz, D); A (D, N); B, C (Bsz, N) or (Bsz, G, N); D, dt_bias (D,).
    Mamba-2: state (Bsz, H, P, N); x, z (Bsz, H, P); dt (Bsz, H); A, D, dt_bias (H,); B, C (Bsz, G, N).
    """
    if state.dim() == 3:  # Mamba-1: one "head" per channel group
        bsz, dim, n = state.shape
        Bg = B if B.dim() == 3 else B.unsqueeze(1)  # (Bsz, G, N)
        Cg = C if C.dim() == 3 else C.unsqueeze(1)
        groups = Bg.shape[1]
        dtf = dt.float()
        if dt_bias is not None:
            dtf = dtf + dt_bias.float()
        if dt_softplus:
            dtf = F.softplus(dtf)
        decay = torch.exp(dtf[..., None] * A.float())  # (Bsz, D, N)
        Bx = Bg.float().repeat_interleave(dim // groups, dim=1)  # (Bsz, D, N)
        Cx = Cg.float().repeat_interleave(dim // groups, dim=1)
        new = decay * state.float() + (dtf * x.float())[..., None] * Bx
        state.copy_(new)
        y = (new * Cx).sum(-1)
        if D is not None:
            y = y + x.float() * D.float()
    else:  # Mamba-2
        bsz, nheads, headdim, n = state.shape
        dtf = prepare_dt(dt, dt_bias, dt_softplus, dt_limit)  # (Bsz, H)
        Bh = heads_view(B.float()[:, None], nheads)[:, 0]  # (Bsz, H, N)
        Ch = heads_view(C.float()[:, None], nheads)[:, 0]
        decay = torch.exp(dtf * A.float())[..., None, None]  # (Bsz, H, 1, 1)
        new = decay * state.float() + (dtf[..., None] * x.float())[..., None] * Bh[:, :, None, :]
        state.copy_(new)
        y = torch.einsum("bhpn,bhn->bhp", new, Ch)
        if D is not None:
            Df = D.float()
            y = y + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
