"""The SSD kernel's transposed layout (``_ssd_fused_t_kernel``: P channels as the rows of every tile).

It is chosen by a fifth config element True, so each test passes ``config=`` (under the interpreter the
autotuner takes its single interpreter candidate, the default layout).  Checked against the step-by-step
reference ``ssd_loop_ref``, whole and split-L, with y pre-filled with NaN: one and two state tiles (7, 16,
32: one; 40 = 32 + 16, 96 = 64 + 32: two; at BLOCK_T = 64 see ``transposed_tiles``), lengths that are not
multiples of BLOCK_T, one and two groups, D of shape (H,) and (H, P), with and without z and an initial
state.  Without CUDA the kernels run in the Triton interpreter on small CPU shapes (set up by
``kernel_harness``); with CUDA the GPU test runs the compiled kernels.
"""

import pytest
import torch
from kernel_harness import CUDA, count_state_passing, interpreted, interpreter_env, rel_err  # noqa: F401
from test_ssd_two_tiles import make_case

from perfmamba.ops.scan_ref import ssd_loop_ref
from perfmamba.ops.triton import ssd as ssd_mod
from perfmamba.ops.triton.ssd import _ssd_configs, ssd_triton

T16 = (16, 16, 1, 1, True)  # BLOCK_T 16, BLOCK_P 16 (headdim 24: two P blocks, the second one partial)


def check(c, tol, config, splits=None, dt_limit=(0.0, float("inf"))):
    args = (c["x"], c["dt"], c["A"], c["B"], c["C"])
    kw = dict(D=c["D"], z=c["z"], dt_bias=c["dt_bias"], dt_softplus=True, initial_states=c["initial_states"],
              return_final_states=True, dt_limit=dt_limit)
    y, h = ssd_triton(*args, 64, **kw, out=torch.full_like(c["x"], float("nan")), splits=splits, config=config)
    f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
    yr, hr = ssd_loop_ref(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], **kw)
    assert y.dtype == c["x"].dtype and h.dtype == torch.float32 and h.shape == hr.shape
    assert rel_err(y, yr) < tol, "y"
    assert rel_err(h, hr) < tol, "final state"


@interpreted
class TestTransposedInterpreted:
    @pytest.mark.parametrize("n,groups,seqlen,d_shape,has_z,has_init", [
        (7, 1, 37, "h", True, True),
        (16, 2, 33, "hp", False, True),
        (32, 1, 50, None, True, False),
        (40, 2, 19, "hp", True, True),   # two tiles, 32 + 16
        (96, 1, 40, "h", False, False),  # two tiles, 64 + 32
    ])
    def test_whole_sequence(self, n, groups, seqlen, d_shape, has_z, has_init):
        c = make_case(2, seqlen, 2, 24, groups, n, d_shape, has_z, has_init, seed=n * 100 + seqlen)
        check(c, 1e-5, T16)

    @pytest.mark.parametrize("n,groups,has_init", [(32, 2, True), (40, 1, False)])
    def test_split_sequence(self, monkeypatch, n, groups, has_init):
        # splits=3: the states-only pass, state passing, and the rerun from the passed states all take the
        # transposed kernel (segments of 32 steps, the last one 6)
        passes = count_state_passing(monkeypatch)
        c = make_case(1, 70, 2, 16, groups, n, "hp", True, has_init, seed=n + 7)
        check(c, 1e-5, T16, splits=3)
        assert len(passes) == 1 and passes[0][1] == 3

    @pytest.mark.parametrize("n", [7, 32, 96])
    def test_block_t_64_tiles(self, n):
        # BLOCK_T 64: a single tile narrower than 64 (7 -> 16, 32) takes the kernel's (N, T) @ (T, P) state
        # update; 96 (64 + 32) runs as one tile of 128 (transposed_tiles)
        c = make_case(1, 70, 2, 16, 1, n, "hp", True, True, seed=n + 11)
        check(c, 1e-5, (64, 16, 1, 1, True))

    def test_long_tile_and_dt_limit(self):
        # BLOCK_T 32 (two chunks, the second partial) with a dt clamp
        c = make_case(1, 45, 2, 16, 1, 16, "h", True, True, seed=3)
        check(c, 1e-5, (32, 16, 1, 1, True), dt_limit=(0.05, 0.8))


def test_transposed_candidates(monkeypatch):
    # the GPU's candidate list (also under the interpreter): the transposed layout at BLOCK_T = BLOCK_P = 64
    # only (where it was measured), first (measured fastest); none with BLOCK_P < 64 or chunks below 64
    monkeypatch.setattr(ssd_mod, "interpreting", lambda: False)
    for n in (16, 32, 40, 64, 96, 128):
        cands = ssd_mod._ssd_configs(64, n, 256)
        assert cands[0] == (64, 64, 4, 2, True) and (64, 64, 4, 3, True) in cands, n
        assert all(cfg[:2] == (64, 64) for cfg in cands if len(cfg) > 4), n
        assert sum(len(cfg) == 4 for cfg in cands) == len(cands) - 2, n
    assert not any(len(cfg) > 4 for cfg in ssd_mod._ssd_configs(32, 32, 256))  # head dim 32: BLOCK_P 32
    assert not any(len(cfg) > 4 for cfg in ssd_mod._ssd_configs(64, 32, 32))  # chunk 32: BLOCK_T <= 32
    assert not any(len(cfg) > 4 for cfg in ssd_mod._ssd_configs(64, 200, 256))  # past 128 states


def test_transposed_tiles():
    # at BLOCK_T = 64 no second state tile is narrower than 64 (a Triton 3.6 miscompile otherwise, see the
    # module); single tiles keep their width
    assert [ssd_mod.transposed_tiles(n, 32) for n in (16, 40, 96)] == [(16, 0), (32, 16), (64, 32)]
    assert [ssd_mod.transposed_tiles(n, 64) for n in (7, 32, 40, 48, 64, 80, 96, 128, 160, 192)] == [
        (16, 0), (32, 0), (64, 0), (64, 0), (64, 0), (128, 0), (128, 0), (128, 0), (128, 64), (128, 64)]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
class TestTransposedOnGPU:
    @pytest.mark.parametrize("n", [7, 16, 32, 40, 96, 128])
    def test_transposed_configs(self, n):
        c = make_case(2, 257, 4, 64, 1, n, "h", True, True, device="cuda", dtype=torch.bfloat16, seed=n + 2)
        cfgs = [cfg for cfg in _ssd_configs(64, n, 256) if len(cfg) > 4 and cfg[4]] + [(32, 64, 4, 2, True)]
        for cfg in cfgs:
            for splits in (None, 3):
                check(c, 1e-2, cfg, splits=splits)
        c32 = make_case(1, 100, 2, 64, 2, n, "hp", True, True, device="cuda", seed=n + 3)
        check(c32, 1e-5, (32, 64, 4, 2, True))  # fp32, exact dots
