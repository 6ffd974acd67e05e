"""The decode step's linears (``ops.linear``, ``triton/gemv.py``) against ``torch.nn.functional.linear``: the
GEMV in the Triton interpreter on the CPU and compiled on a GPU, every tile it may choose, outputs
poisoned first; the operands it does not take go to F.linear unchanged."""

import pytest
import torch
from kernel_harness import CUDA, interpreted, interpreter_env, ops, poisoned_like, rel_err  # noqa: F401


def operands(rows, k, n, dtype, device, bias=True, row_pitch=None, seed=0):
    """x (rows, k), its rows ``row_pitch`` apart when given (a slice of wider rows); w (n, k); b (n,)."""
    g = torch.Generator().manual_seed(seed)
    to = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    x = to(torch.randn(rows, row_pitch or k, generator=g))[:, :k]  # sliced on the device: the pitch stays
    w = to(torch.randn(n, k, generator=g) * k ** -0.5)
    return x, w, to(torch.randn(n, generator=g)) if bias else None


def check_gemv(rows, k, n, dtype, device, tol, config, bias=True, row_pitch=None):
    from perfmamba.ops.triton import gemv
    x, w, b = operands(rows, k, n, dtype, device, bias, row_pitch, seed=rows * 7 + k + n)
    assert x.stride(0) == (row_pitch or k)
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    out = poisoned_like(torch.empty(rows, n, device=device, dtype=dtype))
    y = gemv.linear_triton(x, w, b, out=out, config=config)
    assert y.data_ptr() == out.data_ptr() and y.dtype == dtype
    assert rel_err(y, ref) < tol


@interpreted
class TestGemvInterpreted:
    @pytest.mark.parametrize("rows,k,n,bias,pitch", [(1, 70, 9, True, None), (2, 130, 33, False, None),
                                                    (2, 64, 1, True, 80), (1, 5, 17, False, None),
                                                    (3, 40, 12, True, None)])
    def test_against_linear(self, rows, k, n, bias, pitch, monkeypatch):
        # K past one 64-wide piece (70, 130) and inside one (5); N past the 4-row tiles (9, 33, 17) and 1;
        # x's rows 80 apart (a slice of a wider row); 3 rows padded to 4 in the kernel (which the dispatch
        # gives it only up to MAX_ROWS = 2 rows, hence the patch)
        from perfmamba.ops.triton import gemv
        monkeypatch.setattr(gemv, "MAX_ROWS", 4)
        check_gemv(rows, k, n, torch.float32, "cpu", 1e-5, (4, 64, 1, 1), bias=bias, row_pitch=pitch)

    def test_dispatch_takes_the_gemv(self):
        # ops.linear with the Triton backend at <= MAX_ROWS rows: the GEMV (the interpreter's first choice)
        from perfmamba.ops.triton import gemv
        x, w, b = operands(2, 40, 24, torch.float32, "cpu")
        assert gemv.gemv_configs(40)[0] != gemv.CUBLAS
        assert rel_err(ops.linear(x, w, b, backend="triton"), torch.nn.functional.linear(x, w, b)) < 1e-5


def test_reference_backend_is_linear_itself():
    x, w, b = operands(3, 32, 48, torch.float32, "cpu")
    assert torch.equal(ops.linear(x, w, b, backend="ref"), torch.nn.functional.linear(x, w, b))


@pytest.mark.parametrize("case", ["three rows", "column-major weight", "strided columns", "records grad",
                                  "mixed dtypes", "empty weight"])
def test_operands_the_gemv_does_not_take_are_left_to_linear(case):
    from perfmamba.ops.triton import gemv
    x, w, b = operands(3 if case == "three rows" else 2, 32, 24, torch.float32, "cpu")
    if case == "column-major weight":
        w = w.t().contiguous().t()
    elif case == "strided columns":
        x = torch.randn(2, 64)[:, ::2]
    elif case == "records grad":
        w.requires_grad_(True)
    elif case == "mixed dtypes":
        b = b.double()
    elif case == "empty weight":
        w, b = w[:0], b[:0]
    assert not gemv.gemv_applies(x, w, b)
    if case == "mixed dtypes":
        with pytest.raises(RuntimeError):  # F.linear's own error, unchanged
            gemv.linear_triton(x, w, b, config=(4, 64, 1, 1))
        return
    got = gemv.linear_triton(x, w, b, config=(4, 64, 1, 1))  # the forced tile is not used
    assert torch.equal(got.detach(), torch.nn.functional.linear(x, w, b).detach())
    if case == "records grad":
        assert got.requires_grad


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
class TestGemvOnGPU:
    # the decode shapes of mamba-130m / mamba2-130m (in_proj, out_proj) and odd ones
    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
    @pytest.mark.parametrize("rows,k,n", [(1, 768, 3352), (1, 1536, 768), (2, 1000, 777), (2, 256, 1160)])
    def test_every_tile_against_linear(self, dtype, tol, rows, k, n):
        from perfmamba.ops.triton import gemv
        for config in gemv.gemv_configs(k):
            check_gemv(rows, k, n, dtype, "cuda", tol, config, bias=k % 3 == 0)

    def test_the_tuned_choice_is_kept_and_repeats_its_numbers(self, monkeypatch):
        # with autotuning on, the first call times cuBLAS and the tiles; every later call makes the same
        # choice, so two calls (as eager decode and a graph replay make them) give the same bits
        from perfmamba.ops.triton import gemv, selective_scan
        monkeypatch.setenv("PERFMAMBA_AUTOTUNE", "1")
        x, w, b = operands(2, 1536, 768, torch.bfloat16, "cuda")
        key = ("gemv", 2, 1536, 768, torch.bfloat16, True)
        monkeypatch.delitem(selective_scan._TUNED, key, raising=False)
        first = gemv.linear_triton(x, w, b)
        assert selective_scan._TUNED[key] in gemv.gemv_configs(1536)
        assert torch.equal(gemv.linear_triton(x, w, b), first)
        assert rel_err(first, torch.nn.functional.linear(x.float(), w.float(), b.float())) < 1e-2
