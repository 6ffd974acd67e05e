"""ops.linear: the few-rows Triton projection of a decode step against F.linear.

Interpreted on the CPU in CI (fp32 within 1e-5); compiled on a GPU in bf16 within 1e-2, every candidate
configuration, and through the dispatch (which falls back to F.linear past 16 rows).
"""

import pytest
import torch
from kernel_harness import CUDA, interpreted, ops, poisoned_like, rel_err  # noqa: F401

from perfmamba.errors import PerfMambaError


def case(rows, k_in, n_out, bias, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k_in, generator=g)
    w = torch.randn(n_out, k_in, generator=g) / k_in ** 0.5
    b = torch.randn(n_out, generator=g) if bias else None
    return tuple(t.to(device=device, dtype=dtype) if t is not None else None for t in (x, w, b))


@interpreted
class TestFewRowsLinearInterpreted:
    @pytest.mark.parametrize("rows,k_in,n_out,bias", [(1, 48, 80, False), (3, 40, 17, True), (16, 64, 33, True),
                                                      (2, 16, 16, False)])
    def test_against_f_linear(self, rows, k_in, n_out, bias):
        from perfmamba.ops.triton import few_rows_linear_triton
        x, w, b = case(rows, k_in, n_out, bias, seed=rows + n_out)
        ref = torch.nn.functional.linear(x, w, b)
        y = few_rows_linear_triton(x, w, b, out=poisoned_like(ref))
        assert y.shape == ref.shape and rel_err(y, ref) < 1e-5

    def test_dispatch_and_strided_rows(self):
        # a row-strided view (a chunk of in_proj's output) goes to the kernel as it is
        x, w, b = case(4, 64, 24, True, seed=3)
        wide = torch.cat([x, torch.zeros_like(x)], dim=1)[:, :64]
        assert wide.stride(0) == 128
        assert rel_err(ops.linear(wide, w, b, backend="triton"), torch.nn.functional.linear(x, w, b)) < 1e-5


def test_ref_backend_is_f_linear_and_shapes_are_checked():
    x, w, b = case(20, 8, 5, True)  # 20 rows: past the kernel's limit, F.linear on any backend
    assert torch.equal(ops.linear(x, w, b, backend="ref"), torch.nn.functional.linear(x, w, b))
    with pytest.raises(PerfMambaError, match="linear: expected x"):
        ops.linear(x, w[:, :4], b, backend="ref")
    with pytest.raises(PerfMambaError, match="linear: expected"):
        ops.linear(x, w, b[:3], backend="ref")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
class TestFewRowsLinearOnGPU:
    @pytest.mark.parametrize("rows", [1, 5, 16])
    @pytest.mark.parametrize("k_in,n_out,bias", [(768, 3072, False), (1536, 80, False), (1536, 768, True)])
    def test_candidates_and_dispatch(self, rows, k_in, n_out, bias):
        from perfmamba.ops.triton.linear import _configs, few_rows_linear_triton
        x, w, b = case(rows, k_in, n_out, bias, dtype=torch.bfloat16, device="cuda", seed=rows)
        ref = torch.nn.functional.linear(x.float(), w.float(), b.float() if b is not None else None)
        for cfg in _configs(n_out):
            y = few_rows_linear_triton(x, w, b, out=poisoned_like(ref.to(x.dtype)), config=cfg)
            assert rel_err(y, ref) < 1e-2, cfg
        assert rel_err(ops.linear(x, w, b), ref) < 1e-2
