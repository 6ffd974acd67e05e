"""Mamba-2's conv output in line-aligned rows (``perfmamba.ops.xbc_layout``, ``ops.mamba2_conv1d``): the
layout's offsets, the segmented conv kernel against the reference conv (every element of x, B, C written,
the unused columns left alone), and a Mamba-2 LM whose d_state leaves the packed row unaligned giving
the reference's logits, states and decode on the Triton path."""

import pytest
import torch
from kernel_harness import CUDA, interpreted, interpreter_env, ops, rel_err  # noqa: F401

from perfmamba import Mamba2Config, MambaLM
from perfmamba.errors import PerfMambaError
from perfmamba.ops.xbc_layout import PAD_ABOVE_BYTES, SEGMENT, packed_rows, xbc_rows


@pytest.mark.parametrize("d_inner,ngroups,d_state,element_size", [(1536, 1, 96, 2), (512, 2, 56, 2),
                                                                  (40, 3, 40, 2), (512, 1, 24, 4),
                                                                  (1536, 1, 128, 2), (512, 1, 64, 4)])
def test_b_and_c_rows_start_on_segments(d_inner, ngroups, d_state, element_size):
    rows = xbc_rows(d_inner, ngroups, d_state, element_size)
    starts = [rows.b_offset + g * rows.group_stride for g in range(ngroups)]
    starts += [rows.c_offset + g * rows.group_stride for g in range(ngroups)]
    assert all(s % SEGMENT == 0 for s in starts) and rows.row % SEGMENT == 0
    assert rows.b_offset >= d_inner and rows.group_stride >= d_state
    assert rows.c_offset >= rows.b_offset + ngroups * d_state and rows.row >= rows.c_offset + ngroups * d_state
    # the packed row whenever it is already aligned (every published Mamba-2 size: d_inner, N multiples of 64)
    aligned = d_inner % SEGMENT == 0 and d_state % SEGMENT == 0
    assert rows.packed == aligned and (rows == packed_rows(d_inner, ngroups, d_state)) == aligned


@pytest.mark.parametrize("d_state,element_size", [(32, 2), (16, 2), (8, 2), (16, 4), (5, 4)])
def test_rows_of_at_most_half_a_line_stay_packed(d_state, element_size):
    assert d_state * element_size <= PAD_ABOVE_BYTES
    assert xbc_rows(520, 2, d_state, element_size) == packed_rows(520, 2, d_state)


def test_split_gives_views_of_the_buffer():
    rows = xbc_rows(64, 2, 24, element_size=4)
    buf = torch.arange(2 * 3 * rows.row, dtype=torch.float32).reshape(2, 3, rows.row)
    x, B, C = rows.split(buf)
    assert x.shape == (2, 3, 64) and B.shape == C.shape == (2, 3, 2, 24)
    assert all(t.data_ptr() >= buf.data_ptr() and t.stride(-1) == 1 for t in (x, B, C))
    assert torch.equal(B[0, 0, 1], buf[0, 0, rows.b_offset + rows.group_stride:][:24])
    assert torch.equal(C[1, 2, 0], buf[1, 2, rows.c_offset:rows.c_offset + 24])


def _xbc_case(d_inner, ngroups, d_state, seqlen, bias=True, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    conv_dim = d_inner + 2 * ngroups * d_state
    wide = torch.randn(2, seqlen, conv_dim + 2 * d_inner + 5, generator=g, device=device).to(dtype)
    xbc = wide[..., d_inner:d_inner + conv_dim]  # a slice of in_proj's output, as the mixer passes it
    w = torch.randn(conv_dim, 4, generator=g, device=device)
    b = torch.randn(conv_dim, generator=g, device=device) if bias else None
    return xbc, w, b


def _check_against_reference(xbc, w, b, d_inner, ngroups, d_state, tol):
    want = ops.mamba2_conv1d(xbc.float().cpu(), w.cpu(), None if b is None else b.cpu(), d_inner, ngroups,
                             d_state, backend="ref")
    got = ops.mamba2_conv1d(xbc, w, b, d_inner, ngroups, d_state, backend="triton")
    for g, r in zip(got, want):
        assert g.shape == r.shape and rel_err(g.cpu(), r.to(g.dtype)) < tol
    return got


@interpreted
@pytest.mark.parametrize("d_inner,ngroups,d_state,seqlen", [(64, 1, 24, 33), (96, 2, 20, 1), (64, 2, 96, 17),
                                                            (40, 1, 17, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_segmented_conv_equals_the_reference(d_inner, ngroups, d_state, seqlen, bias):
    xbc, w, b = _xbc_case(d_inner, ngroups, d_state, seqlen, bias)
    x, B, C, _ = _check_against_reference(xbc, w, b, d_inner, ngroups, d_state, 1e-5)
    rows = xbc_rows(d_inner, ngroups, d_state, element_size=4)
    assert not rows.packed and B.stride()[2:] == C.stride()[2:] == (rows.group_stride, 1)
    if seqlen > 1:  # (a dimension of size 1 may have any stride)
        assert B.stride(1) == C.stride(1) == x.stride(1) == rows.row


@interpreted
def test_segmented_conv_writes_x_b_c_and_nothing_else():
    from perfmamba.ops.triton import causal_conv1d_rows_triton
    d_inner, ngroups, d_state = 40, 2, 20
    rows = xbc_rows(d_inner, ngroups, d_state, element_size=4)
    xbc, w, b = _xbc_case(d_inner, ngroups, d_state, 9)
    buf = torch.full((2, 9, rows.row), float("nan"))
    out, _ = causal_conv1d_rows_triton(xbc.transpose(1, 2), w, b, rows, out=buf)
    assert out is buf
    used = torch.zeros(rows.row, dtype=torch.bool)
    for t in rows.split(used[None, None]):
        t.fill_(True)
    assert not torch.isnan(buf[..., used]).any()  # every element of x, B, C written
    assert torch.isnan(buf[..., ~used]).all()  # and no other column touched
    yr = torch.nn.functional.silu(torch.nn.functional.conv1d(
        torch.nn.functional.pad(xbc.transpose(1, 2), (3, 0)), w.unsqueeze(1), b, groups=w.shape[0]))
    assert rel_err(buf[..., used].transpose(1, 2), yr) < 1e-5


def test_mamba2_conv1d_names_bad_shapes():
    xbc = torch.randn(1, 5, 64 + 2 * 16)
    with pytest.raises(PerfMambaError, match=r"mamba2_conv1d: expected xbc \(batch, L, 104\)"):
        ops.mamba2_conv1d(xbc, torch.randn(104, 4), None, 72, 1, 16, backend="ref")
    with pytest.raises(PerfMambaError, match=r"weight \(96, W\)"):
        ops.mamba2_conv1d(xbc, torch.randn(80, 4), None, 64, 1, 16, backend="ref")
    with pytest.raises(PerfMambaError, match=r"bias \(96,\)"):
        ops.mamba2_conv1d(xbc, torch.randn(96, 4), torch.randn(95), 64, 1, 16, backend="ref")


CONFIG = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=24, headdim=16, chunk_size=16)


@interpreted
def test_an_unaligned_mamba2_lm_equals_the_reference():
    assert not xbc_rows(CONFIG.d_inner, CONFIG.ngroups, 24, element_size=4).packed  # the test needs the segmented row
    torch.manual_seed(0)
    ref = MambaLM(CONFIG, backend="ref").eval()
    fast = MambaLM(CONFIG, backend="triton").eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (2, 21))
    with torch.inference_mode():
        cache_ref, cache_fast = ref.allocate_cache(2), fast.allocate_cache(2)
        assert rel_err(fast(ids, cache_fast), ref(ids, cache_ref)) < 1e-5
        for got, want in zip(cache_fast.conv_states + cache_fast.ssm_states,
                             cache_ref.conv_states + cache_ref.ssm_states):
            assert rel_err(got, want) < 1e-5
        nxt = torch.randint(0, 64, (2, 1))
        cache_ref.seqlen_offset = cache_fast.seqlen_offset = 21
        assert rel_err(fast(nxt, cache_fast), ref(nxt, cache_ref)) < 1e-5


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("d_inner,ngroups,d_state,seqlen", [(1536, 1, 96, 300), (512, 1, 56, 257),
                                                            (512, 2, 48, 64), (1536, 1, 16, 5), (1536, 1, 128, 70)])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-5)])
def test_segmented_conv_on_gpu(d_inner, ngroups, d_state, seqlen, dtype, tol):
    xbc, w, b = _xbc_case(d_inner, ngroups, d_state, seqlen, device="cuda", dtype=dtype)
    _check_against_reference(xbc, w, b, d_inner, ngroups, d_state, tol)
