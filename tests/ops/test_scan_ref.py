"""The plain-torch ops: chunked scans vs the sequential loops, the causal conv, the one-step updates, and the
dispatch errors of perfmamba.ops."""


import pytest
import torch
import torch.nn.functional as F

from perfmamba import ops
from perfmamba.errors import PerfMambaError
from perfmamba.ops import scan_chunked
from perfmamba.ops.scan_blocked import selective_scan_blocked

PLAIN_SCANS = {"chunked": scan_chunked.selective_scan_chunked, "blocked": selective_scan_blocked}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- Mamba-1 inputs
def scan_inputs(bsz, dim, n, seqlen, groups=1, grouped_layout=True, with_D=False, with_z=False,
                with_bias=False, softplus=False, seed=0, delta_scale=1.0, a_scale=None):
    g = gen(seed)
    u = torch.randn(bsz, dim, seqlen, generator=g)
    if softplus:
        delta = torch.randn(bsz, dim, seqlen, generator=g) - 1.0
    else:
        delta = torch.rand(bsz, dim, seqlen, generator=g) * delta_scale
    if a_scale is None:
        A = -torch.exp(torch.randn(dim, n, generator=g) * 0.5)
    else:
        A = -a_scale * (0.75 + 0.5 * torch.rand(dim, n, generator=g))
    if grouped_layout:
        B = torch.randn(bsz, groups, n, seqlen, generator=g)
        C = torch.randn(bsz, groups, n, seqlen, generator=g)
    else:
        assert groups == 1
        B = torch.randn(bsz, n, seqlen, generator=g)
        C = torch.randn(bsz, n, seqlen, generator=g)
    kw = dict(
        D=torch.randn(dim, generator=g) if with_D else None,
        z=torch.randn(bsz, dim, seqlen, generator=g) if with_z else None,
        delta_bias=torch.randn(dim, generator=g) * 0.5 if with_bias else None,
        delta_softplus=softplus,
    )
    return (u, delta, A, B, C), kw


SCAN_VARIANTS = {
    # bsz, groups, grouped (B, C with a group dim), D, z, delta_bias, softplus
    "plain": (1, 1, False, False, False, False, False),
    "full": (3, 2, True, True, True, True, True),
    "D-z": (3, 1, True, True, True, False, False),
    "bias-softplus-g2": (1, 2, True, False, False, True, True),
}


@pytest.mark.parametrize("scan", list(PLAIN_SCANS))
@pytest.mark.parametrize("variant", list(SCAN_VARIANTS))
@pytest.mark.parametrize("seqlen", [1, 7, 16, 17, 64, 300])
@pytest.mark.parametrize("n", [1, 7, 16, 97])
def test_selective_scan_plain_forms_match_loop(n, seqlen, variant, scan):
    # the two forms "ref" runs: chunked (where autograd differentiates it) and blocked (everywhere else);
    # 16 and 17 steps: one whole block of the blocked form, and one step past it
    bsz, groups, grouped, with_D, with_z, with_bias, softplus = SCAN_VARIANTS[variant]
    args, kw = scan_inputs(bsz, 6, n, seqlen, groups, grouped, with_D, with_z, with_bias, softplus,
                           seed=n * 1000 + seqlen)
    y, h = PLAIN_SCANS[scan](*args, **kw, return_last_state=True)
    y_loop, h_loop = ops.selective_scan(*args, **kw, return_last_state=True, backend="loop")
    assert y.shape == args[0].shape and h.shape == (bsz, 6, n) and y.is_contiguous()
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert rel_err(y, y_loop) < 1e-5
    assert rel_err(h, h_loop) < 1e-5
    # without return_last_state only y comes back
    y_only = PLAIN_SCANS[scan](*args, **kw)
    assert torch.equal(y_only, y)


def test_selective_scan_blocked_keeps_the_input_dtype_and_handles_no_steps():
    args, kw = scan_inputs(2, 4, 5, 40, with_D=True, with_z=True, seed=8)
    low = [t.to(torch.bfloat16) for t in args]
    y, h = selective_scan_blocked(*low, **kw, return_last_state=True)
    y_loop, h_loop = ops.selective_scan(*low, **kw, return_last_state=True, backend="loop")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert rel_err(y, y_loop) < 1e-2 and rel_err(h, h_loop) < 1e-5
    empty = [t[..., :0] if t.dim() == 3 else t for t in args]
    y0, h0 = selective_scan_blocked(*empty, return_last_state=True)
    assert y0.shape == (2, 4, 0) and torch.equal(h0, torch.zeros(2, 4, 5))


def test_ref_runs_the_chunked_form_only_where_autograd_needs_it(monkeypatch):
    calls = []
    for name in ("selective_scan_chunked", "selective_scan_blocked"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    args, kw = scan_inputs(1, 4, 3, 20, with_D=True, seed=9)
    ops.selective_scan(*args, **kw, backend="ref")  # grad mode on, but nothing requires a gradient
    with torch.no_grad():
        ops.selective_scan(*args, **kw, backend="ref")
    with torch.inference_mode():
        ops.selective_scan(*args, **kw, backend="ref")
    assert calls == ["selective_scan_blocked"] * 3
    calls.clear()
    u = args[0].clone().requires_grad_(True)
    D = kw.pop("D").clone().requires_grad_(True)  # a parameter alone also needs the differentiable form
    ops.selective_scan(u, *args[1:], D=D, **kw, backend="ref").sum().backward()
    ops.selective_scan(*args, D=D, **kw, backend="ref")
    with torch.no_grad():
        ops.selective_scan(u, *args[1:], D=D, **kw, backend="ref")
    assert calls == ["selective_scan_chunked", "selective_scan_chunked", "selective_scan_blocked"]
    assert u.grad is not None and D.grad is not None
    # off the CPU (two launches per step on a GPU) the chunked form serves inference too
    meta = [t.to("meta") for t in args]
    with torch.no_grad():
        assert ops._plain_scan("ref", *meta, {"D": None, "z": None, "delta_bias": None}) is ops.selective_scan_chunked


def test_selective_scan_one_group_layouts_agree():
    args3, kw = scan_inputs(2, 4, 5, 20, grouped_layout=False, seed=3)
    u, delta, A, B, C = args3
    y3 = ops.selective_scan(u, delta, A, B, C, backend="ref")
    y4 = ops.selective_scan(u, delta, A, B[:, None], C[:, None], backend="ref")
    torch.testing.assert_close(y3, y4, rtol=0, atol=0)


def test_selective_scan_groups_use_their_own_B_C():
    # with two groups, channels 0..D/2-1 see group 0 only: changing group 1's B leaves them unchanged
    args, kw = scan_inputs(1, 4, 3, 10, groups=2, seed=4)
    u, delta, A, B, C = args
    y = ops.selective_scan(u, delta, A, B, C, backend="loop")
    B2 = B.clone()
    B2[:, 1] += 1.0
    y2 = ops.selective_scan(u, delta, A, B2, C, backend="loop")
    assert torch.equal(y[:, :2], y2[:, :2])
    assert not torch.allclose(y[:, 2:], y2[:, 2:])
    y2_ref = ops.selective_scan(u, delta, A, B2, C, backend="ref")
    assert rel_err(y2_ref, y2) < 1e-5


@pytest.mark.parametrize("delta_scale,a_scale,seqlen", [(5.0, 16.0, 130), (1.5, 4.0, 200)])
def test_selective_scan_overflow_guard_falls_back(monkeypatch, delta_scale, a_scale, seqlen):
    """Large decays: |cumulative log-decay| passes the guard, so chunks take the log-depth scan; exact."""
    calls = []
    original = scan_chunked._scan_doubling

    def counting(h0, log_decay, drive):
        calls.append(log_decay.shape[-2])
        return original(h0, log_decay, drive)

    monkeypatch.setattr(scan_chunked, "_scan_doubling", counting)
    args, kw = scan_inputs(2, 5, 8, seqlen, groups=1, with_D=True, seed=11, delta_scale=delta_scale,
                           a_scale=a_scale)
    args[1].add_(delta_scale * 0.5)  # delta in [s/2, 3s/2]: large per-step decay everywhere
    y, h = scan_chunked.selective_scan_chunked(*args, **kw, return_last_state=True)
    assert calls, "the overflow guard never sent a chunk to the stable scan"
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    y_loop, h_loop = ops.selective_scan(*args, **kw, return_last_state=True, backend="loop")
    assert rel_err(y, y_loop) < 1e-5
    assert rel_err(h, h_loop) < 1e-5
    # the blocked form (no grad) needs no guard: it never exponentiates a growth
    y_b, h_b = ops.selective_scan(*args, **kw, return_last_state=True, backend="ref")
    assert rel_err(y_b, y_loop) < 1e-5 and rel_err(h_b, h_loop) < 1e-5

    # gradients stay finite and exact in this regime too
    def grads(backend):
        xs = [t.clone().requires_grad_(True) for t in args]
        y, h = ops.selective_scan(*xs, **kw, return_last_state=True, backend=backend)
        (y.sum() + h.square().sum()).backward()
        return [t.grad for t in xs]

    for g_ref, g_loop in zip(grads("ref"), grads("loop")):
        assert torch.isfinite(g_ref).all()
        assert rel_err(g_ref, g_loop) < 1e-4


@pytest.mark.parametrize("groups", [1, 2])
def test_selective_scan_chunked_gradients_match_loop(groups):
    args, kw = scan_inputs(2, 4, 7, 100, groups=groups, with_D=True, with_z=True, with_bias=True, softplus=True,
                           seed=21 + groups)
    leaves = {name: t for name, t in zip(("u", "delta", "A", "B", "C"), args)}
    leaves.update(D=kw["D"], z=kw["z"], delta_bias=kw["delta_bias"])
    g = gen(5)
    grad_y = torch.randn(2, 4, 100, generator=g)
    grad_h = torch.randn(2, 4, 7, generator=g)

    def grads(backend):
        xs = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        y, h = ops.selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], D=xs["D"], z=xs["z"],
                                  delta_bias=xs["delta_bias"], delta_softplus=True, return_last_state=True,
                                  backend=backend)
        ((y * grad_y).sum() + (h * grad_h).sum()).backward()
        return {k: v.grad for k, v in xs.items()}

    ref, loop = grads("ref"), grads("loop")
    for name in leaves:
        assert ref[name] is not None and torch.isfinite(ref[name]).all(), name
        assert rel_err(ref[name], loop[name]) < 1e-4, name


# ------------------------------------------------------------------------------------------- SSD inputs
def ssd_inputs(bsz, seqlen, nheads, headdim, groups, n, seed=0, D_shape=None, with_z=False, with_init=False):
    g = gen(seed)
    x = torch.randn(bsz, seqlen, nheads, headdim, generator=g)
    dt = torch.randn(bsz, seqlen, nheads, generator=g) - 1.0
    A = -torch.exp(torch.randn(nheads, generator=g))
    B = torch.randn(bsz, seqlen, groups, n, generator=g)
    C = torch.randn(bsz, seqlen, groups, n, generator=g)
    kw = dict(
        D=None if D_shape is None else torch.randn(*D_shape, generator=g),
        z=torch.randn(bsz, seqlen, nheads, headdim, generator=g) if with_z else None,
        dt_bias=torch.randn(nheads, generator=g) * 0.5,
        dt_softplus=True,
        initial_states=torch.randn(bsz, nheads, headdim, n, generator=g) if with_init else None,
    )
    return (x, dt, A, B, C), kw


SSD_VARIANTS = {
    # bsz, groups, D shape, z, initial_states, dt_limit
    "plain": (1, 1, None, False, False, (0.0, float("inf"))),
    "D-head-z-init": (2, 2, "H", True, True, (0.0, float("inf"))),
    "D-hp-limit": (2, 1, "HP", False, True, (0.05, 0.4)),
    "g2-limit-z": (1, 2, "HP", True, False, (0.1, float("inf"))),
}


@pytest.mark.parametrize("variant", list(SSD_VARIANTS))
@pytest.mark.parametrize("seqlen,chunk", [(1, 16), (45, 16), (37, 8), (64, 16)])
@pytest.mark.parametrize("n", [1, 13, 64])
def test_ssd_chunked_matches_loop(n, seqlen, chunk, variant):
    bsz, groups, D_kind, with_z, with_init, dt_limit = SSD_VARIANTS[variant]
    nheads, headdim = 4, 6
    D_shape = {None: None, "H": (nheads,), "HP": (nheads, headdim)}[D_kind]
    args, kw = ssd_inputs(bsz, seqlen, nheads, headdim, groups, n, seed=n * 100 + seqlen, D_shape=D_shape,
                          with_z=with_z, with_init=with_init)
    y, h = ops.ssd(*args, chunk, **kw, return_final_states=True, dt_limit=dt_limit, backend="ref")
    y_loop, h_loop = ops.ssd(*args, chunk, **kw, return_final_states=True, dt_limit=dt_limit, backend="loop")
    assert y.shape == args[0].shape and h.shape == (bsz, nheads, headdim, n)
    assert h.dtype == torch.float32
    assert rel_err(y, y_loop) < 1e-5
    assert rel_err(h, h_loop) < 1e-5


@pytest.mark.parametrize("chunk,seqlen,expected", [(256, 1000, 64), (256, 64, 64), (256, 40, 64), (256, 9, 16),
                                                    (256, 1, 1), (32, 1000, 32), (16, 9, 16)])
def test_ssd_ref_chunk_length_on_a_cpu(chunk, seqlen, expected):
    # at most CPU_REF_CHUNK, never longer than the sequence's next power of two, never longer than asked
    assert ops.ref_chunk_length(chunk, seqlen, torch.device("cpu")) == expected
    assert ops.ref_chunk_length(chunk, seqlen, torch.device("cuda")) == chunk  # not measured there: as asked


@pytest.mark.parametrize("seqlen", [9, 200])
def test_ssd_ref_runs_its_cpu_chunk_and_matches_the_asked_one(seqlen, monkeypatch):
    # ops.ssd on CPU tensors runs ssd_ref with the shorter chunk; the result is the same function (the
    # chunk length only changes rounding), against ssd_ref at the config's 256 and against the loop
    args, kw = ssd_inputs(2, seqlen, 4, 6, 2, 13, seed=seqlen, D_shape=(4,), with_z=True, with_init=True)
    from perfmamba.ops.scan_ref import ssd_ref
    chunks = []

    def spy(*a, **k):
        chunks.append(a[5])
        return ssd_ref(*a, **k)

    monkeypatch.setattr(ops, "ssd_ref", spy)
    y, h = ops.ssd(*args, 256, **kw, return_final_states=True, backend="ref")
    assert chunks == [ops.ref_chunk_length(256, seqlen, torch.device("cpu"))] and chunks[0] < 256
    y256, h256 = ssd_ref(*args, 256, **kw, return_final_states=True)
    y_loop, h_loop = ops.ssd(*args, 256, **kw, return_final_states=True, backend="loop")
    assert rel_err(y, y256) < 1e-6 and rel_err(h, h256) < 1e-6
    assert rel_err(y, y_loop) < 1e-5 and rel_err(h, h_loop) < 1e-5


def test_ssd_dt_limit_clamps():
    args, kw = ssd_inputs(1, 20, 2, 4, 1, 5, seed=9)
    y_free = ops.ssd(*args, 8, **kw, backend="loop")
    y_lim = ops.ssd(*args, 8, **kw, dt_limit=(0.2, 0.3), backend="loop")
    assert not torch.allclose(y_free, y_lim)
    # clamping dt by hand gives the same result as dt_limit
    x, dt, A, B, C = args
    dt_eff = F.softplus(dt + kw["dt_bias"]).clamp(0.2, 0.3)
    kw_raw = dict(kw, dt_bias=None, dt_softplus=False)
    y_hand = ops.ssd(x, dt_eff, A, B, C, 8, **kw_raw, backend="loop")
    assert rel_err(y_lim, y_hand) < 1e-6
    assert rel_err(ops.ssd(*args, 8, **kw, dt_limit=(0.2, 0.3), backend="ref"), y_lim) < 1e-5


def test_ssd_initial_state_continues_a_sequence():
    """Scanning [a, b] equals scanning a, then b from a's final state."""
    args, kw = ssd_inputs(2, 40, 4, 3, 2, 6, seed=10, D_shape=(4,))
    y_full, h_full = ops.ssd(*args, 16, **kw, return_final_states=True, backend="ref")
    first = [t[:, :25] for t in args[:2]] + [args[2]] + [t[:, :25] for t in args[3:]]
    second = [t[:, 25:] for t in args[:2]] + [args[2]] + [t[:, 25:] for t in args[3:]]
    y1, h1 = ops.ssd(*first, 16, **kw, return_final_states=True, backend="ref")
    y2, h2 = ops.ssd(*second, 16, **dict(kw, initial_states=h1), return_final_states=True, backend="ref")
    assert rel_err(torch.cat([y1, y2], dim=1), y_full) < 1e-5
    assert rel_err(h2, h_full) < 1e-5


@pytest.mark.parametrize("D_shape", [(4,), (4, 3)])
def test_ssd_chunked_gradients_match_loop(D_shape):
    args, kw = ssd_inputs(2, 37, 4, 3, 2, 5, seed=31, D_shape=D_shape, with_z=True, with_init=True)
    names = ("x", "dt", "A", "B", "C")
    leaves = dict(zip(names, args))
    leaves.update(D=kw["D"], z=kw["z"], dt_bias=kw["dt_bias"], initial_states=kw["initial_states"])
    g = gen(6)
    grad_y = torch.randn(args[0].shape, generator=g)
    grad_h = torch.randn(2, 4, 3, 5, generator=g)

    def grads(backend):
        xs = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        y, h = ops.ssd(xs["x"], xs["dt"], xs["A"], xs["B"], xs["C"], 16, D=xs["D"], z=xs["z"],
                       dt_bias=xs["dt_bias"], dt_softplus=True, initial_states=xs["initial_states"],
                       return_final_states=True, dt_limit=(0.0, 2.0), backend=backend)
        ((y * grad_y).sum() + (h * grad_h).sum()).backward()
        return {k: v.grad for k, v in xs.items()}

    ref, loop = grads("ref"), grads("loop")
    for name in leaves:
        assert ref[name] is not None and torch.isfinite(ref[name]).all(), name
        assert rel_err(ref[name], loop[name]) < 1e-4, name


# ------------------------------------------------------------------------------------------------ conv
def direct_conv(x, weight, bias, activation):
    width = weight.shape[-1]
    y = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("width,seqlen", [(4, 1), (4, 3), (4, 4), (4, 50), (3, 2), (3, 17), (2, 9)])
def test_causal_conv1d_matches_direct_conv(width, seqlen, with_bias, activation):
    g = gen(width * 100 + seqlen)
    x = torch.randn(2, 5, seqlen, generator=g)
    weight = torch.randn(5, width, generator=g)
    bias = torch.randn(5, generator=g) if with_bias else None
    y, state = ops.causal_conv1d(x, weight, bias, activation=activation, return_final_state=True, backend="ref")
    torch.testing.assert_close(y, direct_conv(x, weight, bias, activation), rtol=1e-5, atol=1e-6)
    assert state.shape == (2, 5, width)
    if seqlen >= width:
        assert torch.equal(state, x[..., -width:])
    else:  # fewer inputs than the kernel: zeros (the empty history) before them
        assert torch.equal(state[..., width - seqlen:], x)
        assert torch.equal(state[..., :width - seqlen], torch.zeros(2, 5, width - seqlen))
    assert torch.equal(ops.causal_conv1d(x, weight, bias, activation=activation, backend="ref"), y)


@pytest.mark.parametrize("width", [2, 4])
def test_causal_conv1d_initial_state_continues(width):
    g = gen(40 + width)
    x = torch.randn(2, 3, 20, generator=g)
    weight = torch.randn(3, width, generator=g)
    bias = torch.randn(3, generator=g)
    y_full, s_full = ops.causal_conv1d(x, weight, bias, "silu", return_final_state=True, backend="ref")
    y1, s1 = ops.causal_conv1d(x[..., :2], weight, bias, "silu", return_final_state=True, backend="ref")
    y2, s2 = ops.causal_conv1d(x[..., 2:], weight, bias, "silu", return_final_state=True, initial_state=s1,
                               backend="ref")
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full, rtol=1e-6, atol=1e-6)
    assert torch.equal(s2, s_full)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("width", [3, 4])
def test_causal_conv1d_update_chain_equals_full(width, with_bias):
    g = gen(50 + width)
    x = torch.randn(2, 6, 11, generator=g)
    weight = torch.randn(6, width, generator=g)
    bias = torch.randn(6, generator=g) if with_bias else None
    y_full, s_full = ops.causal_conv1d(x, weight, bias, "silu", return_final_state=True, backend="ref")
    state = torch.zeros(2, 6, width)
    ys = [ops.causal_conv1d_update(x[..., t], state, weight, bias, activation="silu", backend="ref")
          for t in range(x.shape[-1])]
    torch.testing.assert_close(torch.stack(ys, -1), y_full, rtol=1e-5, atol=1e-6)
    assert torch.equal(state, s_full)


# ------------------------------------------------------------------------------------- one-step updates
@pytest.mark.parametrize("groups,grouped", [(1, False), (1, True), (2, True)])
def test_selective_state_update_mamba1_chain_equals_scan(groups, grouped):
    bsz, dim, n, seqlen = 2, 6, 5, 13
    args, kw = scan_inputs(bsz, dim, n, seqlen, groups, grouped, with_D=True, with_z=True, with_bias=True,
                           softplus=True, seed=60 + groups)
    u, delta, A, B, C = args
    y_full, h_full = ops.selective_scan(*args, **kw, return_last_state=True, backend="loop")
    state = torch.zeros(bsz, dim, n)
    ys = []
    for t in range(seqlen):
        ys.append(ops.selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D=kw["D"],
                                             z=kw["z"][..., t], dt_bias=kw["delta_bias"], dt_softplus=True,
                                             backend="ref"))
    assert rel_err(torch.stack(ys, -1), y_full) < 1e-5
    assert rel_err(state, h_full) < 1e-5


@pytest.mark.parametrize("D_shape", [None, (4,), (4, 3)])
@pytest.mark.parametrize("groups", [1, 2])
def test_selective_state_update_mamba2_chain_equals_ssd(groups, D_shape):
    bsz, seqlen, nheads, headdim, n = 2, 11, 4, 3, 7
    args, kw = ssd_inputs(bsz, seqlen, nheads, headdim, groups, n, seed=70 + groups, D_shape=D_shape,
                          with_z=True, with_init=True)
    x, dt, A, B, C = args
    dt_limit = (0.05, 1.5)
    y_full, h_full = ops.ssd(*args, 4, **kw, return_final_states=True, dt_limit=dt_limit, backend="ref")
    state = kw["initial_states"].clone()
    ys = []
    for t in range(seqlen):
        ys.append(ops.selective_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=kw["D"],
                                             z=kw["z"][:, t], dt_bias=kw["dt_bias"], dt_softplus=True,
                                             dt_limit=dt_limit, backend="ref"))
    assert rel_err(torch.stack(ys, 1), y_full) < 1e-5
    assert rel_err(state, h_full) < 1e-5


# ------------------------------------------------------------------------------------------------ errors
def assert_one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def _good_scan():
    args, _ = scan_inputs(2, 4, 3, 5, groups=2)
    return list(args)


@pytest.mark.parametrize("index,bad", [
    (0, torch.randn(4, 5)),  # u without batch dim
    (1, torch.rand(2, 4, 6)),  # delta length differs
    (2, torch.randn(4, 3, 1)),  # A 3-d
    (2, torch.randn(5, 3)),  # A rows != channels
    (3, torch.randn(2, 2, 4, 5)),  # B's N != A's N
    (4, torch.randn(2, 3, 3, 5)),  # 3 groups do not divide 4 channels
    (3, torch.randn(1, 2, 3, 5)),  # batch mismatch
    (4, torch.randn(2, 2, 3, 6)),  # C length differs
])
def test_selective_scan_bad_shapes(index, bad):
    args = _good_scan()
    args[index] = bad
    with pytest.raises(PerfMambaError) as err:
        ops.selective_scan(*args, backend="ref")
    assert_one_line(err, "selective_scan", str(tuple(bad.shape)))


def test_selective_scan_bad_z_shape():
    with pytest.raises(PerfMambaError) as err:
        ops.selective_scan(*_good_scan(), z=torch.randn(2, 4, 4), backend="loop")
    assert_one_line(err, "selective_scan", "(2, 4, 4)")


def _good_ssd():
    args, kw = ssd_inputs(2, 10, 4, 3, 2, 5, with_init=True)
    return list(args), kw["initial_states"]


@pytest.mark.parametrize("bad", [
    dict(x=torch.randn(2, 10, 12)),  # x 3-d
    dict(dt=torch.randn(2, 10, 3)),  # dt heads differ
    dict(A=torch.randn(4, 1)),  # A not (H,)
    dict(B=torch.randn(2, 10, 2, 6)),  # B, C shapes differ
    dict(B=torch.randn(2, 10, 3, 5), C=torch.randn(2, 10, 3, 5)),  # 3 groups do not divide 4 heads
    dict(C=torch.randn(2, 9, 2, 5)),  # C length differs
], ids=["x", "dt", "A", "B-vs-C", "groups", "C-length"])
def test_ssd_bad_shapes(bad):
    args, _ = _good_ssd()
    named = dict(zip(("x", "dt", "A", "B", "C"), args))
    named.update(bad)
    with pytest.raises(PerfMambaError) as err:
        ops.ssd(*named.values(), 4, backend="ref")
    assert_one_line(err, "ssd", *(str(tuple(t.shape)) for t in bad.values()))


def test_ssd_bad_initial_states_and_z():
    args, init = _good_ssd()
    with pytest.raises(PerfMambaError) as err:
        ops.ssd(*args, 4, initial_states=init[..., :4], backend="ref")
    assert_one_line(err, "ssd", "(2, 4, 3, 4)")
    with pytest.raises(PerfMambaError) as err:
        ops.ssd(*args, 4, z=torch.randn(2, 10, 4, 2), backend="ref")
    assert_one_line(err, "ssd", "(2, 10, 4, 2)")


@pytest.mark.parametrize("x,weight", [
    (torch.randn(4, 10), torch.randn(4, 3)),
    (torch.randn(2, 4, 10), torch.randn(5, 3)),
    (torch.randn(2, 4, 10), torch.randn(4, 1, 3)),
])
def test_causal_conv1d_bad_shapes(x, weight):
    with pytest.raises(PerfMambaError) as err:
        ops.causal_conv1d(x, weight, backend="ref")
    assert_one_line(err, "causal_conv1d", str(tuple(x.shape)), str(tuple(weight.shape)))


def test_causal_conv1d_update_bad_shapes():
    with pytest.raises(PerfMambaError) as err:
        ops.causal_conv1d_update(torch.randn(2, 5), torch.zeros(2, 4, 3), torch.randn(4, 3), backend="ref")
    assert_one_line(err, "causal_conv1d_update", "(2, 5)", "(2, 4, 3)")
    with pytest.raises(PerfMambaError) as err:
        ops.causal_conv1d_update(torch.randn(2, 4), torch.zeros(2, 4, 3), torch.randn(4, 2), backend="ref")
    assert_one_line(err, "causal_conv1d_update", "(4, 2)")


def test_selective_state_update_bad_shapes():
    # Mamba-1 form: x has 5 channels, the state 4
    with pytest.raises(PerfMambaError) as err:
        ops.selective_state_update(torch.zeros(2, 4, 3), torch.randn(2, 5), torch.randn(2, 5), -torch.rand(4, 3),
                                   torch.randn(2, 3), torch.randn(2, 3), backend="ref")
    assert_one_line(err, "selective_state_update", "(2, 5)")
    # Mamba-2 form: B's state size 6 != the state's 5
    with pytest.raises(PerfMambaError) as err:
        ops.selective_state_update(torch.zeros(2, 4, 3, 5), torch.randn(2, 4, 3), torch.randn(2, 4),
                                   -torch.rand(4), torch.randn(2, 1, 6), torch.randn(2, 1, 6), backend="ref")
    assert_one_line(err, "selective_state_update", "(2, 1, 6)")


def test_unknown_backend():
    with pytest.raises(PerfMambaError) as err:
        ops.selective_scan(*_good_scan(), backend="cuda")
    assert_one_line(err, "'cuda'", "ref", "loop", "triton", "auto")
    args, _ = _good_ssd()
    with pytest.raises(PerfMambaError) as err:
        ops.ssd(*args, 4, backend="fast")
    assert_one_line(err, "'fast'")
    with pytest.raises(PerfMambaError) as err:
        ops.causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2), backend="")
    assert_one_line(err, "backend")


def test_auto_backend_on_cpu_is_ref():
    assert ops.resolve_backend("auto", torch.device("cpu")) == "ref"
    assert ops.resolve_backend("loop", "cpu") == "loop"
    args = _good_scan()
    assert torch.equal(ops.selective_scan(*args, backend="auto"), ops.selective_scan(*args, backend="ref"))


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(PerfMambaError) as err:
        ops.selective_scan(*_good_scan(), backend="triton")
    assert_one_line(err, "triton")
    args, _ = _good_ssd()
    with pytest.raises(PerfMambaError) as err:
        ops.ssd(*args, 4, backend="triton")
    assert_one_line(err, "triton")
    with pytest.raises(PerfMambaError) as err:
        ops.causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 2), backend="triton")
    assert_one_line(err, "triton")
    with pytest.raises(PerfMambaError) as err:
        ops.causal_conv1d_update(torch.randn(1, 2), torch.zeros(1, 2, 2), torch.randn(2, 2), backend="triton")
    assert_one_line(err, "triton")
    with pytest.raises(PerfMambaError) as err:
        ops.selective_state_update(torch.zeros(1, 2, 3), torch.randn(1, 2), torch.randn(1, 2), -torch.rand(2, 3),
                                   torch.randn(1, 3), torch.randn(1, 3), backend="triton")
    assert_one_line(err, "triton")
