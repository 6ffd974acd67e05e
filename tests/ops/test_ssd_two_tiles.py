"""The SSD kernel with the state split into two power-of-two tiles (N = 96 = 64 + 32, 40 = 32 + 16, ...).

``state_tiles`` is checked as a pure function (against a brute-force search over tile pairs); the kernel
against the fp32 chunked reference ``ssd_ref``, whole and split-L, with every output pre-filled with NaN.
Without CUDA the kernels run in the Triton interpreter on small CPU shapes (set up by ``kernel_harness``);
with CUDA the interpreted tests skip and the GPU ones run the compiled kernels.
"""

import pytest
import torch
from kernel_harness import CUDA, count_state_passing, interpreted, interpreter_env, ops, rel_err  # noqa: F401

from perfmamba.ops.scan_ref import ssd_ref
from perfmamba.ops.triton.selective_scan import next_pow2
from perfmamba.ops.triton.ssd import _ssd_configs, ssd_triton, state_tiles


# ---------------------------------------------------------------------------------------- tile rule
@pytest.mark.parametrize("n,tiles", [
    (96, (64, 32)), (48, (32, 16)), (80, (64, 16)), (40, (32, 16)), (33, (32, 16)), (72, (64, 16)),
    (160, (128, 32)), (192, (128, 64)),
    # one tile is as good: powers of two, ties (112: 64 + 64; 17, 24: 16 + 16; 200: 128 + 128), small N
    (128, (128, 0)), (64, (64, 0)), (32, (32, 0)), (16, (16, 0)), (112, (128, 0)), (17, (32, 0)),
    (24, (32, 0)), (200, (256, 0)), (1, (16, 0)), (13, (16, 0)),
])
def test_state_tiles_examples(n, tiles):
    assert state_tiles(n) == tiles


def test_state_tiles_is_the_least_padding():
    pows = [1 << k for k in range(4, 11)]  # tiles of 16 .. 1024 states
    for n in range(1, 1025):
        first, second = state_tiles(n)
        one = max(16, next_pow2(n))
        assert first in pows and (second == 0 or second in pows), n
        if second == 0:
            assert first == one, n
        else:
            assert first < n <= first + second and second <= first, n  # the first tile full, the second not empty
        # no tile pair pads less, and a second tile only when it strictly beats one tile
        best_pair = min(a + b for a in pows for b in pows if b <= a and a + b >= n)
        assert first + second == min(one, best_pair), n
        assert second == 0 or first + second < one, n


# ------------------------------------------------------------------------------------------- kernel
def make_case(bsz, seqlen, nheads, headdim, groups, n, d_shape, has_z, has_init, device="cpu",
              dtype=torch.float32, seed=0, init_n_major=False):
    """Fresh random SSD inputs; ``init_n_major`` hands the initial state as a (Bsz, H, N, P) buffer seen
    through a transpose (N stride != 1), so both tiles' state loads follow the strides."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    init = None
    if has_init:
        init = r(bsz, nheads, n, headdim).transpose(-1, -2) if init_n_major else r(bsz, nheads, headdim, n)
    t = dict(x=r(bsz, seqlen, nheads, headdim), dt=r(bsz, seqlen, nheads) * 0.5 - 1.0,
             A=-torch.exp(r(nheads) * 0.5), B=r(bsz, seqlen, groups, n), C=r(bsz, seqlen, groups, n),
             D={"h": r(nheads), "hp": r(nheads, headdim), None: None}[d_shape],
             z=r(bsz, seqlen, nheads, headdim) if has_z else None, dt_bias=r(nheads) * 0.1, initial_states=init)
    return {k: (None if v is None else v.to(device) if k in ("A", "D", "dt_bias", "initial_states")
                else v.to(device=device, dtype=dtype)) for k, v in t.items()}


def check(c, chunk, tol, splits=None, config=None, via_ops=False):
    args = (c["x"], c["dt"], c["A"], c["B"], c["C"])
    kw = dict(D=c["D"], z=c["z"], dt_bias=c["dt_bias"], dt_softplus=True, initial_states=c["initial_states"],
              return_final_states=True)
    if via_ops:  # the dispatch path (no out=: y is allocated by the launcher)
        y, h = ops.ssd(*args, chunk, **kw, backend="triton")
    else:
        y, h = ssd_triton(*args, chunk, **kw, out=torch.full_like(c["x"], float("nan")), splits=splits,
                          config=config)
    f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
    yr, hr = ssd_ref(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], chunk, **kw)
    assert y.dtype == c["x"].dtype and h.dtype == torch.float32 and h.shape == hr.shape
    assert rel_err(y, yr) < tol, "y"
    assert rel_err(h, hr) < tol, "final state"


# Every two-tile split x one and two groups x odd lengths, each with one of four option sets in turn (so
# each set meets every N and both group counts); batch 3 only on the shorter lengths (the interpreter is
# slow).  17 is the single-tile neighbour (16 + 16 ties with 32).
_OPTION_SETS = [("h", True, True), (None, False, False), ("hp", False, True), (None, True, False)]
_WHOLE_CASES = [
    (n, groups, seqlen, 3 if seqlen < 257 else 1, *_OPTION_SETS[i % 4])
    for i, (n, groups, seqlen) in enumerate(
        (n, groups, seqlen) for n in (96, 48, 80, 40) for groups in (1, 2) for seqlen in (1, 63, 257))
] + [(17, 2, 63, 3, "h", True, True), (17, 1, 257, 1, None, False, False)]


@interpreted
class TestTwoTilesInterpreted:
    @pytest.mark.parametrize("n,groups,seqlen,bsz,d_shape,has_z,has_init", _WHOLE_CASES)
    def test_whole_sequence(self, n, groups, seqlen, bsz, d_shape, has_z, has_init):
        c = make_case(bsz, seqlen, 2, 16, groups, n, d_shape, has_z, has_init, seed=n * 1000 + seqlen + bsz)
        check(c, 64, 1e-5)

    @pytest.mark.parametrize("n,groups,seqlen,bsz,splits,has_init", [
        (96, 1, 257, 1, 3, True),   # 3 segments of 96 steps, the last one 65
        (48, 2, 63, 3, 2, False),
        (80, 2, 100, 1, 4, True),
        (40, 1, 130, 2, 5, True),   # 5 segments of 32 steps: the last one 2 steps
    ])
    def test_split_sequence(self, monkeypatch, n, groups, seqlen, bsz, splits, has_init):
        # an explicit splits= runs the three split-L passes even under the interpreter (pick_splits, which
        # says 1 there, is not asked): the state-passing pass must run, with each segment's two tiles
        passes = count_state_passing(monkeypatch)
        c = make_case(bsz, seqlen, 2, 16, groups, n, "hp", True, has_init, seed=splits * 100 + n)
        check(c, 64, 1e-5, splits=splits)
        assert len(passes) == 1 and passes[0][1] > 1 and passes[0][-1] == n

    def test_strided_initial_state_and_dispatch(self):
        # the state's N axis not contiguous (both tiles' loads use its stride); through perfmamba.ops
        c = make_case(2, 33, 2, 24, 1, 96, "h", True, True, seed=5, init_n_major=True)
        assert c["initial_states"].stride(-1) != 1
        check(c, 32, 1e-5, via_ops=True)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
class TestTwoTilesOnGPU:
    """Compiled two-tile kernels, bf16 within 1e-2 of the fp32 reference (fp32 within 1e-5)."""

    @pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-5)])
    @pytest.mark.parametrize("n,groups", [(96, 1), (48, 2)])
    def test_two_tiles(self, dtype, tol, n, groups):
        c = make_case(2, 1031, 8, 64, groups, n, "h", True, True, device="cuda", dtype=dtype, seed=n)
        check(c, 256, tol)
        check(c, 256, tol, splits=5)  # split-L

    @pytest.mark.parametrize("n", [96, 48, 32])
    def test_every_candidate(self, n):
        # the autotuner may pick any candidate: each one, whole and split-L, bf16
        c = make_case(2, 257, 4, 64, 1, n, "h", True, True, device="cuda", dtype=torch.bfloat16, seed=n + 1)
        for cfg in _ssd_configs(64, n, 256):
            for splits in (None, 3):
                check(c, 256, 1e-2, splits=splits, config=cfg)
