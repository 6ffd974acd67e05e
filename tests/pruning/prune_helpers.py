"""Tiny random models for the pruning tests (byte vocabulary, CPU, seconds)."""

import torch

from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.models.lm import MambaLM

VOCAB = 256
CONFIGS = {
    "m1": Mamba1Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=16),
    "m2-g1": Mamba2Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=32, headdim=16, ngroups=1,
                          chunk_size=16),
    "m2-g2": Mamba2Config(d_model=64, n_layer=2, vocab_size=VOCAB, d_state=32, headdim=16, ngroups=2,
                          chunk_size=16, tie_embeddings=False),
}


@torch.no_grad()
def ssm_heavy(model, seed=0):
    """Redraw the parameters so that the SSM state carries most of each mixer's output (D = 0, strong B and
    C, A spread out): pruning then changes the function visibly, as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            value = torch.log(0.05 + 3 * torch.rand(p.shape, generator=g))
        elif name.endswith(("dt_bias", "dt_proj.bias")):
            value = torch.randn(p.shape, generator=g) * 0.5 - 1.5
        elif name.endswith(".D"):
            value = torch.zeros(p.shape)
        elif "norm" in name:
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        else:
            value = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
        p.copy_(value.to(p.dtype))
    return model


def make_model(name, seed=0, backend="ref"):
    torch.manual_seed(seed)
    return ssm_heavy(MambaLM(CONFIGS[name], backend=backend), seed).eval()


def token_ids(batch, length, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def uneven_keep(cfg, seed=0):
    """A different number of kept channels per layer, different sets per group."""
    g = torch.Generator().manual_seed(seed)
    groups = 1 if cfg.family == "mamba1" else cfg.ngroups
    sizes = [cfg.d_state // 2, cfg.d_state - 3][:cfg.n_layer]
    return [torch.stack([torch.randperm(cfg.d_state, generator=g)[:k].sort().values for _ in range(groups)])
            for k in sizes]


@torch.no_grad()
def twin_states(model, seed=3):
    """Make state channel n + N/2 a copy of channel n in every layer (same B and C weights, same A), and
    give D random values.  Keeping one channel of each pair then removes half of the SSM output, which the
    kept twin still carries: a bridge that refits can recover it."""
    cfg = model.config
    h = cfg.d_state // 2
    for blk in model.backbone.layers:
        m = blk.mixer
        m.D.copy_(torch.randn(m.D.shape, generator=torch.Generator().manual_seed(seed)))
        if cfg.family == "mamba1":
            r, n = cfg.dt_rank, cfg.d_state
            w = m.x_proj.weight
            w[r + h:r + n] = w[r:r + h]
            w[r + n + h:] = w[r + n:r + n + h]
            m.A_log[:, h:] = m.A_log[:, :h]
            continue
        d, g, n = cfg.d_inner, cfg.ngroups, cfg.d_state
        for off_in, off_conv in ((2 * d, d), (2 * d + g * n, d + g * n)):
            for grp in range(g):
                a = grp * n
                m.in_proj.weight[off_in + a + h:off_in + a + n] = m.in_proj.weight[off_in + a:off_in + a + h]
                m.conv1d.weight[off_conv + a + h:off_conv + a + n] = m.conv1d.weight[off_conv + a:off_conv + a + h]
                if m.conv1d.bias is not None:
                    m.conv1d.bias[off_conv + a + h:off_conv + a + n] = m.conv1d.bias[off_conv + a:off_conv + a + h]
    return model
