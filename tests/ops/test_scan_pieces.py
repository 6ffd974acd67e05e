"""The Mamba-1 tile scan with its states in several equal tiles (12 = 3 x 4, 14 = 7 x 2, 6 = 3 x 2, ...).

``state_pieces`` is checked as a pure function (against a brute-force search); the kernel against the fp32
reference ``selective_scan_ref``, whole and split-L, with y pre-filled with NaN so that every element is
proven written.  Without CUDA the kernel runs in the Triton interpreter on small CPU shapes (set up by
``kernel_harness``); with CUDA the interpreted tests skip and the GPU ones run the compiled kernel.
"""

import pytest
import torch
from kernel_harness import CUDA, interpreted, interpreter_env, poisoned_like, rel_err  # noqa: F401

from perfmamba.ops.scan_ref import selective_scan_ref
from perfmamba.ops.triton.selective_scan import (MAX_PIECES, PIECES_UP_TO, _scan_configs, next_pow2,
                                                 selective_scan_triton, state_pieces)


# ---------------------------------------------------------------------------------------- tile rule
@pytest.mark.parametrize("n,pieces", [
    (12, (3, 4)), (14, (7, 2)), (13, (7, 2)), (10, (5, 2)), (6, (3, 2)), (5, (3, 2)), (11, (3, 4)),
    # one tile: powers of two, where equal tiles pad no less (7 -> 8; 3 -> 4; 15 -> 16), and past 16 states
    (16, (1, 16)), (8, (1, 8)), (7, (1, 8)), (3, (1, 4)), (15, (1, 16)), (2, (1, 2)), (1, (1, 2)), (128, (1, 128)),
    (24, (1, 32)), (48, (1, 64)), (97, (1, 128)),
])
def test_state_pieces_examples(n, pieces):
    assert state_pieces(n) == pieces


def test_state_pieces_is_the_least_padding():
    for n in range(1, 513):
        pieces, width = state_pieces(n)
        one = max(2, next_pow2(n))
        if one > PIECES_UP_TO:
            assert (pieces, width) == (1, one), n
            continue
        assert width >= 2 and width & (width - 1) == 0 and 1 <= pieces <= MAX_PIECES, n
        assert (pieces - 1) * width < n <= pieces * width, n  # every tile holds a state
        options = [(-(-n // w) * w, w) for w in (1 << k for k in range(1, 11)) if -(-n // w) <= MAX_PIECES]
        fewest = min(total for total, _ in options + [(one, one)])
        assert pieces * width == fewest, n
        # of the tilings as small, the widest (fewest tiles); one tile wherever it is as small
        assert width == max(w for total, w in options + [(one, one)] if total == fewest), n


def test_candidates_fit_a_tile():
    # N_IN lanes share one tile's states: never more lanes than a tile has states
    for n in (12, 14, 10, 6):
        width = state_pieces(n)[1]
        assert all(cfg[2] <= width for cfg in _scan_configs(n, 2048, 1536)), n


# ------------------------------------------------------------------------------------------- kernel
def make_case(bsz, dim, seqlen, n, groups, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bc = (bsz, groups, n, seqlen) if groups > 1 else (bsz, n, seqlen)
    t = dict(u=r(bsz, dim, seqlen), delta=r(bsz, dim, seqlen) * 0.5, A=-torch.exp(r(dim, n) * 0.5), B=r(*bc),
             C=r(*bc), D=r(dim), z=r(bsz, dim, seqlen), delta_bias=r(dim) * 0.1)
    return {k: v.to(device) if k in ("A", "D", "delta_bias") else v.to(device=device, dtype=dtype)
            for k, v in t.items()}


def check(c, tol, **launch):
    args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
    kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True, return_last_state=True)
    f32 = {k: v.float() for k, v in c.items()}
    yr, hr = selective_scan_ref(f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"], **kw)
    y, h = selective_scan_triton(*args, **kw, out=poisoned_like(c["u"]), **launch)
    assert y.dtype == c["u"].dtype and h.dtype == torch.float32
    assert rel_err(y, yr) < tol and rel_err(h, hr) < tol, launch


@interpreted
class TestPiecesInterpreted:
    @pytest.mark.parametrize("n,groups,seqlen", [(12, 1, 9), (14, 2, 5), (6, 1, 17), (10, 1, 4)])
    def test_whole_sequence(self, n, groups, seqlen):
        check(make_case(2, 4, seqlen, n, groups, seed=n + seqlen), 1e-5)

    @pytest.mark.parametrize("n,splits", [(12, 3), (14, 2)])
    def test_split_sequence(self, n, splits):
        # the segments' states, entering and leaving, go through every tile
        check(make_case(2, 4, 20, n, 1, seed=n * splits), 1e-5, splits=splits)

    def test_tiled_scan(self):
        # BLOCK_L > 1 runs each tile's associative scan (the GPU's path; slow in the interpreter, so tiny)
        check(make_case(1, 2, 11, 12, 1, seed=5), 1e-5, config=(4, 2, 4, 1, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestPiecesOnGPU:
    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    @pytest.mark.parametrize("n,groups", [(12, 1), (14, 2), (10, 1), (6, 1)])
    def test_pieces(self, dtype, tol, n, groups):
        c = make_case(2, 128, 2049, n, groups, device="cuda", dtype=dtype, seed=n)
        check(c, tol)
        check(c, tol, splits=5)

    @pytest.mark.parametrize("n", [12, 14])
    def test_every_candidate(self, n):
        c = make_case(2, 64, 257, n, 1, device="cuda", dtype=torch.bfloat16, seed=n)
        for cfg in _scan_configs(n, 257, 64):
            for splits in (None, 3):
                check(c, 1e-2, config=cfg, splits=splits)
