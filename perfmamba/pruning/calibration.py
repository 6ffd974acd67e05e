"""Calibration: per-layer, per-state-channel statistics collected over calibration sequences.

How the statistics are taken
----------------------------
While the model runs its ordinary forward, every call of the scan op (``ops.selective_scan`` for Mamba-1,
``ops.ssd`` for Mamba-2) is intercepted (:func:`intercept_scans`): the interceptor sees exactly the tensors
the scan sees (u/x, raw dt, A, B, C, dt bias), accumulates statistics from them and then calls the real
op, so the model's own code and kernels run unchanged.  A forward pre-hook on each mixer tells the
interceptor which layer is running.

Both families are brought to one form: a state channel n of group g is read by M = D/G channels m (Mamba-1:
G = 1, M = d_inner; Mamba-2: M = heads-per-group x headdim), and for channel m, state n, token t

    h[t] = a[t] h[t-1] + du[t] B[t, n],      a[t] = exp(dt[t] A),   du[t] = dt[t] u[t],   y[t] += C[t, n] h[t]

(dt after bias and softplus; A per (m, n) for Mamba-1, per head for Mamba-2).  Every sum below is over
batch, tokens (and channels m where stated), so memory is independent of the number of tokens:

* ``readout2``  (G, N):    sum C^2                                 (kind "delta": the delta score, see ``scores.py``)
* ``write2``    (G, M, N): sum over tokens of du^2 B^2 surv(2 dt A) (kinds "delta", "delta-out")
* ``readout2_gated`` (G, M, N): sum over tokens of s[t, m]^2 C[t, n]^2, s the per-token factor between the
  scan's output and out_proj (Mamba-1: SiLU(z); Mamba-2: SiLU(z) / the gated norm's RMS) (kind "delta-out")
* ``activity``  (G, N):    sum |C| |du| |B| surv(dt A)       (kind "delta-abs": that ablation)
* ``gate``      (G, N):    sum |1 - a| |B| |C|                (kind "delta-gate": that ablation)
* ``wc``        (G, M, N): sum over tokens of h^2            (controllability; energy = its sum over m)
* ``out_abs``   (G, N):    sum |C h|
* ``wo``        (G, M, N): sum over tokens of the observability g[t] = C[t]^2 + a[t+1]^2 g[t+1]
* ``taylor``    (G, N):    sum over batches of |dLoss/dm_n|, m the multiplier of C's channel n (m = 1)

States are computed exactly, chunk by chunk (:func:`linear_recurrence`), from the same inputs as the scan.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from perfmamba import ops
from perfmamba.errors import PerfMambaError
from perfmamba.ops.norm_ref import grouped_inv_rms
from perfmamba.ops.scan_ref import prepare_delta, prepare_dt

# Time steps per chunk of the state recurrences (memory: batch x D x CHUNK x N floats at a time).
CHUNK = 64
# |cumulative log-decay| above which a chunk is halved (exp(60) leaves fp32 headroom; one step is exact).
_MAX_LOG_DECAY = 60.0
# Each kind is collected only when a score asks for it (scores.NEEDS): one per delta form, then the states.
STAT_KINDS = ("delta", "delta-out", "delta-abs", "delta-gate", "states", "observability", "taylor")


# ---------------------------------------------------------------------------------------- interception
@contextlib.contextmanager
def intercept_scans(model, fn: Callable[[int, str, dict], Optional[dict]],
                    after: Optional[Callable[[int, str, dict, object], None]] = None):
    """While active, each scan op call runs ``fn(layer_idx, family, args)`` first (``args``: the op's
    arguments by name; a returned dict replaces them), then the real op, then ``after(layer_idx, family,
    args, result)`` when given.  ``model``: a MambaLM, or a list of mixers (numbered in order)."""
    state = {"layer": None}
    mixers = [block.mixer for block in model.backbone.layers] if hasattr(model, "backbone") else list(model)
    hooks = [mixer.register_forward_pre_hook(_layer_setter(state, i)) for i, mixer in enumerate(mixers)]
    originals = {"selective_scan": ops.selective_scan, "ssd": ops.ssd}

    def wrap(name, family):
        original = originals[name]
        signature = inspect.signature(original)

        def wrapped(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = _without_padding(dict(bound.arguments))
            new = fn(state["layer"], family, dict(arguments))
            call = new if new is not None else arguments
            result = original(**call)
            if after is not None:
                after(state["layer"], family, call, result)
            return result
        return wrapped

    ops.selective_scan = wrap("selective_scan", "mamba1")
    ops.ssd = wrap("ssd", "mamba2")
    try:
        yield
    finally:
        ops.selective_scan, ops.ssd = originals["selective_scan"], originals["ssd"]
        for h in hooks:
            h.remove()


def _without_padding(args: dict) -> dict:
    """A Mamba-1 scan call on inputs padded past the sequence (the mixer's ``length``, see
    ``Mamba1Mixer.prefill_in_proj``) as the same call on views of the sequence's own steps, so that what is
    intercepted never counts the padding; y still lands in ``out``'s first steps."""
    length = args.get("length")
    if length is None or length == args["u"].shape[-1]:
        return args
    names = ("u", "delta", "B", "C", "z", "out")
    return {**args, **dict(zip(names, ops.first_steps(length, *(args.get(k) for k in names)))), "length": None}


def _layer_setter(state, idx):
    def hook(module, args):
        state["layer"] = idx
    return hook


# ---------------------------------------------------------------------------------- one form, two families
@dataclass
class ScanView:
    """A scan call in the common form; shapes (Bsz, G, M, L, 1 or N) so that everything broadcasts."""

    dt: torch.Tensor  # (Bsz, G, M, L, 1)   step after bias / softplus / limit
    A: torch.Tensor  # (1, G, M, 1, N or 1)
    du: torch.Tensor  # (Bsz, G, M, L, 1)  dt * u
    B: torch.Tensor  # (Bsz, G, 1, L, N)
    C: torch.Tensor  # (Bsz, G, 1, L, N)

    def log_decay(self, start: int, stop: int) -> torch.Tensor:  # (Bsz, G, M, T, N or 1)
        return self.dt[:, :, :, start:stop] * self.A


def scan_view(family: str, args: dict) -> ScanView:
    if family == "mamba1":
        u, A = args["u"].float(), args["A"].float()  # (Bsz, D, L), (D, N)
        bsz, dim, seqlen = u.shape
        if args["B"].dim() != 3:
            raise PerfMambaError("pruning supports Mamba-1 with one B/C group (B of shape (batch, N, L))")
        dt = prepare_delta(args["delta"], args["delta_bias"], args["delta_softplus"])  # (Bsz, D, L)
        dt = dt.view(bsz, 1, dim, seqlen, 1)
        B = args["B"].float().transpose(1, 2)[:, None, None]  # (Bsz, 1, 1, L, N)
        C = args["C"].float().transpose(1, 2)[:, None, None]
        return ScanView(dt, A[None, None, :, None, :], dt * u.view(bsz, 1, dim, seqlen, 1), B, C)
    x, A = args["x"].float(), args["A"].float()  # (Bsz, L, H, P), (H,)
    bsz, seqlen, nheads, headdim = x.shape
    groups = args["B"].shape[2]
    per = nheads // groups
    dt = prepare_dt(args["dt"], args["dt_bias"], args["dt_softplus"], tuple(args["dt_limit"]))  # (Bsz, L, H)
    dt = dt.view(bsz, seqlen, groups, per, 1).expand(bsz, seqlen, groups, per, headdim)
    dt = dt.permute(0, 2, 3, 4, 1).reshape(bsz, groups, per * headdim, seqlen, 1)
    xg = x.view(bsz, seqlen, groups, per * headdim).permute(0, 2, 3, 1)[..., None]  # (Bsz, G, M, L, 1)
    A_m = A.view(groups, per, 1).expand(groups, per, headdim).reshape(1, groups, per * headdim, 1, 1)
    B = args["B"].float().permute(0, 2, 1, 3)[:, :, None]  # (Bsz, G, 1, L, N)
    C = args["C"].float().permute(0, 2, 1, 3)[:, :, None]
    return ScanView(dt, A_m, dt * xg, B, C)


def linear_recurrence(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h[t] = exp(log_a[t]) h[t-1] + b[t] over one chunk, time on dim -2.

    log_a <= 0 broadcasts against b (..., T, N); h0 (..., N).  Closed form per piece,
    h[t] = exp(S[t]) (h0 + sum_{s<=t} exp(-S[s]) b[s]) with S the cumulative log-decay, halving a piece
    while |S| could overflow (a single step is exact).  Returns (..., T, N).
    """
    T = b.shape[-2]
    log_a = log_a.expand(*b.shape[:-2], T, log_a.shape[-1])
    S = torch.cumsum(log_a, dim=-2)
    if T > 1 and bool(S[..., -1, :].min() < -_MAX_LOG_DECAY):
        half = T // 2
        first = linear_recurrence(log_a[..., :half, :], b[..., :half, :], h0)
        rest = linear_recurrence(log_a[..., half:, :], b[..., half:, :], first[..., -1, :])
        return torch.cat([first, rest], dim=-2)
    growth = torch.exp(S)
    return growth * (h0[..., None, :] + torch.cumsum(b / growth, dim=-2))


def survival(log_a: torch.Tensor, horizon: int) -> torch.Tensor:
    """sum_{k<horizon} exp(k log_a) = (1 - a^H) / (1 - a): how much of one write is still there, summed over
    the next ``horizon`` steps at this step's decay (-> horizon as log_a -> 0).  With 2 log_a: the same for
    the write's square (its energy)."""
    la = log_a.clamp(max=-1e-12)
    return torch.expm1(horizon * la) / torch.expm1(la)


# ------------------------------------------------------------------------------------------ statistics
@dataclass
class LayerStats:
    """Sums for one layer; divide by ``tokens`` (and by M where the doc says so) for means."""

    groups: int
    channels: int  # M: channels reading each group's states
    d_state: int
    tokens: int = 0
    sequences: int = 0
    sums: dict = field(default_factory=dict)  # kind -> float64 tensor

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().double().cpu()
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def mean(self, name: str) -> torch.Tensor:
        if name not in self.sums:
            raise PerfMambaError(f"calibration did not collect {name!r} statistics")
        return self.sums[name] / max(self.tokens, 1)


def _accumulate_forward(stats: LayerStats, view: ScanView, need: set, horizon: int) -> None:
    bsz, seqlen = view.du.shape[0], view.du.shape[3]
    stats.tokens += bsz * seqlen
    stats.sequences += bsz
    h = view.du.new_zeros(*view.du.shape[:3], view.B.shape[-1]) if "states" in need else None  # (Bsz, G, M, N)
    for start in range(0, seqlen, CHUNK):
        stop = min(start + CHUNK, seqlen)
        log_a = view.log_decay(start, stop)  # (Bsz, G, M, T, N or 1)
        du, B, C = view.du[:, :, :, start:stop], view.B[:, :, :, start:stop], view.C[:, :, :, start:stop]
        if "delta" in need:  # E_t C^2
            stats.add("readout2", C.square().sum((0, 2, 3)))  # (G, N)
        if need & {"delta", "delta-out"}:  # per channel m, E_t (du B)^2 surv(2 dt A): a write's energy over H steps
            stats.add("write2", _write_energy(du.square() * survival(2 * log_a, horizon), B.square()))
        if need & {"delta-abs", "delta-gate"}:
            bc = B.abs() * C.abs()  # (Bsz, G, 1, T, N)
        if "delta-abs" in need:
            drive = (du.abs() * survival(log_a, horizon)).sum(2, keepdim=True)  # (Bsz, G, 1, T, N or 1)
            stats.add("activity", (drive * bc).sum((0, 2, 3)))  # (G, N)
        if "delta-gate" in need:
            stats.add("gate", ((-torch.expm1(log_a)).sum(2, keepdim=True) * bc).sum((0, 2, 3)))
        if h is not None:
            states = linear_recurrence(log_a, du * B, h)  # (Bsz, G, M, T, N)
            h = states[..., -1, :]
            stats.add("wc", states.square().sum((0, 3)))  # (G, M, N)
            stats.add("out_abs", (states * C).abs().sum((0, 2, 3)))  # (G, N)
    if "observability" in need:
        _accumulate_observability(stats, view)


def _write_energy(drive2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """sum over batch and tokens of drive2 * b2 -> (G, M, N); drive2 (Bsz, G, M, T, N or 1), b2 (Bsz, G, 1, T, N).
    When the decay does not depend on n (Mamba-2) this is a product over tokens, without a (.., M, T, N) tensor."""
    if drive2.shape[-1] == 1:
        return torch.einsum("bgmt,bgtn->gmn", drive2[..., 0], b2[:, :, 0])
    return (drive2 * b2).sum((0, 3))


def _accumulate_observability(stats: LayerStats, view: ScanView) -> None:
    """sum over t of g[t] = C[t]^2 + a[t+1]^2 g[t+1] (g beyond the sequence end = 0), chunks from the end."""
    seqlen = view.du.shape[3]
    shape = view.du.shape[:3] + (view.B.shape[-1],)
    g = view.du.new_zeros(shape)  # g at the first step after the chunk
    starts = list(range(0, seqlen, CHUNK))
    for start in reversed(starts):
        stop = min(start + CHUNK, seqlen)
        # decay applied to g[t+1] for t in [start, stop): a[t+1], t+1 in [start+1, stop]; a[seqlen] unused (g=0)
        nxt = view.log_decay(start + 1, min(stop + 1, seqlen))
        if stop == seqlen:
            nxt = torch.cat([nxt, torch.zeros_like(view.log_decay(0, 1))], dim=3)
        c2 = view.C[:, :, :, start:stop].square().expand(*shape[:3], stop - start, shape[3])
        rev = linear_recurrence(2 * nxt.flip(3), c2.flip(3), g)  # reversed time: g[stop-1], ..., g[start]
        g = rev[..., -1, :]
        stats.add("wo", rev.sum((0, 3)))  # (G, M, N)


def _need_for(kinds) -> set:
    need = set(kinds)
    unknown = need - set(STAT_KINDS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {STAT_KINDS}")
    return need


def _new_stats(model) -> list:
    cfg = model.config
    out = []
    for i in range(cfg.n_layer):
        groups = 1 if cfg.family == "mamba1" else cfg.ngroups
        out.append(LayerStats(groups, cfg.d_inner // groups, cfg.layer_d_state(i)))
    return out


def _batches(ids: torch.Tensor, batch_size: int):
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i:i + batch_size]


@torch.no_grad()
def collect_stats(model, ids: torch.Tensor, kinds=("delta", "states"), batch_size: int = 1,
                  horizon: Optional[int] = None, stats: Optional[list] = None) -> list:
    """Forward statistics (see the module doc) over calibration token ids (n_seqs, L); one LayerStats per layer.

    ``kinds`` from STAT_KINDS minus "taylor" (see :func:`collect_taylor`).  ``horizon``: the survival horizon
    of the delta scores (default: the calibration length L).  Pass ``stats`` to add to earlier sums.
    """
    need = _need_for(kinds) - {"taylor"}
    stats = stats if stats is not None else _new_stats(model)
    horizon = int(horizon or ids.shape[1])
    device = next(model.parameters()).device

    gated = _GatedReadout(model, stats) if "delta-out" in need else None

    def on_scan(layer, family, args):
        view = scan_view(family, args)
        _accumulate_forward(stats[layer], view, need, horizon)
        if gated is not None:
            gated.on_scan(layer, family, view, args)

    if need:
        with intercept_scans(model, on_scan), (gated or contextlib.nullcontext()):
            for batch in _batches(ids, batch_size):
                model(batch.to(device))
    return stats


class _GatedReadout:
    """Collects ``readout2_gated``: E_t s[t, m]^2 C[t, n]^2, where s is what multiplies the scan's output y
    per token on its way to out_proj.  Mamba-1 fuses the gate into the scan (s = SiLU(z), z among the scan's
    arguments).  Mamba-2 applies it after the scan, in the gated norm RMSNorm(y SiLU(z)) w, so s = SiLU(z) / r
    with r the norm's per-token, per-group RMS (its weight w is static and enters in ``scores.py``); the
    scan's C is kept until that layer's norm runs, whose forward pre-hook sees y and z."""

    def __init__(self, model, stats):
        self.stats, self.pending = stats, {}
        self.mixers = [block.mixer for block in model.backbone.layers]
        self.hooks = []

    def __enter__(self):
        for i, mixer in enumerate(self.mixers):
            if hasattr(mixer, "norm"):  # Mamba-2
                self.hooks.append(mixer.norm.register_forward_pre_hook(self._norm_hook(i)))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks, self.pending = [], {}
        return False

    def on_scan(self, layer, family, view: ScanView, args):
        c2 = view.C[:, :, 0].square()  # (Bsz, G, L, N)
        if family == "mamba1":  # s = SiLU(z), z (Bsz, D, L); one group
            if args.get("z") is None:
                raise PerfMambaError("'delta-out' needs the Mamba-1 scan's gate z; this mixer calls it without")
            self._add(layer, F.silu(args["z"].float()).square()[:, None], c2)  # (Bsz, 1, M, L)
        else:
            self.pending[layer] = c2

    def _norm_hook(self, layer):
        def hook(norm, inputs):
            c2 = self.pending.pop(layer, None)
            if c2 is None:  # a norm call without a scan before it (not a prefill of this layer)
                return
            y, z = inputs[0].float(), inputs[1].float()  # (Bsz, L, D)
            bsz, seqlen, dim = y.shape
            gate = F.silu(z).view(bsz, seqlen, c2.shape[1], dim // c2.shape[1])  # (Bsz, L, G, M)
            inv_rms = grouped_inv_rms(y.view_as(gate) * gate, norm.eps)
            self._add(layer, (gate * inv_rms).square().permute(0, 2, 3, 1), c2)  # (Bsz, G, M, L)
        return hook

    def _add(self, layer, gate2, c2):
        self.stats[layer].add("readout2_gated", torch.einsum("bgmt,bgtn->gmn", gate2, c2))


def collect_taylor(model, ids: torch.Tensor, batch_size: int = 1, stats: Optional[list] = None) -> list:
    """First-order Taylor statistics: per batch, |dLoss/dm| for a multiplier m (G, N) = 1 on each layer's C.

    Setting m_n = 0 removes channel n's read-out, which is exactly what pruning it does to the output, so
    |dLoss/dm_n| is the first-order estimate of the loss change.  Loss: next-token cross entropy (mean).
    Runs on the differentiable "ref" backend; the model's backend and parameter flags are restored.
    """
    stats = stats if stats is not None else _new_stats(model)
    device = next(model.parameters()).device
    masks = [torch.ones(s.groups, s.d_state, device=device, requires_grad=True) for s in stats]

    def on_scan(layer, family, args):
        m = masks[layer]
        if family == "mamba1":
            args["C"] = args["C"] * m[0][:, None].to(args["C"].dtype)  # (Bsz, N, L)
        else:
            args["C"] = args["C"] * m.to(args["C"].dtype)  # (Bsz, L, G, N)
        return args

    backend, flags = model.backend, [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.set_backend("ref").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with intercept_scans(model, on_scan), torch.enable_grad():
            for batch in _batches(ids, batch_size):
                batch = batch.to(device)
                logits = model(batch[:, :-1])
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                grads = torch.autograd.grad(loss, masks)
                for s, g in zip(stats, grads):
                    s.add("taylor", g.abs())
                    s.add("taylor_batches", torch.ones(()))
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.set_backend(backend).train(was_training)
    return stats


def collect(model, ids: torch.Tensor, kinds, batch_size: int = 1, horizon: Optional[int] = None) -> list:
    """All statistics ``kinds`` asks for: forward ones in one pass, Taylor in a second (gradient) pass."""
    need = _need_for(kinds)
    stats = collect_stats(model, ids, need - {"taylor"}, batch_size, horizon)
    if "taylor" in need:
        taylor = collect_taylor(model, ids, batch_size)
        for s, t in zip(stats, taylor):
            s.sums.update(t.sums)
    return stats


# ---------------------------------------------------------------------------------------------- text
def calibration_ids(model, source: str = "cpython-docs", split: str = "train", n_seqs: int = 16,
                    seqlen: int = 1024, tokenizer: Optional[str] = None, model_dir: Optional[str] = None,
                    offset: int = 0) -> tuple:
    """(ids (n, seqlen) int64, description dict): ``n_seqs`` windows of ``seqlen`` tokens spread evenly over
    ``split`` of ``source`` (the built-in corpus, a text file or directory, or hf:NAME; see
    ``perfmamba.eval.data``), read with the model's tokenizer.  ``offset`` shifts the windows by that many
    tokens (a second, disjoint sample of the same text)."""
    from perfmamba.eval.data import load_text, tokenizer_for_model
    if n_seqs < 1 or seqlen < 2:
        raise PerfMambaError(f"calibration needs at least 1 sequence of 2 tokens; got {n_seqs} x {seqlen}")
    tok = tokenizer_for_model(model_dir, model.config.vocab_size, tokenizer)
    text = load_text(source, split)
    ids = tok.encode(text.text).ids.long()
    span = n_seqs * seqlen
    if ids.numel() < span + offset:
        raise PerfMambaError(f"calibration text ({source}, {split}) has {ids.numel()} tokens; {n_seqs} x {seqlen} "
                             f"needs {span + offset}; use fewer or shorter sequences or more text")
    stride = (ids.numel() - offset - seqlen) // max(n_seqs - 1, 1) if n_seqs > 1 else 0
    starts = [offset + i * stride for i in range(n_seqs)]
    windows = torch.stack([ids[s:s + seqlen] for s in starts])
    desc = {"source": source, "split": split, "sequences": n_seqs, "length": seqlen, "tokens": n_seqs * seqlen,
            "tokenizer": tok.name, "text_sha256": text.sha256, "offset": offset}
    return windows, desc
