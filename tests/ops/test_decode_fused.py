"""Mamba-1's fused decode step (``ops.mamba1_mixer_step``) against the unfused reference ops it stands for:
in the Triton interpreter on the CPU, compiled on a GPU.  Outputs and the in-place states must match over
several steps (later steps read what the kernels wrote), and a whole model's step with the fused op must
equal the reference path's."""

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


def check_mamba1_step(bsz, dim, n, rank, dtype, device, tol, seed=0, steps=3):
    c = mamba1_step_case(bsz, dim, n, rank, dtype, device, seed)
    ref = {k: v.clone() for k, v in c.items()}
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
    @pytest.mark.parametrize("bsz,n", [(1, 16), (4, 8), (16, 13)])  # 16: past MAX_BATCH, the unfused kernels
    def test_mamba1_step(self, dtype, tol, bsz, n):
        check_mamba1_step(bsz, 1536, n, 48, dtype, "cuda", tol, seed=n)


@interpreted
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
@torch.inference_mode()
def test_model_step_with_fused_ops_equals_reference(family, randomise):
    # MambaLM.step with backend="triton" (interpreted here; Mamba-1 through the fused mixer step): its
    # logits and caches equal the reference path's
    import copy

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
def test_mamba1_step_past_the_fused_batch_limit(monkeypatch):
    from perfmamba.ops.triton import mamba1_step
    monkeypatch.setattr(mamba1_step, "MAX_BATCH", 2)  # batch 3 then takes the unfused kernels
    check_mamba1_step(3, 40, 7, 3, torch.float32, "cpu", 1e-5, seed=4)
