"""Calibration statistics and scores: shapes, determinism, the delta formula on hand-computed cases, state
statistics against plain loops, and the Taylor score against a finite difference."""

import math

import pytest
import torch
import torch.nn.functional as F

from perfmamba import ops
from perfmamba.errors import PerfMambaError
from perfmamba.pruning import calibration as cal
from perfmamba.pruning.scores import METHODS, compute_scores, stats_needed

from prune_helpers import CONFIGS, make_model, token_ids


@pytest.fixture(scope="module", params=list(CONFIGS))
def calibrated(request):
    model = make_model(request.param)
    ids = token_ids(2, 40, seed=5)
    return model, ids, cal.collect(model, ids, stats_needed(METHODS))


def test_every_method_gives_one_finite_nonnegative_score_per_group_and_state(calibrated):
    model, _, stats = calibrated
    cfg = model.config
    groups = 1 if cfg.family == "mamba1" else cfg.ngroups
    for method in METHODS:
        scores = compute_scores(method, model, stats)
        assert len(scores) == cfg.n_layer
        for s in scores:
            assert s.shape == (groups, cfg.d_state) and s.dtype == torch.float64, method
            assert torch.isfinite(s).all() and (s >= 0).all(), method
            assert s.std() > 0, method


def test_random_is_seeded(calibrated):
    model, _, _ = calibrated
    a, b = compute_scores("random", model, seed=7), compute_scores("random", model, seed=7)
    c = compute_scores("random", model, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # layers draw different numbers


def test_interception_leaves_the_ops_as_they_were(calibrated):
    model, ids, _ = calibrated
    before = (ops.selective_scan, ops.ssd)
    with torch.no_grad():
        expected = model(ids)
        with cal.intercept_scans(model, lambda layer, family, args: None):
            assert ops.selective_scan is not before[0]
            got = model(ids)
    assert (ops.selective_scan, ops.ssd) == before
    assert torch.equal(got, expected)


def _surv(a, horizon):
    return sum(a ** k for k in range(horizon))


def test_delta_formula_mamba1_hand_computed():
    # one channel (D = 1), two states, two tokens, no bias or softplus: dt is used as given
    dt, u = [0.5, 1.0], [2.0, -1.0]
    A = [-1.0, -3.0]
    B = [[1.0, -2.0], [0.5, 1.0]]  # B[t][n]
    C = [[3.0, 1.0], [-1.0, 2.0]]
    args = {"u": torch.tensor([[u]]), "delta": torch.tensor([[dt]]), "A": torch.tensor([A]),
            "B": torch.tensor([B]).transpose(1, 2), "C": torch.tensor([C]).transpose(1, 2),
            "delta_bias": None, "delta_softplus": False}
    stats = cal.LayerStats(groups=1, channels=1, d_state=2)
    cal._accumulate_forward(stats, cal.scan_view("mamba1", args), {"delta-abs", "delta-gate"}, horizon=3)
    (score,) = compute_scores("delta-abs", None, [stats])
    (gate,) = compute_scores("delta-gate", None, [stats])
    for n in range(2):
        expected = sum(abs(C[t][n]) * abs(B[t][n]) * dt[t] * abs(u[t]) * _surv(math.exp(dt[t] * A[n]), 3)
                       for t in range(2)) / 2  # mean over 2 tokens x 1 channel
        assert score[0, n].item() == pytest.approx(expected, rel=1e-6)
        expected_gate = sum(abs(1 - math.exp(dt[t] * A[n])) * abs(B[t][n]) * abs(C[t][n]) for t in range(2)) / 2
        assert gate[0, n].item() == pytest.approx(expected_gate, rel=1e-6)


def test_delta_formula_mamba2_groups_hand_computed():
    # two heads of headdim 1, two groups (one head each), one state, one token; softplus on dt + bias
    x = [1.0, -2.0]  # per head
    dt_raw, dt_bias = [0.0, 1.0], [0.5, -0.5]
    A = [-2.0, -0.5]
    B = [[1.5], [-1.0]]  # B[g][n]
    C = [[2.0], [0.5]]
    args = {"x": torch.tensor(x).view(1, 1, 2, 1), "dt": torch.tensor(dt_raw).view(1, 1, 2), "A": torch.tensor(A),
            "B": torch.tensor(B).view(1, 1, 2, 1), "C": torch.tensor(C).view(1, 1, 2, 1),
            "dt_bias": torch.tensor(dt_bias), "dt_softplus": True, "dt_limit": (0.0, float("inf"))}
    stats = cal.LayerStats(groups=2, channels=1, d_state=1)
    cal._accumulate_forward(stats, cal.scan_view("mamba2", args), {"delta-abs"}, horizon=4)
    (score,) = compute_scores("delta-abs", None, [stats])
    for g in range(2):
        step = math.log1p(math.exp(dt_raw[g] + dt_bias[g]))
        expected = abs(C[g][0]) * abs(B[g][0]) * step * abs(x[g]) * _surv(math.exp(step * A[g]), 4)
        assert score[g, 0].item() == pytest.approx(expected, rel=1e-6)


def test_delta_rms_formula_mamba1_hand_computed():
    # two channels (D = 2), two states, three tokens; A per (channel, state); no bias or softplus
    dt = [[0.5, 1.0, 0.2], [0.1, 0.3, 2.0]]  # dt[m][t]
    u = [[2.0, -1.0, 0.5], [1.0, 3.0, -2.0]]
    A = [[-1.0, -3.0], [-0.2, -0.7]]  # A[m][n]
    B = [[1.0, -2.0], [0.5, 1.0], [-1.5, 0.25]]  # B[t][n]
    C = [[3.0, 1.0], [-1.0, 2.0], [0.5, -0.5]]
    args = {"u": torch.tensor([u]), "delta": torch.tensor([dt]), "A": torch.tensor(A),
            "B": torch.tensor([B]).transpose(1, 2), "C": torch.tensor([C]).transpose(1, 2),
            "delta_bias": None, "delta_softplus": False}
    stats = cal.LayerStats(groups=1, channels=2, d_state=2)
    cal._accumulate_forward(stats, cal.scan_view("mamba1", args), {"delta"}, horizon=5)
    (score,) = compute_scores("delta", None, [stats])
    for n in range(2):
        readout = math.sqrt(sum(C[t][n] ** 2 for t in range(3)) / 3)
        state = sum(math.sqrt(sum((dt[m][t] * u[m][t] * B[t][n]) ** 2 * _surv(math.exp(2 * dt[m][t] * A[m][n]), 5)
                                  for t in range(3)) / 3) for m in range(2)) / 2
        assert score[0, n].item() == pytest.approx(readout * state, rel=1e-6)


def test_delta_rms_formula_mamba2_hand_computed():
    # two heads of headdim 2 in one group, two states, two tokens; softplus on dt + bias
    x = [[[1.0, -2.0], [0.5, 1.5]], [[-1.0, 0.5], [2.0, -0.25]]]  # x[t][head][p]
    dt_raw, dt_bias = [[0.0, 1.0], [-1.0, 0.5]], [0.5, -0.5]  # dt_raw[t][head]
    A = [-2.0, -0.5]
    B = [[1.5, -0.5], [-1.0, 2.0]]  # B[t][n]
    C = [[2.0, 0.1], [0.5, -1.0]]
    args = {"x": torch.tensor(x).view(1, 2, 2, 2), "dt": torch.tensor(dt_raw).view(1, 2, 2),
            "A": torch.tensor(A), "B": torch.tensor(B).view(1, 2, 1, 2), "C": torch.tensor(C).view(1, 2, 1, 2),
            "dt_bias": torch.tensor(dt_bias), "dt_softplus": True, "dt_limit": (0.0, float("inf"))}
    stats = cal.LayerStats(groups=1, channels=4, d_state=2)
    cal._accumulate_forward(stats, cal.scan_view("mamba2", args), {"delta"}, horizon=4)
    (score,) = compute_scores("delta", None, [stats])
    for n in range(2):
        readout = math.sqrt(sum(C[t][n] ** 2 for t in range(2)) / 2)
        state = 0.0
        for h in range(2):
            for p in range(2):
                energy = 0.0
                for t in range(2):
                    step = math.log1p(math.exp(dt_raw[t][h] + dt_bias[h]))
                    energy += (step * x[t][h][p] * B[t][n]) ** 2 * _surv(math.exp(2 * step * A[h]), 4)
                state += math.sqrt(energy / 2)
        assert score[0, n].item() == pytest.approx(readout * state / 4, rel=1e-6)


def _random_m1_args(seqlen, seed, n_state=4):
    g = torch.Generator().manual_seed(seed)
    return {"u": torch.randn(1, 3, seqlen, generator=g), "delta": torch.rand(1, 3, seqlen, generator=g),
            "A": -torch.rand(3, n_state, generator=g) - 0.1, "B": torch.randn(1, n_state, seqlen, generator=g),
            "C": torch.randn(1, n_state, seqlen, generator=g), "delta_bias": None, "delta_softplus": False}


def _score(args, method):
    stats = cal.LayerStats(groups=1, channels=3, d_state=args["A"].shape[1])
    cal._accumulate_forward(stats, cal.scan_view("mamba1", args), {"delta", "delta-abs", "delta-gate"}, horizon=16)
    return compute_scores(method, None, [stats])[0][0]


def test_delta_reads_out_at_later_tokens_not_only_the_writing_one():
    # the read-out is its own expectation over tokens: shuffling C in time leaves delta unchanged, while the
    # same-token ablation (delta-abs) changes, since it pairs C with the write of the same token
    args = _random_m1_args(24, seed=3)
    shuffled = dict(args, C=args["C"][:, :, torch.randperm(24, generator=torch.Generator().manual_seed(1))])
    assert torch.allclose(_score(args, "delta"), _score(shuffled, "delta"), rtol=1e-6)
    assert not torch.allclose(_score(args, "delta-abs"), _score(shuffled, "delta-abs"), rtol=1e-3)


def test_delta_ranks_by_drive_readout_and_survival():
    args = _random_m1_args(32, seed=4)
    B, C, A = args["B"].clone(), args["C"].clone(), args["A"].clone()
    B[:, 0] = 0.0  # state 0 is never written
    C[:, 1] = 0.0  # state 1 is never read
    B[:, 2], C[:, 2], B[:, 3], C[:, 3] = B[:, 3], C[:, 3], B[:, 3], C[:, 3]  # states 2, 3: same B and C ...
    A[:, 2], A[:, 3] = -0.05, -2.0  # ... but 2 remembers (small |A|) and 3 forgets at once
    score = _score(dict(args, B=B, C=C, A=A), "delta")
    assert score[0].item() == 0.0 and score[1].item() == 0.0
    assert score[2] > 2 * score[3] > 0
    # scaling the drive of every channel by c scales the score by |c|; the read-out likewise
    twice = _score(dict(args, B=B, C=3 * C, A=A, u=-2 * args["u"]), "delta")
    assert torch.allclose(twice, 6 * score, rtol=1e-6)


def _loop_states(view):
    """h for every step by the plain recurrence, (Bsz, G, M, L, N)."""
    seqlen = view.du.shape[3]
    h = torch.zeros(*view.du.shape[:3], view.B.shape[-1], dtype=torch.float64)
    out = []
    for t in range(seqlen):
        a = torch.exp(view.log_decay(t, t + 1)[:, :, :, 0].double())
        h = a * h + (view.du[:, :, :, t] * view.B[:, :, :, t]).double()
        out.append(h)
    return torch.stack(out, dim=3)


def _loop_observability(view):
    seqlen = view.du.shape[3]
    g = torch.zeros(*view.du.shape[:3], view.B.shape[-1], dtype=torch.float64)
    total = torch.zeros_like(g)
    for t in reversed(range(seqlen)):
        a_next = (torch.exp(view.log_decay(t + 1, t + 2)[:, :, :, 0].double()) if t + 1 < seqlen
                  else torch.zeros_like(g))
        g = view.C[:, :, :, t].double() ** 2 + a_next ** 2 * g
        total = total + g
    return total.sum(0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_statistics_match_plain_loops(name, monkeypatch):
    monkeypatch.setattr(cal, "CHUNK", 7)  # several chunks, the last one short
    model = make_model(name)
    ids = token_ids(1, 30, seed=2)
    views = {}

    def grab(layer, family, args):
        views.setdefault(layer, cal.scan_view(family, args))

    with torch.no_grad(), cal.intercept_scans(model, grab):
        model(ids)
    stats = cal.collect_stats(model, ids, {"states", "observability"})
    for layer, view in views.items():
        h = _loop_states(view)
        s = stats[layer]
        assert torch.allclose(s.sums["wc"], h.square().sum((0, 3)), rtol=1e-4, atol=1e-9)
        assert torch.allclose(s.sums["out_abs"], (h * view.C.double()).abs().sum((0, 2, 3)), rtol=1e-4, atol=1e-9)
        assert torch.allclose(s.sums["wo"], _loop_observability(view), rtol=1e-4, atol=1e-9)


def test_linear_recurrence_survives_fast_decay():
    g = torch.Generator().manual_seed(0)
    log_a = -torch.rand(3, 50, 4, generator=g) * 20  # cumulative decay far past fp32 range
    b = torch.randn(3, 50, 4, generator=g)
    h0 = torch.randn(3, 4, generator=g)
    got = cal.linear_recurrence(log_a, b, h0)
    h, ref = h0.double(), []
    for t in range(50):
        h = torch.exp(log_a[:, t].double()) * h + b[:, t]
        ref.append(h)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), torch.stack(ref, 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["m1", "m2-g2"])
def test_taylor_equals_a_finite_difference(name):
    """The Taylor statistic |dLoss/dm_n| (m_n scaling the C_n the scan reads) equals a central finite
    difference of the loss along that scaling."""
    model = make_model(name)  # the scans compute in fp32: a central difference with eps 1e-2 is accurate
    ids = token_ids(1, 20, seed=3)
    stats0 = cal.collect_taylor(model, ids)[0]
    layer, group, n, eps = 0, 0, 3, 1e-2

    def loss_with(scale):
        def scale_c(lay, family, args):
            if lay == layer:
                c = args["C"].clone()
                if family == "mamba1":
                    c[:, n] = c[:, n] * scale
                else:
                    c[:, :, group, n] = c[:, :, group, n] * scale
                args["C"] = c
            return args
        with torch.no_grad(), cal.intercept_scans(model, scale_c):
            logits = model(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()

    fd = (loss_with(1 + eps) - loss_with(1 - eps)) / (2 * eps)
    assert stats0.sums["taylor"][group, n].item() == pytest.approx(abs(fd), rel=2e-3)


@pytest.mark.parametrize("method,sums", [("delta", {"readout2", "write2"}), ("delta-abs", {"activity"}),
                                         ("delta-gate", {"gate"})])
def test_each_delta_form_collects_only_its_own_sums(method, sums):
    # a score's calibration pass computes the statistics of that form alone (scores.NEEDS), and a score whose
    # statistics were not collected says so instead of reading another form's sums
    args = _random_m1_args(20, seed=7)
    stats = cal.LayerStats(groups=1, channels=3, d_state=4)
    cal._accumulate_forward(stats, cal.scan_view("mamba1", args), stats_needed([method]), horizon=8)
    assert set(stats.sums) == sums
    assert compute_scores(method, None, [stats])[0].shape == (1, 4)
    other = "delta-gate" if method != "delta-gate" else "delta"
    with pytest.raises(PerfMambaError, match="did not collect"):
        compute_scores(other, None, [stats])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gated_readout_matches_a_loop_over_module_outputs(name):
    # readout2_gated = sum_t s[t,m]^2 C[t,n]^2 with s the factor between the scan's output and out_proj,
    # rebuilt here with a loop over tokens from the modules' own inputs and outputs (z from in_proj applied to
    # the mixer's input, the norm's input y) and the scan's C, instead of the interceptor's reshaped tensors
    model = make_model(name)
    ids = token_ids(2, 12, seed=3)
    (stats0, _) = cal.collect_stats(model, ids, {"delta-out"})
    mixer, cfg = model.backbone.layers[0].mixer, model.config
    seen = {}
    hooks = [mixer.register_forward_pre_hook(lambda m, i: seen.__setitem__("zx", mixer.in_proj(i[0])))]
    if cfg.family == "mamba2":
        hooks.append(mixer.norm.register_forward_pre_hook(lambda m, i: seen.__setitem__("y", i[0])))

    def keep_c(layer, family, args):
        if layer == 0:
            seen["C"] = args["C"]
    with torch.no_grad(), cal.intercept_scans(model, keep_c):
        model(ids)
    for h in hooks:
        h.remove()
    d, n, groups = cfg.d_inner, cfg.d_state, stats0.groups
    per = d // groups
    if cfg.family == "mamba1":
        z = seen["zx"][..., d:]  # (Bsz, L, D): in_proj's rows are x then z
        C = seen["C"].transpose(1, 2)[:, :, None]  # (Bsz, L, 1, N)
        s = F.silu(z)
    else:
        z = seen["zx"][..., :d]  # z first
        C = seen["C"]  # (Bsz, L, G, N)
        s = torch.empty_like(z)
        for g in range(groups):
            cols = slice(g * per, (g + 1) * per)
            gated = seen["y"][..., cols] * F.silu(z[..., cols])
            s[..., cols] = F.silu(z[..., cols]) / (gated.square().mean(-1, keepdim=True) + mixer.norm.eps).sqrt()
    want = torch.zeros(groups, per, n, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            for g in range(groups):
                s_t = s[b, t, g * per:(g + 1) * per].double()
                want[g] += s_t[:, None].square() * C[b, t, g].double()[None].square()
    assert torch.allclose(stats0.sums["readout2_gated"], want, rtol=1e-5, atol=1e-9)


def test_delta_out_weighs_each_channel_by_what_reaches_the_output():
    # zeroing group 1's norm weight in layer 0 cuts that group off from the block's output: its delta-out
    # scores drop to 0, group 0's stay (layer 0's statistics come before its norm, so they do not change)
    model = make_model("m2-g2")
    ids = token_ids(2, 24, seed=4)
    before = compute_scores("delta-out", model, cal.collect(model, ids, stats_needed(["delta-out"])))[0]
    with torch.no_grad():
        weight = model.backbone.layers[0].mixer.norm.weight
        weight[weight.numel() // 2:] = 0
    after = compute_scores("delta-out", model, cal.collect(model, ids, stats_needed(["delta-out"])))[0]
    assert (before > 0).all()
    assert torch.allclose(after[0], before[0], rtol=1e-6) and torch.equal(after[1], torch.zeros_like(after[1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_scores_of_a_model_on_the_gpu_equal_the_cpu_ones(name):
    # every calibrated score of the same model and token ids, computed on CUDA (the Triton kernels) and on
    # the CPU (the reference): the sums live on the CPU either way, the model's weights do not
    ids = token_ids(2, 32, seed=6)
    methods = [m for m in METHODS if m not in ("random", "magnitude", "taylor")]
    cpu = make_model(name)
    gpu = make_model(name, backend="triton").cuda()
    want = {m: compute_scores(m, cpu, cal.collect(cpu, ids, stats_needed(methods))) for m in methods}
    stats = cal.collect(gpu, ids, stats_needed(methods))
    for m in methods:
        for w, g in zip(want[m], compute_scores(m, gpu, stats)):
            assert g.device.type == "cpu" and ((g - w).norm() / w.norm()).item() < 1e-3, m
