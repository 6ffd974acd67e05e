"""Mamba-1's fused decode step (``ops.mamba1_mixer_step``) against the unfused reference ops it stands for:
in the Triton interpreter on the CPU, compiled on a GPU.  Outputs and the in-place states must match over
several steps (later steps read what the kernels wrote), and a whole model's step with the fused op must
equal the reference path's."""

import copy

import pytest
import torch
from kernel_harness import CUDA, interpreted, interpreter_env, ops, rel_err  # noqa: F401

from perfmamba.errors import PerfMambaError
from perfmamba.ops.decode_ref import mamba1_mixer_step_ref


def mamba1_step_case(bsz, dim, n, rank, dtype, device, seed=0, width=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    act = lambda *s: r(*s).to(device=device, dtype=dtype)  # noqa: E731
    return dict(x=act(bsz, dim), z=act(bsz, dim), conv_state=act(bsz, dim, width), conv_weight=act(dim, width) * 0.5,
                conv_bias=act(dim) * 0.1, x_proj_weight=act(rank + 2 * n, dim) * dim ** -0.5,
                ssm_state=r(bsz, dim, n).to(device), A=-torch.exp(r(dim, n) * 0.5).to(device), D=r(dim).to(device),
                dt_proj_weight=act(dim, rank) * rank ** -0.5, dt_proj_bias=(r(dim) * 0.1 - 2).to(device))


ORDER = ("x", "z", "conv_state", "conv_weight", "conv_bias", "x_proj_weight", "ssm_state", "A", "D",
         "dt_proj_weight", "dt_proj_bias")


def check_mamba1_step(bsz, dim, n, rank, dtype, device, tol, seed=0, steps=3, roomy=False):
    c = mamba1_step_case(bsz, dim, n, rank, dtype, device, seed)
    ref = {k: v.clone() for k, v in c.items()}
    if roomy:  # x_proj's weight in storage of 8 more rows, NaN: what the pitched GEMM reads past it is dropped
        w = c["x_proj_weight"]
        storage = torch.full((w.shape[0] + 8, dim), float("nan"), device=device, dtype=dtype)
        storage[:w.shape[0]] = w
        c["x_proj_weight"] = storage[:w.shape[0]]
    for _ in range(steps):  # the states carry over: later steps read what the kernels wrote
        y = ops.mamba1_mixer_step(*(c[k] for k in ORDER), backend="triton")
        yr = mamba1_mixer_step_ref(*(ref[k] for k in ORDER))
        assert y.dtype == yr.dtype and rel_err(y, yr) < tol
        assert torch.equal(c["conv_state"], ref["conv_state"])  # a shift: exact
        assert rel_err(c["ssm_state"], ref["ssm_state"]) < tol


@interpreted
class TestDecodeFusedInterpreted:
    @pytest.mark.parametrize("bsz,dim,n,rank", [(1, 64, 16, 4), (3, 40, 7, 3), (17, 32, 1, 2)])
    def test_mamba1_step(self, bsz, dim, n, rank):
        check_mamba1_step(bsz, dim, n, rank, torch.float32, "cpu", 1e-5, seed=n)


def test_mamba1_step_shape_error_names_the_shapes():
    c = mamba1_step_case(2, 16, 4, 2, torch.float32, "cpu")
    c["x_proj_weight"] = c["x_proj_weight"][:-1]
    with pytest.raises(PerfMambaError, match=r"mamba1_mixer_step: expected .* x_proj_weight \(9, 16\)"):
        ops.mamba1_mixer_step(*(c[k] for k in ORDER), backend="ref")


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
class TestDecodeFusedOnGPU:
    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    @pytest.mark.parametrize("bsz,n,roomy", [(1, 16, False), (4, 8, False), (16, 13, False), (16, 13, True)])
    def test_mamba1_step(self, dtype, tol, bsz, n, roomy):
        # 16: past MAX_BATCH, the unfused kernels; roomy: x_proj's GEMM on 80 rows (74 = 48 + 2 x 13 rounded up)
        check_mamba1_step(bsz, 1536, n, 48, dtype, "cuda", tol, seed=n, roomy=roomy)


@interpreted
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
@torch.inference_mode()
def test_model_step_with_fused_ops_equals_reference(family, randomise):
    # MambaLM.step with backend="triton" (interpreted here; Mamba-1 through the fused mixer step): its
    # logits and caches equal the reference path's

    from perfmamba import Mamba1Config, Mamba2Config, MambaLM
    cfg = (Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=7, d_conv=3) if family == "mamba1" else
           Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=16, headdim=16, chunk_size=8))
    model = randomise(MambaLM(cfg, backend="ref"), seed=3).eval()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    cache = model.allocate_cache(2)
    model(ids, cache)
    fused_cache = copy.deepcopy(cache)
    token = ids[:, -1]
    for _ in range(3):
        ref = model.step(token, cache)
        model.set_backend("triton")
        out = model.step(token, fused_cache)
        model.set_backend("ref")
        assert rel_err(out, ref) < 1e-5
        for a, b in zip(fused_cache.conv_states + fused_cache.ssm_states, cache.conv_states + cache.ssm_states):
            assert rel_err(a, b) < 1e-5
        token = ref.argmax(-1)


@interpreted
@pytest.mark.parametrize("roomy", [False, True])
def test_mamba1_step_past_the_fused_batch_limit(monkeypatch, roomy):
    from perfmamba.ops.triton import mamba1_step
    monkeypatch.setattr(mamba1_step, "MAX_BATCH", 2)  # batch 3 then takes the unfused kernels
    check_mamba1_step(3, 40, 7, 3, torch.float32, "cpu", 1e-5, seed=4, roomy=roomy)


def test_x_proj_rows_reads_rows_past_the_weight_only_where_its_storage_has_them():
    # x_proj_rows runs the GEMM on R + 2N rounded up to a multiple of 8 rows when the weight's storage holds
    # them (Mamba1Mixer.step keeps it so); whatever those rows hold (NaN here) must not reach the result
    from perfmamba.ops.triton.mamba1_step import pitched_rows, x_proj_rows
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 32, generator=g)
    exact = torch.randn(12, 32, generator=g)
    assert pitched_rows(exact) is None  # its storage ends with it
    storage = torch.full((16, 32), float("nan"))
    storage[:12] = exact
    roomy = storage[:12]
    assert pitched_rows(roomy).shape == (16, 32) and pitched_rows(roomy).data_ptr() == roomy.data_ptr()
    assert pitched_rows(storage[:16]) is None  # already a multiple of 8
    assert pitched_rows(storage.t().contiguous().t()[:12]) is None  # column-major: no view past it is taken
    want = torch.nn.functional.linear(x, exact)
    for w in (exact, roomy):
        got = x_proj_rows(x, w)
        assert got.shape == (6, 12) and torch.equal(got, want)


def _step_past_the_fused_batch(model):
    """(Triton step, reference step) of ``model`` from one prefill, at a batch the fused step does not take."""
    from perfmamba.ops.triton.mamba1_step import MAX_BATCH
    bsz = MAX_BATCH + 2
    ids = torch.randint(0, 64, (bsz, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache = model.allocate_cache(bsz)
        model(ids, cache)
        ref_cache = copy.deepcopy(cache)
        ref = model.step(ids[:, -1], ref_cache)
        model.set_backend("triton")
        out = model.step(ids[:, -1], cache)
        model.set_backend("ref")
    return out, ref


@interpreted
@pytest.mark.parametrize("made_in_inference_mode", [False, True])
def test_model_step_keeps_x_proj_rows_pitched(randomise, made_in_inference_mode, tmp_path):
    # the first Triton step moves x_proj's weight (R + 2N = 12 rows) into zeroed storage of 16 rows: the same
    # parameter, values and layout, not an inference tensor (a backward still runs); the step past the fused
    # batch limit reads the 16 rows and equals the reference path.  A model made in inference mode keeps its
    # weights where they are, and its step is as right.
    from perfmamba import Mamba1Config, MambaLM
    from perfmamba.ops.triton.mamba1_step import pitched_rows
    with torch.inference_mode(made_in_inference_mode):
        model = randomise(MambaLM(Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=5, d_conv=3),
                                  backend="ref"), seed=5).eval()
    weights = [layer.mixer.x_proj.weight for layer in model.backbone.layers]
    before = [w.detach().clone() for w in weights]
    assert weights[0].shape == (12, 64) and pitched_rows(weights[0]) is None
    out, ref = _step_past_the_fused_batch(model)
    assert rel_err(out, ref) < 1e-5
    for layer, w, b in zip(model.backbone.layers, weights, before):
        now = layer.mixer.x_proj.weight
        assert now is w and torch.equal(now, b) and now.is_contiguous()
        if made_in_inference_mode:
            assert pitched_rows(now) is None
            continue
        assert not now.is_inference() and pitched_rows(now) is not None
        assert torch.count_nonzero(pitched_rows(now)[12:]) == 0
    if not made_in_inference_mode:
        from perfmamba.api import load_model
        from perfmamba.models.checkpoint import save_checkpoint
        for fmt in ("hf", "mamba_ssm"):  # the weights in longer storage save and load as they are
            save_checkpoint(model, str(tmp_path / fmt), fmt)
            loaded = load_model(str(tmp_path / fmt))
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
            assert loaded.backbone.layers[0].mixer.x_proj.weight.shape == (12, 64)
        model(torch.randint(0, 64, (2, 5))).float().sum().backward()
        assert weights[0].grad is not None and weights[0].grad.shape == (12, 64)
