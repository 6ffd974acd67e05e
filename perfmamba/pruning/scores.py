"""Importance of every SSM state channel: the Δ-guided score (the method), three ablations and six baselines.

A score is one tensor (G, N) per layer: state channel n of B/C group g (Mamba-1: G = 1, since one B/C is
shared by all channels; Mamba-2: the model's ngroups).  Higher = more important = kept.  Notation as in
``calibration.py``: for channel m (of the M = D/G channels reading group g), state n, token t,
h[t] = a[t] h[t-1] + Δ[t] u[t] B[t, n] with a[t] = exp(Δ[t] A) and read-out C[t, n] h[t].

``delta`` (the method)
    delta_n = sqrt(E_t C[t,n]^2) * E_m sqrt( E_t [ (Δ[t,m] u[t,m] B[t,n])^2 * sum_{k<H} exp(2k Δ[t,m] A[m,n]) ] )
            = RMS read-out x E_m RMS state,   energy survival = (1 - a^2H) / (1 - a^2)

    Each token writes Δ u B into state n (the kernels' discretisation) and that write decays by a = exp(ΔA)
    per step; Δ enters twice, as it does in the model: it scales how hard the state is driven and it sets
    how long the write survives.  Two facts of the recurrence shape the formula.  (1) The state is signed:
    writes of different tokens with unrelated signs add in quadrature, not in absolute value, so the state's
    size is the root of the summed energy of the surviving writes, E h^2 ~ E[(ΔuB)^2 (1 - a^2H)/(1 - a^2)]
    (exact for independent zero-mean writes at a fixed decay).  (2) A write at token s is read out by C at
    the later tokens t >= s, not only by C at s, so the read-out is its own expectation over tokens,
    sqrt(E_t C^2), instead of the same-token product |C[s]| |B[s]|.  The score is thus the RMS of channel
    n's output C h under independence, computed from per-token quantities the forward pass already has (no
    states, no gradients) in one streaming pass.  A channel whose Δ·A is large forgets at once (score ~
    RMS(Δ u B) RMS(C)); one with small Δ|A| integrates for ~1/(2Δ|A|) steps; one whose Δ is ~0 is neither
    driven nor read (score -> 0).  Chosen over the absolute form below on held-out text (the test split of
    the built-in corpus, 32 KiB, not the sweep's validation bytes): on demo-mamba2 at ratio 0.25,
    -0.47 % bits/byte against -0.18 % (delta-abs), -0.31 % (magnitude) and -0.22 % (random).  It does not
    dominate the absolute form: in the H200 sweeps on the validation bytes
    (docs/benchmarks/pruning-h200/) it is better at four of the six points with ratio >= 0.25 and worse at
    demo-mamba1 0.5 (-0.12 against -0.38 %) and demo-mamba2 0.75 (+1.70 against +0.64 %).

``delta-out`` (ablation: the read-out followed to the block's output)
    delta-out_n = sqrt( sum_m q_m^2 E_t[s[t,m]^2 C[t,n]^2] * E_t[(Δ[t,m] u[t,m] B[t,n])^2 sum_{k<H} exp(2k Δ A)] )
    The scan's output reaches the block's output through a per-token factor s (Mamba-1: SiLU(z); Mamba-2:
    SiLU(z) over the gated norm's RMS of that token and group) and a static one q (out_proj's column norm,
    times the norm's weight for Mamba-2), so this is the RMS of the change in the block's output when state
    n is removed, under the same independence assumptions as ``delta``.  Tried as a replacement for
    ``delta`` under a protocol committed before the run (docs/benchmarks/pruning-delta-out/): on numpy's
    docstrings it removes 94-100 % of the channels ``delta`` removes; it was 0.03 points worse at
    demo-mamba2 0.25 and 0.75 and 0.03 better at demo-mamba2 0.5 (each interval excluding 0), level on
    demo-mamba1, and worse on average, so by that protocol's rule ``delta`` stays; it stays in the sweep as
    an ablation.

``delta-abs`` (ablation: the earlier absolute, same-token form)
    delta-abs_n = E_{t,m} [ |C[t,n]| * |B[t,n]| * Δ[t,m] |u[t,m]| * sum_{k<H} exp(k Δ[t,m] A[m,n]) ]
    The output mass one token would send through channel n over the next H steps if C stayed at that
    token's value, with writes adding in absolute value (an upper bound that ignores sign cancellation).

``delta-gate`` (ablation: the simpler form  E_{t,m} |1 - exp(Δ A)| |B| |C|)
    |1 - a| is the fraction of the state replaced per step, so this form ranks a channel by how fast it
    forgets and removes the slowly decaying (long-memory) channels first - whose state, and read-out, is
    the largest - and it ignores |u|, how much is written.  On a small byte-level Mamba-1 trained on the
    built-in corpus (d_model 96, 3 layers, d_state 16) it was worse than random at every ratio (+0.39 /
    +1.27 / +1.48 % bits/byte at ratios 0.25 / 0.5 / 0.75, against random's +0.20 / +0.65 / +0.95 % and
    delta-abs's +0.05 / +0.21 / +0.61 %); for Mamba-2, whose A is one scalar per head, the two forms rank a
    group's channels almost alike.  It stays in the sweep so that the comparison is visible.

Baselines
    random     uniform draws from a seeded generator (one stream, layers in order): reproducible.
    magnitude  weights only: product of the L2 norms of the weights that make B_n and C_n (Mamba-1: the
               x_proj rows; Mamba-2: the in_proj rows times the conv1d filters of those channels).
    energy     E|h_n|^2 over tokens and channels m (exact states).
    output     E|C_n h_n| over tokens and channels m (exact states).
    taylor     mean over calibration batches of |dLoss/dm_n|, m_n = 1 multiplying C_n (first-order Taylor:
               |gradient x activation| summed over tokens, since dL/dm_n = sum_t dL/dC[t,n] C[t,n]).
    balanced   controllability x observability, in the spirit of balanced truncation: for each (m, n) the
               diagonal empirical Gramians Wc = E_t h[t]^2 and Wo = E_t g[t], g[t] = C[t]^2 + a[t+1]^2 g[t+1]
               (the output energy a unit state at t would produce from then on); score = mean over m of
               sqrt(Wc Wo), the diagonal approximation of the Hankel singular value.
"""

from __future__ import annotations

from typing import Optional

import torch

from perfmamba.errors import PerfMambaError

METHODS = ("delta", "random", "magnitude", "energy", "output", "taylor", "balanced", "delta-gate", "delta-abs",
           "delta-out")
# Calibration statistics each method reads (see calibration.STAT_KINDS).
NEEDS = {"delta": {"delta"}, "random": set(), "magnitude": set(), "energy": {"states"},
         "output": {"states"}, "taylor": {"taylor"}, "balanced": {"states", "observability"},
         "delta-gate": {"delta-gate"}, "delta-abs": {"delta-abs"}, "delta-out": {"delta-out"}}


def check_methods(methods) -> list:
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise PerfMambaError(f"unknown scoring method {bad[0] if bad else '(none)'!r}; choose from "
                             f"{', '.join(METHODS)}")
    return methods


def stats_needed(methods) -> set:
    need = set()
    for m in check_methods(methods):
        need |= NEEDS[m]
    return need


def layer_groups(config) -> int:
    return 1 if config.family == "mamba1" else config.ngroups


def compute_scores(method: str, model, stats: Optional[list] = None, seed: int = 0) -> list:
    """One float64 tensor (G, N_layer) per layer; ``stats`` from ``calibration.collect`` when the method
    needs them (``NEEDS``)."""
    check_methods([method])
    if NEEDS[method] and stats is None:
        raise PerfMambaError(f"method {method!r} needs calibration statistics")
    if not NEEDS[method] and model is None:
        raise PerfMambaError(f"method {method!r} needs the model")
    if method == "random":
        cfg = model.config
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(layer_groups(cfg), cfg.layer_d_state(i), generator=gen, dtype=torch.float64)
                for i in range(cfg.n_layer)]
    if method == "magnitude":
        return [magnitude_scores(block.mixer) for block in model.backbone.layers]
    out = []
    for i, s in enumerate(stats):
        if method == "delta-out":
            if model is None:
                raise PerfMambaError("method 'delta-out' needs the model (its out_proj and norm weights)")
            weight2 = readout_weights(model.backbone.layers[i].mixer).square().view(s.groups, s.channels, 1)
            score = (weight2 * s.mean("readout2_gated") * s.mean("write2")).sum(1).sqrt()
        elif method == "delta":
            score = s.mean("readout2").sqrt() * s.mean("write2").sqrt().mean(1)
        elif method == "delta-abs":
            score = s.mean("activity") / s.channels
        elif method == "delta-gate":
            score = s.mean("gate") / s.channels
        elif method == "energy":
            score = s.mean("wc").sum(1) / s.channels
        elif method == "output":
            score = s.mean("out_abs") / s.channels
        elif method == "taylor":
            if "taylor" not in s.sums:
                raise PerfMambaError("calibration did not collect 'taylor' statistics")
            score = s.sums["taylor"] / float(s.sums["taylor_batches"])
        else:  # balanced
            score = (s.mean("wc") * s.mean("wo")).sqrt().mean(1)
        out.append(score.double())
    return out


@torch.no_grad()
def readout_weights(mixer) -> torch.Tensor:
    """(D,): per inner channel m, the static factor between the gated scan output and the block's output:
    the norm of out_proj's column m, times the gated norm's weight for Mamba-2."""
    w = mixer.out_proj.weight.double().norm(dim=0)
    if hasattr(mixer, "norm"):
        w = w * mixer.norm.weight.double().abs()
    return w.cpu()  # beside the calibration sums, which live on the CPU (LayerStats.add)


@torch.no_grad()
def magnitude_scores(mixer) -> torch.Tensor:
    """(G, N): ||W_B[n]|| ||W_C[n]|| (times the conv filter norms for Mamba-2)."""
    n = mixer.d_state
    if hasattr(mixer, "x_proj"):  # Mamba-1: x_proj rows [dt (R), B (N), C (N)]
        w = mixer.x_proj.weight.double()
        r = mixer.dt_rank
        return (w[r:r + n].norm(dim=1) * w[r + n:r + 2 * n].norm(dim=1))[None]
    g, d_inner = mixer.ngroups, mixer.d_inner
    w_in = mixer.in_proj.weight.double()
    conv = mixer.conv1d.weight[:, 0, :].double()  # (conv_dim, W)

    def part(offset_in, offset_conv):
        rows_in = w_in[offset_in:offset_in + g * n].norm(dim=1)
        rows_conv = conv[offset_conv:offset_conv + g * n].norm(dim=1)
        return (rows_in * rows_conv).view(g, n)

    return part(2 * d_inner, d_inner) * part(2 * d_inner + g * n, d_inner + g * n)
