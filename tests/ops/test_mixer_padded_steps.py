"""The Mamba-1 mixer on the Triton kernels at prompt lengths that are not multiples of STEP_MULTIPLE: run as
a padded number of steps (aligned rows for cuBLAS and the scan), the scan stopped at the true length, the
conv state taken there.  Logits and cache states equal the reference backend's; the scan's ``length``; the
rule that leaves short prompts unpadded.  The small shapes the interpreter can run are short prompts, so the
tests of the padding itself set PAD_AT_MOST = 0 (always padded to STEP_MULTIPLE)."""

import pytest
import torch
from kernel_harness import CUDA, interpreted, interpreter_env, ops, poisoned_like, record_launches, rel_err  # noqa: F401

from perfmamba import Mamba1Config, MambaLM
from perfmamba.errors import PerfMambaError
from perfmamba.models import mamba1
from perfmamba.ops.scan_ref import selective_scan_ref

CONFIG = Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=5)


@pytest.fixture
def always_padded(monkeypatch):
    monkeypatch.setattr(mamba1, "PAD_AT_MOST", 0)


def models():
    torch.manual_seed(0)
    ref = MambaLM(CONFIG, backend="ref").eval()
    fast = MambaLM(CONFIG, backend="triton").eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@interpreted
@pytest.mark.usefixtures("always_padded")
@pytest.mark.parametrize("seqlen", [35, 3, 16])
@pytest.mark.parametrize("bsz", [2, 1])
def test_padded_prefill_equals_the_reference(seqlen, bsz):
    ref, fast = models()
    ids = torch.randint(0, 64, (bsz, seqlen))
    mixer = fast.backbone.layers[0].mixer
    hidden = torch.randn(bsz, seqlen, 32)
    with torch.no_grad():
        x, z, length = mixer.prefill_in_proj(hidden)
    assert length == seqlen and x.shape[-1] == seqlen + (-seqlen % mamba1.STEP_MULTIPLE) == mamba1.padded_steps(seqlen)
    assert x.shape[:2] == z.shape[:2] == (bsz, mixer.d_inner)
    want = torch.nn.functional.linear(hidden, mixer.in_proj.weight).transpose(1, 2)  # (Bsz, 2D, L), no bias here
    assert rel_err(torch.cat([x, z], 1)[..., :seqlen], want) < 1e-6
    assert torch.count_nonzero(torch.cat([x, z], 1)[..., seqlen:]) == 0  # the padding's columns: zeros
    with torch.inference_mode():
        cache_ref, cache_fast = ref.allocate_cache(bsz), fast.allocate_cache(bsz)
        logits_ref, logits_fast = ref(ids, cache_ref), fast(ids, cache_fast)
    assert logits_fast.shape == logits_ref.shape == (bsz, seqlen, 64)
    assert rel_err(logits_fast, logits_ref) < 1e-5
    for got, want in zip(cache_fast.conv_states + cache_fast.ssm_states, cache_ref.conv_states + cache_ref.ssm_states):
        assert rel_err(got, want) < 1e-5  # the states after step L, not after the padding
    with torch.inference_mode():  # and decoding on from them agrees
        nxt = torch.randint(0, 64, (bsz, 1))
        cache_ref.seqlen_offset = cache_fast.seqlen_offset = seqlen
        assert rel_err(fast(nxt, cache_fast), ref(nxt, cache_ref)) < 1e-5


@interpreted
def test_scan_length_reads_the_padded_rows_in_place(monkeypatch):
    # inputs 48 steps long (rows aligned), length 35: the kernel runs PADDED on them as they lie, no copies
    from perfmamba.ops.triton import selective_scan as scan_mod
    g = torch.Generator().manual_seed(1)
    u, dt, z = (torch.randn(2, 4, 48, generator=g) for _ in range(3))
    A = -torch.rand(4, 5, generator=g) - 0.5
    B, C = torch.randn(2, 5, 48, generator=g), torch.randn(2, 5, 48, generator=g)
    kw = dict(D=torch.randn(4, generator=g), z=z, delta_bias=torch.randn(4, generator=g) * 0.1,
              delta_softplus=True, return_last_state=True)
    copies = []
    monkeypatch.setattr(scan_mod, "padded_copy", lambda t, n: copies.append(n))
    launched = record_launches(monkeypatch, scan_mod, "_selective_scan_kernel", "PADDED")
    y, h = ops.selective_scan(u, dt, A, B, C, **kw, backend="triton", length=35)
    cut = lambda t: t[..., :35]
    yr, hr = selective_scan_ref(cut(u), cut(dt), A, cut(B), cut(C), **dict(kw, z=cut(z)))
    assert y.shape == (2, 4, 35) and rel_err(y, yr) < 1e-5 and rel_err(h, hr) < 1e-5
    assert set(launched) == {(True,)} and not copies
    y2, h2 = ops.selective_scan(u, dt, A, B, C, **kw, backend="ref", length=35)  # the reference slices
    assert rel_err(y2, yr) < 1e-6 and rel_err(h2, hr) < 1e-6
    for backend in ("triton", "ref"):  # into a caller's buffer of all the steps: y is a view of its first 35
        out = poisoned_like(u)
        y3, _ = ops.selective_scan(u, dt, A, B, C, **kw, backend=backend, length=35, out=out)
        assert y3.data_ptr() == out.data_ptr() and y3.shape == (2, 4, 35) and rel_err(out[..., :35], yr) < 1e-5
    with pytest.raises(PerfMambaError, match="out must have u's shape"):
        ops.selective_scan(u, dt, A, B, C, **kw, length=35, out=poisoned_like(yr))
    cl = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731  channels-last: the step kernel
    y4, h4 = ops.selective_scan(cl(u), cl(dt), A, B, C, **dict(kw, z=cl(z)), backend="triton", length=35)
    assert y4.shape == (2, 4, 35) and rel_err(y4, yr) < 1e-5 and rel_err(h4, hr) < 1e-5
    with pytest.raises(PerfMambaError, match="length 49 is outside 0..48"):
        ops.selective_scan(u, dt, A, B, C, **kw, backend="triton", length=49)


@interpreted
@pytest.mark.usefixtures("always_padded")
def test_pruning_sees_the_sequence_not_the_padding():
    # calibration intercepts the scan, the refit bridge hooks out_proj: both get the L = 35 steps on the
    # Triton backend (run as 64) as on the reference backend
    from perfmamba.pruning.bridge import _mixer_io
    from perfmamba.pruning.calibration import intercept_scans
    ref, fast = models()
    ids = torch.randint(0, 64, (2, 35))
    seen = {}
    for name, model in (("ref", ref), ("fast", fast)):
        shapes = []
        record = lambda layer, family, args: shapes.append(  # noqa: E731
            (args["u"].shape, args["B"].shape, args["length"] in (None, args["u"].shape[-1])))
        with torch.inference_mode(), intercept_scans(model, record):
            logits = model(ids)
        seen[name] = (shapes, logits)
        hidden = model.backbone.embedding(ids)
        with torch.inference_mode():
            assert _mixer_io(model.backbone.layers[0], hidden)[1].shape == (2 * 35, 64)
    assert seen["fast"][0] == seen["ref"][0] == [((2, 64, 35), (2, 5, 35), True)] * 2
    assert rel_err(seen["fast"][1], seen["ref"][1]) < 1e-5  # the intercepted call still fills the mixer's y


@interpreted
@pytest.mark.usefixtures("always_padded")
def test_calibration_statistics_skip_the_padding():
    # the delta scores' sums (gate z included) over L = 35 steps run as 64 equal the reference backend's
    from perfmamba.pruning.calibration import collect_stats
    ref, fast = models()
    ids = torch.randint(0, 64, (2, 35))
    want, got = (collect_stats(m, ids, {"delta", "delta-out"}) for m in (ref, fast))
    for w, g in zip(want, got):
        assert g.tokens == w.tokens == 70
        for name in ("readout2", "write2", "readout2_gated"):
            assert rel_err(g.sums[name], w.sums[name]) < 1e-5, name


def test_the_padding_rule_leaves_short_prompts_unpadded():
    # the default rule: a multiple of 64 steps where that adds at most 1/16 of the steps, else of 16, else none
    lengths = (1, 3, 16, 35, 100, 200, 1000, 1024, 2040, 2047, 16383)
    assert [mamba1.padded_steps(n) for n in lengths] == [1, 3, 16, 35, 100, 208, 1024, 1024, 2048, 2048, 16384]


@interpreted
def test_short_prompts_run_unpadded():
    # the mixer on the Triton backend (CPU tensors: the interpreter) runs the rule's number of steps
    _, fast = models()
    mixer = fast.backbone.layers[0].mixer
    with torch.inference_mode():
        for seqlen, steps in ((16, 16), (35, 35), (200, 208)):
            x, z, length = mixer.prefill_in_proj(torch.randn(2, seqlen, 32))
            assert x.shape[-1] == z.shape[-1] == steps and length == seqlen


@interpreted
@pytest.mark.usefixtures("always_padded")
def test_the_model_pads_a_prompt_once_for_every_layer(monkeypatch):
    # MambaLM on the Triton backend pads the prompt at its embedding; its mixers take those rows as they
    # are (no pad of their own) and the true length; a layer on the reference backend does the same
    ref, fast = models()
    fast.backbone.layers[1].mixer.backend = "ref"
    calls, pads, outputs = [], [], []
    for block in fast.backbone.layers:
        block.mixer.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((args[0].shape[1], kwargs.get("length"))), with_kwargs=True)
        block.mixer.register_forward_hook(lambda m, args, out: outputs.append(out))
    real_pad = mamba1.F.pad
    monkeypatch.setattr(mamba1.F, "pad", lambda t, p, *a, **k: pads.append(tuple(t.shape)) or real_pad(t, p, *a, **k))
    ids = torch.randint(0, 64, (2, 35))
    with torch.inference_mode():
        cache_ref, cache_fast = ref.allocate_cache(2), fast.allocate_cache(2)
        logits_ref, logits_fast = ref(ids, cache_ref), fast(ids, cache_fast)
    assert calls == [(64, 35)] * 2
    # the padding's rows go on to the next layer: they must hold numbers, not leftover memory.  Past the
    # scan's last step (L's next multiple of 16, 48) y is zeros, so out_proj (no bias) gives zeros
    assert all(torch.isfinite(out).all() and torch.count_nonzero(out[:, 48:]) == 0 for out in outputs)
    # (F is torch's own module, so the LM's pad shows too): the ids once, then each layer's conv state only
    assert pads == [(2, 35)] + [(2, 2 * CONFIG.d_model, CONFIG.d_conv)] * 2
    assert rel_err(logits_fast, logits_ref) < 1e-5
    for got, want in zip(cache_fast.ssm_states + cache_fast.conv_states, cache_ref.ssm_states + cache_ref.conv_states):
        assert rel_err(got, want) < 1e-5
