"""The Triton kernels against their plain-torch reference twins.

Without CUDA (CI) the kernels run through the Triton interpreter on small CPU shapes (set up by
``kernel_harness``); with CUDA the interpreted classes skip and the GPU class runs the compiled kernels
on bigger shapes.  Every call goes through ``perfmamba.ops`` with backend="triton", except where a
NaN-filled ``out=`` buffer is handed to a launcher directly to prove that every output element is written.
"""

import pytest
import torch
from kernel_harness import (CUDA, interpreted, interpreter_env, ops, poisoned_like, record_launches,  # noqa: F401
                            rel_err)

from perfmamba.ops.conv_ref import causal_conv1d_ref, causal_conv1d_update_ref
from perfmamba.ops.norm_ref import rms_norm_ref
from perfmamba.ops.scan_ref import selective_scan_ref, selective_state_update_ref, ssd_loop_ref

INF = float("inf")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def scan_case(bsz, dim, seqlen, n, groups, has_d, has_z, has_bias, device="cpu", dtype=torch.float32, seed=0,
              channels_last=False):
    """Scan inputs; ``channels_last`` lays u, delta, z out as (Bsz, L, D) and B, C as (Bsz, L, [G,] N)
    (seen through transposes as the usual shapes), as Mamba-1's GEMMs produce them: the step kernel's path."""
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if channels_last:
        act = lambda: r(bsz, seqlen, dim).transpose(1, 2)  # noqa: E731
        bc = lambda: r(bsz, seqlen, groups, n).permute(0, 2, 3, 1)[:, 0 if groups == 1 else slice(None)]  # noqa: E731
    else:
        act = lambda: r(bsz, dim, seqlen)  # noqa: E731
        bc = lambda: r(*((bsz, groups, n, seqlen) if groups > 1 else (bsz, n, seqlen)))  # noqa: E731
    t = dict(u=act(), delta=act() * 0.5, A=-torch.exp(r(dim, n) * 0.5),
             B=bc(), C=bc(), D=r(dim) if has_d else None, z=act() if has_z else None,
             delta_bias=r(dim) * 0.1 if has_bias else None)
    out = {}
    for k, v in t.items():
        if v is None:
            out[k] = None
        elif k in ("A", "D", "delta_bias"):
            out[k] = v.to(device)  # parameters stay fp32
        else:
            out[k] = v.to(device=device, dtype=dtype)  # keeps the strides
    return out


def ssd_case(bsz, seqlen, nheads, headdim, groups, n, d_shape, has_z, has_init, device="cpu",
             dtype=torch.float32, seed=0):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    D = {"h": r(nheads), "hp": r(nheads, headdim), None: None}[d_shape]
    t = dict(x=r(bsz, seqlen, nheads, headdim), dt=r(bsz, seqlen, nheads) * 0.5 - 1.0,
             A=-torch.exp(r(nheads) * 0.5), B=r(bsz, seqlen, groups, n), C=r(bsz, seqlen, groups, n),
             D=D, z=r(bsz, seqlen, nheads, headdim) if has_z else None, dt_bias=r(nheads) * 0.1,
             initial_states=r(bsz, nheads, headdim, n) if has_init else None)
    out = {}
    for k, v in t.items():
        if v is None:
            out[k] = None
        elif k in ("A", "D", "dt_bias", "initial_states"):
            out[k] = v.to(device)
        else:
            out[k] = v.to(device=device, dtype=dtype)
    return out


def with_bc_in_one_buffer(c, extra, with_x=False):
    """The SSD case ``c`` with B and C (and x first, ``with_x``) moved into one (Bsz, L, [H P +] 2 G N + extra)
    buffer, as views: the layout of a Mamba-2 layer's conv output."""
    bsz, seqlen, groups, n = c["B"].shape
    gn = groups * n
    hp = c["x"].shape[2] * c["x"].shape[3] if with_x else 0
    buf = torch.randn(bsz, seqlen, hp + 2 * gn + extra, generator=_gen(5)).to(c["B"])
    if with_x:
        buf[..., :hp] = c["x"].reshape(bsz, seqlen, hp)
    buf[..., hp:hp + gn] = c["B"].reshape(bsz, seqlen, gn)
    buf[..., hp + gn:hp + 2 * gn] = c["C"].reshape(bsz, seqlen, gn)
    out = dict(c, B=buf[..., hp:hp + gn].view(bsz, seqlen, groups, n),
               C=buf[..., hp + gn:hp + 2 * gn].view(bsz, seqlen, groups, n))
    if with_x:
        out["x"] = buf[..., :hp].view(c["x"].shape)
    return out


def check_scan(c, tol, out=None, splits=None):
    args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
    kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True, return_last_state=True)
    if out is None and splits is None:
        y, h = ops.selective_scan(*args, **kw, backend="triton")
    else:
        from perfmamba.ops.triton import selective_scan_triton
        y, h = selective_scan_triton(*args, **kw, out=out, splits=splits)
    f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
    yr, hr = selective_scan_ref(f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"], **kw)
    assert y.dtype == c["u"].dtype and h.dtype == torch.float32
    assert rel_err(y, yr) < tol
    assert rel_err(h, hr) < tol


def check_ssd(c, chunk, tol, out=None, dt_limit=(0.0, INF), splits=None):
    args = (c["x"], c["dt"], c["A"], c["B"], c["C"])
    kw = dict(D=c["D"], z=c["z"], dt_bias=c["dt_bias"], dt_softplus=True, initial_states=c["initial_states"],
              return_final_states=True, dt_limit=dt_limit)
    if out is None and splits is None:
        y, h = ops.ssd(*args, chunk, **kw, backend="triton")
    else:
        from perfmamba.ops.triton import ssd_triton
        y, h = ssd_triton(*args, chunk, **kw, out=out, splits=splits)
    f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
    yr, hr = ssd_loop_ref(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], **kw)
    assert y.dtype == c["x"].dtype and h.dtype == torch.float32
    assert rel_err(y, yr) < tol
    assert rel_err(h, hr) < tol


# ------------------------------------------------------------------------------------------ interpreter
@interpreted
class TestSelectiveScanInterpreted:
    @pytest.mark.parametrize("n", [1, 7, 13, 16])
    @pytest.mark.parametrize("seqlen", [1, 7, 63, 65])
    def test_state_sizes_and_lengths(self, n, seqlen):
        # odd L and N with everything optional present; batch 1, one group (the interpreter is slow)
        check_scan(scan_case(1, 4, seqlen, n, 1, True, True, True, seed=n * 100 + seqlen), 1e-5)

    @pytest.mark.parametrize("has_d,has_z,has_bias", [(False, False, False), (True, False, True), (False, True, False)])
    def test_batch_groups_and_options(self, has_d, has_z, has_bias):
        check_scan(scan_case(3, 4, 9, 7, 2, has_d, has_z, has_bias, seed=7), 1e-5)

    def test_every_output_written(self):
        c = scan_case(2, 6, 11, 13, 1, True, True, True, seed=3)
        check_scan(c, 1e-5, out=torch.full_like(c["u"], float("nan")))

    def test_tiled_scan_path(self):
        # BLOCK_L > 1 runs the in-tile associative scan (the GPU path; slow in the interpreter, so tiny)
        from perfmamba.ops.triton import selective_scan_triton
        c = scan_case(1, 2, 11, 5, 1, True, True, True, seed=5)
        kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True, return_last_state=True)
        args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
        y, h = selective_scan_triton(*args, **kw, config=(4, 2, 2, 1, 1), out=torch.full_like(c["u"], float("nan")))
        yr, hr = selective_scan_ref(*args, **kw)
        assert rel_err(y, yr) < 1e-5 and rel_err(h, hr) < 1e-5

    @pytest.mark.parametrize("splits,seqlen", [(3, 20), (4, 9), (2, 2)])
    def test_split_sequence(self, splits, seqlen):
        # split-L: segments scanned from zero, states passed along, segments rescanned (odd last segment)
        c = scan_case(2, 6, seqlen, 7, 2, True, True, True, seed=splits + seqlen)
        check_scan(c, 1e-5, out=torch.full_like(c["u"], float("nan")), splits=splits)

    @pytest.mark.parametrize("n,seqlen,groups", [(1, 9, 1), (7, 1, 1), (16, 65, 2), (13, 10, 1), (64, 6, 1)])
    def test_channels_last_step_kernel(self, n, seqlen, groups):
        # channel-contiguous u / delta / z take the step kernel (scan_steps.py); y keeps that layout
        c = scan_case(2, 8, seqlen, n, groups, True, True, True, seed=n + seqlen, channels_last=True)
        check_scan(c, 1e-5)
        check_scan(c, 1e-5, out=poisoned_like(c["u"]))
        y = ops.selective_scan(c["u"], c["delta"], c["A"], c["B"], c["C"], backend="triton")
        assert y.stride(1) == 1

    @pytest.mark.parametrize("splits,seqlen", [(3, 20), (2, 9)])
    def test_channels_last_split(self, splits, seqlen):
        c = scan_case(2, 8, seqlen, 16, 1, True, True, True, seed=splits, channels_last=True)
        check_scan(c, 1e-5, out=poisoned_like(c["u"]), splits=splits)

    @pytest.mark.parametrize("seqlen,unit,padded,has_z,splits", [(40, 8, False, True, None), (36, 4, False, False, 3),
                                                                 (35, 1, True, True, None), (34, 1, True, False, 3)])
    def test_lengths_not_multiples_of_16(self, seqlen, unit, padded, has_z, splits, monkeypatch):
        # u and z as the Mamba-1 mixer hands them over (views of in_proj's (2D, Bsz, L) output: rows L
        # apart, batches L apart) and y poisoned: fp32 rows whose starts are multiples of 4 elements (one
        # 16-byte vector) reach the kernel with strides and L in units of 8 or 4; below that the scan runs
        # on copies padded with zeros to a multiple of 16 steps, the state left alone past the true end
        # (from PAD_FROM_ELEMENTS on: lowered here to reach these small inputs)
        from perfmamba.ops.triton import selective_scan as scan_mod
        monkeypatch.setattr(scan_mod, "PAD_FROM_ELEMENTS", 100)
        c = scan_case(2, 4, seqlen, 5, 1, True, has_z, True, seed=seqlen)
        xz = torch.randn(8, 2, seqlen).permute(1, 0, 2)  # (Bsz, 2D, L), strides (L, Bsz L, 1)
        xz[:, :4], xz[:, 4:] = c["u"], c["z"] if has_z else 0.0
        c = dict(c, u=xz[:, :4], z=xz[:, 4:] if has_z else None)
        launched = record_launches(monkeypatch, scan_mod, "_selective_scan_kernel", "UNIT", "PADDED")
        out = torch.full((2, 4, seqlen), float("nan"))
        check_scan(c, 1e-5, out=out, splits=splits)
        assert launched and set(launched) == {(unit, padded)}
        assert not torch.isnan(out).any()
        if padded:  # a smaller input is scanned as it is
            launched.clear()
            monkeypatch.setattr(scan_mod, "PAD_FROM_ELEMENTS", c["u"].numel() + 1)
            check_scan(c, 1e-5, out=out, splits=splits)
            assert set(launched) == {(1, False)}
        else:  # realign=False passes the strides as they are (bench_kernels.py's comparison)
            launched.clear()
            args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
            kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True)
            y = scan_mod.selective_scan_triton(*args, **kw, splits=splits, realign=False)
            assert set(launched) == {(1, False)} and rel_err(y, selective_scan_ref(*args, **kw)) < 1e-5

    def test_padding_chosen_for_a_graph_replay(self, monkeypatch):
        # an unaligned input between the two thresholds: loaded as it is when launched eagerly, scanned on
        # padded copies inside for_replay() (a CUDA graph's warm-up and capture); both right
        from perfmamba.ops.replay import for_replay
        from perfmamba.ops.triton import selective_scan as scan_mod
        monkeypatch.setattr(scan_mod, "PAD_FROM_ELEMENTS", 10**9)
        monkeypatch.setattr(scan_mod, "PAD_FROM_ELEMENTS_REPLAYED", 100)
        c = scan_case(2, 4, 35, 5, 1, True, True, True, seed=35)
        launched = record_launches(monkeypatch, scan_mod, "_selective_scan_kernel", "PADDED")
        check_scan(c, 1e-5)
        assert set(launched) == {(False,)} and scan_mod.pad_threshold() == 10**9
        launched.clear()
        with for_replay():
            check_scan(c, 1e-5)
            assert scan_mod.pad_threshold() == 100
        assert set(launched) == {(True,)} and scan_mod.pad_threshold() == 10**9

    def test_no_last_state(self):
        c = scan_case(1, 4, 5, 3, 1, False, False, False, seed=11)
        y = ops.selective_scan(c["u"], c["delta"], c["A"], c["B"], c["C"], backend="triton")
        yr = selective_scan_ref(c["u"], c["delta"], c["A"], c["B"], c["C"])
        assert rel_err(y, yr) < 1e-5


@interpreted
class TestSSDInterpreted:
    @pytest.mark.parametrize("n", [1, 7, 13, 16])
    @pytest.mark.parametrize("seqlen", [1, 7, 63, 65])
    def test_state_sizes_and_lengths(self, n, seqlen):
        c = ssd_case(1, seqlen, 2, 16, 1, n, "h", True, True, seed=n * 100 + seqlen)
        check_ssd(c, 16, 1e-5)

    @pytest.mark.parametrize("d_shape,has_z,has_init", [(None, False, False), ("hp", False, True), ("h", True, False)])
    def test_batch_groups_and_options(self, d_shape, has_z, has_init):
        check_ssd(ssd_case(3, 40, 4, 16, 2, 13, d_shape, has_z, has_init, seed=9), 32, 1e-5)

    def test_headdim_not_power_of_two_and_dt_limit(self):
        c = ssd_case(2, 37, 2, 24, 2, 16, "h", True, True, seed=13)
        check_ssd(c, 16, 1e-5, out=torch.full_like(c["x"], float("nan")), dt_limit=(0.05, 0.8))

    @pytest.mark.parametrize("splits,seqlen,has_init", [(3, 70, True), (2, 33, False), (5, 64, True)])
    def test_split_sequence(self, splits, seqlen, has_init):
        # split-L with segments of whole 32-step blocks; the initial state enters the first segment only
        c = ssd_case(2, seqlen, 2, 16, 1, 13, "hp", True, has_init, seed=splits + seqlen)
        check_ssd(c, 64, 1e-5, out=torch.full_like(c["x"], float("nan")), splits=splits)

    def test_every_output_written(self):
        c = ssd_case(1, 70, 2, 32, 1, 7, "h", False, True, seed=17)
        check_ssd(c, 64, 1e-5, out=torch.full_like(c["x"], float("nan")))

    @pytest.mark.parametrize("n,groups,extra,unit", [(24, 2, 0, 8), (12, 1, 16, 8), (12, 2, 0, 4), (6, 2, 4, 2),
                                                     (8, 1, 32, 1)])
    def test_b_c_strides_in_units(self, n, groups, extra, unit):
        # B and C as views into one (Bsz, L, 2 G N + extra) buffer, as a Mamba-2 layer's conv output holds
        # them: strides that are multiples of 8, 4, 2 (or of 16) reach the kernel divided by that unit
        from perfmamba.ops.triton.alignment import stride_unit
        c = with_bc_in_one_buffer(ssd_case(2, 37, 2, 16, groups, n, "h", True, True, seed=n + extra), extra)
        assert stride_unit(c["B"], c["C"])[0] == unit
        check_ssd(c, 16, 1e-5)


    @pytest.mark.parametrize("n,extra,x_unit", [(12, 0, 8), (6, 4, 1), (5, 0, 2)])
    def test_x_in_a_conv_output_row(self, n, extra, x_unit, monkeypatch):
        # x, B and C as views into one (Bsz, L, H P + 2 N + extra) row, as a Mamba-2 layer's conv output
        # holds them: rows 56 apart reach the kernel in units of 8, 42 in units of 2, 48 as they are
        from perfmamba.ops.triton import ssd as ssd_mod
        c = with_bc_in_one_buffer(ssd_case(2, 37, 2, 16, 1, n, "h", False, True, seed=n + extra), extra,
                                  with_x=True)
        units = record_launches(monkeypatch, ssd_mod, "_ssd_fused_kernel", "X_UNIT")
        check_ssd(c, 16, 1e-5)
        assert units and set(units) == {(x_unit,)}


@interpreted
class TestConvInterpreted:
    @pytest.mark.parametrize("seqlen", [1, 2, 7, 65])
    @pytest.mark.parametrize("has_bias,activation,has_init", [(True, "silu", True), (False, None, False)])
    def test_conv(self, seqlen, has_bias, activation, has_init):
        g = _gen(seqlen)
        x = torch.randn(3, 5, seqlen, generator=g)
        w = torch.randn(5, 4, generator=g)
        b = torch.randn(5, generator=g) if has_bias else None
        init = torch.randn(3, 5, 4, generator=g) if has_init else None
        y, st = ops.causal_conv1d(x, w, b, activation, True, init, backend="triton")
        yr, sr = causal_conv1d_ref(x, w, b, activation, True, init)
        assert rel_err(y, yr) < 1e-5 and rel_err(st, sr) < 1e-5

    def test_conv_channels_last_input_keeps_its_layout(self):
        # Mamba-2 hands the conv a transposed slice of in_proj's output (channel stride 1)
        wide = torch.randn(2, 33, 20)
        x = wide[..., 2:14].transpose(1, 2)  # (2, 12, 33)
        w = torch.randn(12, 4)
        y, st = ops.causal_conv1d(x, w, None, "silu", True, backend="triton")
        yr, sr = causal_conv1d_ref(x, w, None, "silu", True)
        assert y.stride(1) == 1 and rel_err(y, yr) < 1e-5 and rel_err(st, sr) < 1e-5

    def test_conv_takes_channels_last_strides_in_units(self, monkeypatch):
        # in_proj's rows in Mamba-2 are multiples of 8 but not 16 elements apart (3288 for mamba2-130m at
        # N = 96): the kernel gets them in units so that they load as vectors; the values must not change
        from perfmamba.ops.triton import conv1d
        launches = record_launches(monkeypatch, conv1d, "_causal_conv1d_kernel", "X_UNIT")
        wide = torch.randn(2, 17, 40)
        x = wide[..., 8:32].transpose(1, 2)  # rows 40 apart: unit 8
        w = torch.randn(24, 4)
        y, st = ops.causal_conv1d(x, w, None, "silu", True, backend="triton")
        yr, sr = causal_conv1d_ref(x, w, None, "silu", True)
        assert launches == [(8,)] and rel_err(y, yr) < 1e-5 and rel_err(st, sr) < 1e-5
        ops.causal_conv1d(x.contiguous(), w, None, "silu", True, backend="triton")  # channels-first: as they are
        assert launches[-1] == (1,)

    def test_conv_every_output_written(self):
        from perfmamba.ops.triton import causal_conv1d_triton
        x = torch.randn(2, 6, 33)
        w = torch.randn(6, 3)
        y = causal_conv1d_triton(x, w, None, "silu", out=torch.full_like(x, float("nan")))
        assert rel_err(y, causal_conv1d_ref(x, w, None, "silu")) < 1e-5

    @pytest.mark.parametrize("has_bias,activation", [(True, "silu"), (False, None)])
    def test_update(self, has_bias, activation):
        x = torch.randn(3, 6)
        state = torch.randn(3, 6, 4)
        state_ref = state.clone()
        w = torch.randn(6, 4)
        b = torch.randn(6) if has_bias else None
        y = ops.causal_conv1d_update(x, state, w, b, activation, backend="triton")
        yr = causal_conv1d_update_ref(x, state_ref, w, b, activation)
        assert rel_err(y, yr) < 1e-5
        assert torch.equal(state, state_ref)


def check_norm(x, w, z=None, group_size=None, tol=1e-5):
    y = ops.rms_norm(x, w, 1e-5, z=z, group_size=group_size, backend="triton")
    yr = rms_norm_ref(x, w, 1e-5, z=z, group_size=group_size)
    assert y.dtype == w.dtype and y.shape == x.shape
    assert rel_err(y, yr) < tol


def check_add_norm(res_dtype, residual_dtype, device):
    from perfmamba.ops.norm_ref import add_rms_norm_ref
    g = _gen(5)
    x = (torch.randn(3, 4, 24, generator=g) * 2).to(device=device, dtype=torch.bfloat16)
    res = torch.randn(3, 4, 24, generator=g).to(device=device, dtype=res_dtype) if res_dtype else None
    w = torch.randn(24, generator=g).to(device=device, dtype=torch.bfloat16)
    y, r = ops.add_rms_norm(x, res, w, 1e-5, residual_dtype=residual_dtype, backend="triton")
    yr, rr = add_rms_norm_ref(x, res, w, 1e-5, residual_dtype=residual_dtype)
    assert r.dtype == rr.dtype
    if r.dtype == torch.float32:
        assert torch.equal(r, rr)  # a bf16 + fp32 sum is exact in fp32
    else:
        assert rel_err(r, rr) < 1e-2  # one rounding to bf16 (the interpreter's cast may truncate)
    assert y.dtype == w.dtype and rel_err(y, yr) < 1e-2
    # same as the unfused ops: the add (torch promotion), then the norm
    r2 = (x if res is None else res + x).to(residual_dtype or (x if res is None else res + x).dtype)
    assert torch.equal(rr, r2) and torch.equal(yr, rms_norm_ref(r2, w, 1e-5))


@interpreted
class TestRMSNormInterpreted:
    @pytest.mark.parametrize("dim,group_size", [(8, None), (24, None), (24, 12), (20, 5)])
    @pytest.mark.parametrize("gated", [False, True])
    def test_norm(self, dim, group_size, gated):
        g = _gen(dim + (group_size or 0))
        x = torch.randn(3, 5, dim, generator=g) * 3
        z = torch.randn(3, 5, dim, generator=g) if gated else None
        check_norm(x, torch.randn(dim, generator=g), z, group_size)

    @pytest.mark.parametrize("res_dtype,residual_dtype", [(None, torch.float32), (torch.float32, torch.float32),
                                                          (torch.bfloat16, None), (None, None)])
    def test_add_norm(self, res_dtype, residual_dtype):
        # the residual add fused into the norm: bf16 mixer output, fp32 / bf16 / no incoming residual
        check_add_norm(res_dtype, residual_dtype, "cpu")

    def test_strided_rows(self):
        # z as a slice of a wider projection output (rows strided, channels contiguous)
        g = _gen(1)
        wide = torch.randn(2, 7, 40, generator=g)
        x, z = wide[..., :16], wide[..., 16:32]
        check_norm(x, torch.randn(16, generator=g), z, 8)


def check_dt_proj_update(n, groups, device, dtype, tol):
    g = _gen(n)
    bsz, dim, rank = 3, 24, 5
    state = torch.randn(bsz, dim, n, generator=g).to(device)
    state_ref = state.clone()
    x, z = (torch.randn(bsz, dim, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    dt_low = torch.randn(bsz, rank, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(dim, rank, generator=g) * 0.5).to(device=device, dtype=dtype)
    A = -torch.rand(dim, n, generator=g).to(device)
    bc = (bsz, groups, n) if groups else (bsz, n)
    B, C = (torch.randn(*bc, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    D, bias = torch.randn(dim, generator=g).to(device), torch.randn(dim, generator=g).to(device)
    y = ops.selective_state_update(state, x, dt_low, A, B, C, D, z, bias, True, dt_proj_weight=w,
                                   backend="triton")
    dt = torch.nn.functional.linear(dt_low, w)
    yr = selective_state_update_ref(state_ref, x, dt, A, B, C, D, z, bias, True)
    assert rel_err(y, yr) < tol and rel_err(state, state_ref) < tol


@interpreted
class TestStateUpdateInterpreted:
    @pytest.mark.parametrize("n", [1, 7, 13, 16])
    @pytest.mark.parametrize("groups", [0, 2])  # 0: B, C as (Bsz, N)
    def test_mamba1(self, n, groups):
        g = _gen(n + groups)
        bsz, dim = 3, 8
        state = torch.randn(bsz, dim, n, generator=g)
        state_ref = state.clone()
        x, dt, z = (torch.randn(bsz, dim, generator=g) for _ in range(3))
        A = -torch.rand(dim, n, generator=g)
        bc = (bsz, groups, n) if groups else (bsz, n)
        B, C = torch.randn(*bc, generator=g), torch.randn(*bc, generator=g)
        D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
        y = ops.selective_state_update(state, x, dt, A, B, C, D, z, bias, True, backend="triton")
        yr = selective_state_update_ref(state_ref, x, dt, A, B, C, D, z, bias, True)
        assert rel_err(y, yr) < 1e-5 and rel_err(state, state_ref) < 1e-5

    @pytest.mark.parametrize("n,groups", [(16, 0), (7, 2)])
    def test_mamba1_dt_proj_fused(self, n, groups):
        # dt given as the low-rank dt_proj input: projected inside the kernel, rounded like F.linear
        check_dt_proj_update(n, groups, "cpu", torch.float32, 1e-5)

    @pytest.mark.parametrize("n", [1, 7, 13, 16])
    @pytest.mark.parametrize("d_shape,has_z,groups,dt_limit", [("h", True, 2, (0.0, INF)), ("hp", False, 1, (0.1, 0.6)),
                                                              (None, False, 4, (0.0, INF))])
    def test_mamba2(self, n, d_shape, has_z, groups, dt_limit):
        g = _gen(n)
        bsz, nheads, headdim = 3, 4, 6
        state = torch.randn(bsz, nheads, headdim, n, generator=g)
        state_ref = state.clone()
        x = torch.randn(bsz, nheads, headdim, generator=g)
        z = torch.randn(bsz, nheads, headdim, generator=g) if has_z else None
        dt = torch.randn(bsz, nheads, generator=g)
        A = -torch.rand(nheads, generator=g)
        B, C = torch.randn(bsz, groups, n, generator=g), torch.randn(bsz, groups, n, generator=g)
        D = {"h": torch.randn(nheads, generator=g), "hp": torch.randn(nheads, headdim, generator=g), None: None}[d_shape]
        bias = torch.randn(nheads, generator=g)
        y = ops.selective_state_update(state, x, dt, A, B, C, D, z, bias, True, dt_limit, backend="triton")
        yr = selective_state_update_ref(state_ref, x, dt, A, B, C, D, z, bias, True, dt_limit)
        assert rel_err(y, yr) < 1e-5 and rel_err(state, state_ref) < 1e-5

    @pytest.mark.parametrize("family", ["mamba1", "mamba2"])
    @pytest.mark.parametrize("config", [(1, 1), (2, 2), (4, 1), (8, 4)])
    def test_tile_override(self, family, config):
        # config = (BLOCK_P, num_warps) replaces block_config's choice (for tuning): every tile covers the
        # channels, including a last block that is partly masked (6 or 10 channels per head)
        from perfmamba.ops.triton.state_update import selective_state_update_triton
        g = _gen(sum(config))
        bsz, n = 2, 13
        if family == "mamba1":
            shape, per_step = (bsz, 10, n), (bsz, 10)
            A = -torch.rand(10, n, generator=g)
            dt = torch.randn(*per_step, generator=g)
            D, bias = torch.randn(10, generator=g), torch.randn(10, generator=g)
            B, C = torch.randn(bsz, n, generator=g), torch.randn(bsz, n, generator=g)
        else:
            shape, per_step = (bsz, 3, 6, n), (bsz, 3, 6)
            A = -torch.rand(3, generator=g)
            dt = torch.randn(bsz, 3, generator=g)
            D, bias = torch.randn(3, generator=g), torch.randn(3, generator=g)
            B, C = torch.randn(bsz, 1, n, generator=g), torch.randn(bsz, 1, n, generator=g)
        state = torch.randn(*shape, generator=g)
        state_ref = state.clone()
        x, z = torch.randn(*per_step, generator=g), torch.randn(*per_step, generator=g)
        y = selective_state_update_triton(state, x, dt, A, B, C, D, z, bias, True, config=config)
        yr = selective_state_update_ref(state_ref, x, dt, A, B, C, D, z, bias, True)
        assert rel_err(y, yr) < 1e-5 and rel_err(state, state_ref) < 1e-5


    @pytest.mark.parametrize("family,n,pitch", [("mamba1", 14, 14), ("mamba1", 6, 20), ("mamba2", 56, 56),
                                                ("mamba2", 12, 36)])
    def test_state_strides_in_units(self, family, n, pitch):
        # states whose rows are 14, 20, 56 or 36 elements apart (a view of wider rows where pitch > n): the
        # launcher passes the strides divided by their power-of-two factor (2, 4, 8, 4) and the kernel
        # multiplies them back; the state is updated in place, its other columns untouched
        from perfmamba.ops.triton.state_update import state_stride_unit
        g = _gen(n + pitch)
        bsz, heads, per = 3, 2, 8
        lead = (bsz, heads * per) if family == "mamba1" else (bsz, heads, per)
        wide = torch.randn(*lead, pitch, generator=g)
        state = wide[..., :n]
        state_ref = state.clone()
        x, z = (torch.randn(*lead, generator=g) for _ in range(2))
        dt = torch.randn(*lead, generator=g) if family == "mamba1" else torch.randn(bsz, heads, generator=g)
        A = -torch.rand(heads * per, n, generator=g) if family == "mamba1" else -torch.rand(heads, generator=g)
        B, C = torch.randn(bsz, 1, n, generator=g), torch.randn(bsz, 1, n, generator=g)
        D = torch.randn(heads * per if family == "mamba1" else heads, generator=g)
        unit, strides = state_stride_unit(list(state.stride()))
        assert unit == {14: 2, 20: 4, 56: 8, 36: 4}[pitch] and strides[-1] == 1
        untouched = wide[..., n:].clone()
        y = ops.selective_state_update(state, x, dt, A, B, C, D, z, None, True, backend="triton")
        yr = selective_state_update_ref(state_ref, x, dt, A, B, C, D, z, None, True)
        assert rel_err(y, yr) < 1e-5 and rel_err(state, state_ref) < 1e-5
        assert torch.equal(wide[..., n:], untouched)


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestKernelsOnGPU:
    """Compiled kernels on bigger shapes (bf16 within 1e-2 of the fp32 reference, fp32 within 1e-5)."""

    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    @pytest.mark.parametrize("n,seqlen,groups", [(16, 257, 1), (64, 4096, 1), (97, 257, 2), (128, 257, 1),
                                                 (7, 4096, 2), (1, 65, 1)])
    def test_selective_scan(self, dtype, tol, n, seqlen, groups):
        for channels_last in (False, True):  # the tile-scan kernel, then the step kernel (N <= 64)
            c = scan_case(2, 128, seqlen, n, groups, True, True, True, device="cuda", dtype=dtype, seed=n,
                          channels_last=channels_last)
            check_scan(c, tol, out=poisoned_like(c["u"]))
            check_scan(c, tol, out=poisoned_like(c["u"]), splits=5)  # split-L

    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    @pytest.mark.parametrize("seqlen", [2040, 2047, 2044])
    def test_selective_scan_unaligned_lengths(self, dtype, tol, seqlen, monkeypatch):
        # rows L apart: in units of 8 (2040; and 2044 in fp32), on zero-padded copies (2047, the threshold
        # lowered to reach this input), as they are (2044 in bf16); every candidate tile, whole and split-L
        from perfmamba.ops.triton import selective_scan as scan_mod
        monkeypatch.setattr(scan_mod, "PAD_FROM_ELEMENTS", 1000)
        c = scan_case(2, 64, seqlen, 16, 1, True, True, True, device="cuda", dtype=dtype, seed=seqlen)
        args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
        kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True, return_last_state=True)
        f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
        yr, hr = selective_scan_ref(f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"], **kw)
        for cfg in scan_mod._scan_configs(16, seqlen, 64):
            for splits in (None, 3):
                y, h = scan_mod.selective_scan_triton(*args, **kw, out=poisoned_like(c["u"]), splits=splits,
                                                      config=cfg)
                assert rel_err(y, yr) < tol and rel_err(h, hr) < tol, (cfg, splits)

    def test_unaligned_scan_captured_in_a_graph_is_padded(self, monkeypatch):
        # between the two thresholds: launched eagerly the rows are loaded as they are; warmed up and
        # captured by cuda_graph.capture (no launch cost at replay) the scan runs on padded copies, compiled
        # in the warm-up; both equal the reference
        from perfmamba.models.cuda_graph import capture
        from perfmamba.ops.triton import selective_scan as scan_mod
        c = scan_case(2, 512, 1023, 16, 1, True, True, True, device="cuda", dtype=torch.bfloat16, seed=3)
        assert scan_mod.PAD_FROM_ELEMENTS_REPLAYED <= c["u"].numel() < scan_mod.PAD_FROM_ELEMENTS
        args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
        kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True, return_last_state=True)
        cfg = scan_mod._scan_configs(16, 1023, 512)[0]
        f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
        yr, hr = selective_scan_ref(f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"], **kw)
        launched = record_launches(monkeypatch, scan_mod, "_selective_scan_kernel", "PADDED")
        y, h = scan_mod.selective_scan_triton(*args, **kw, config=cfg)
        assert set(launched) == {(False,)} and rel_err(y, yr) < 1e-2 and rel_err(h, hr) < 1e-2
        launched.clear()
        graph, (yg, hg) = capture(lambda: scan_mod.selective_scan_triton(*args, **kw, config=cfg), "cuda")
        with torch.inference_mode():  # the capture ran in inference mode
            yg.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert set(launched) == {(True,)} and rel_err(yg, yr) < 1e-2 and rel_err(hg, hr) < 1e-2

    @pytest.mark.parametrize("n", [4, 8, 16, 97])
    def test_every_scan_candidate(self, n):
        # the autotuner may pick any candidate of either kernel: each one, whole and split-L, bf16
        from perfmamba.ops.triton.scan_steps import selective_scan_steps, steps_configs
        from perfmamba.ops.triton.selective_scan import _scan_configs, selective_scan_triton
        for channels_last in (False, True):
            c = scan_case(2, 64, 257, n, 1, True, True, True, device="cuda", dtype=torch.bfloat16, seed=n,
                          channels_last=channels_last)
            args = (c["u"], c["delta"], c["A"], c["B"], c["C"])
            kw = dict(D=c["D"], z=c["z"], delta_bias=c["delta_bias"], delta_softplus=True, return_last_state=True)
            f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
            yr, hr = selective_scan_ref(f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"], **kw)
            cands = steps_configs(n, 2) if channels_last and n <= 64 else _scan_configs(n, 257, 64)
            for cfg in cands:
                for splits in (None, 3):
                    out = poisoned_like(c["u"])
                    if channels_last and n <= 64:
                        y, h = selective_scan_steps(*args[:3], c["B"].unsqueeze(1), c["C"].unsqueeze(1), c["D"],
                                                    c["z"], c["delta_bias"], True, True, out, splits, config=cfg)
                    else:
                        y, h = selective_scan_triton(*args, **kw, out=out, splits=splits, config=cfg)
                    assert rel_err(y, yr) < 1e-2 and rel_err(h, hr) < 1e-2, (cfg, splits, channels_last)

    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    @pytest.mark.parametrize("n,seqlen,groups,headdim", [(64, 257, 1, 64), (97, 4096, 2, 32), (128, 257, 2, 128),
                                                         (128, 4096, 1, 64), (13, 257, 1, 16)])
    def test_ssd(self, dtype, tol, n, seqlen, groups, headdim):
        c = ssd_case(2, seqlen, 4, headdim, groups, n, "h", True, True, device="cuda", dtype=dtype, seed=n)
        check_ssd(c, 256, tol, out=torch.full_like(c["x"], float("nan")))
        check_ssd(c, 256, tol, out=torch.full_like(c["x"], float("nan")), splits=5)  # split-L

    @pytest.mark.parametrize("n,groups,extra", [(56, 1, 8), (24, 2, 0)])
    def test_ssd_b_c_strides_in_units(self, n, groups, extra):
        # B, C rows 120 and 96 apart, groups 24 apart: strides passed in units of 8 (stride_unit), every
        # candidate of both layouts, whole and split-L
        from perfmamba.ops.triton.alignment import stride_unit
        from perfmamba.ops.triton.ssd import _ssd_configs, ssd_triton
        c = ssd_case(2, 257, 4, 64, groups, n, "h", True, True, device="cuda", dtype=torch.bfloat16, seed=n)
        c = with_bc_in_one_buffer(c, extra)
        assert stride_unit(c["B"], c["C"])[0] == 8
        kw = dict(D=c["D"], z=c["z"], dt_bias=c["dt_bias"], dt_softplus=True, initial_states=c["initial_states"],
                  return_final_states=True)
        f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
        yr, hr = ssd_loop_ref(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], **kw)
        for cfg in _ssd_configs(64, n, 256):
            for splits in (None, 3):
                y, h = ssd_triton(c["x"], c["dt"], c["A"], c["B"], c["C"], 256, **kw, out=poisoned_like(c["x"]),
                                  config=cfg, splits=splits)
                assert rel_err(y, yr) < 1e-2 and rel_err(h, hr) < 1e-2, (cfg, splits)

    def test_ssd_x_in_a_conv_output_row(self):
        # x, B, C in one row of 4 x 64 + 2 x 60 = 376 elements (a layer pruned to 60 states): x's and B/C's
        # strides in units of 8; every candidate of both layouts, whole and split-L
        from perfmamba.ops.triton.alignment import stride_unit
        from perfmamba.ops.triton.ssd import _ssd_configs, ssd_triton
        c = ssd_case(2, 257, 4, 64, 1, 60, "h", False, True, device="cuda", dtype=torch.bfloat16, seed=60)
        c = with_bc_in_one_buffer(c, 0, with_x=True)
        assert stride_unit(c["x"])[0] == 8 and stride_unit(c["B"], c["C"])[0] == 8
        kw = dict(D=c["D"], dt_bias=c["dt_bias"], dt_softplus=True, initial_states=c["initial_states"],
                  return_final_states=True)
        f32 = {k: (v.float() if v is not None else None) for k, v in c.items()}
        yr, hr = ssd_loop_ref(f32["x"], f32["dt"], f32["A"], f32["B"], f32["C"], **kw)
        for cfg in _ssd_configs(64, 60, 256):
            for splits in (None, 3):
                y, h = ssd_triton(c["x"], c["dt"], c["A"], c["B"], c["C"], 256, **kw, config=cfg, splits=splits)
                assert rel_err(y, yr) < 1e-2 and rel_err(h, hr) < 1e-2, (cfg, splits)

    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    def test_norms(self, dtype, tol):
        x = torch.randn(2, 300, 1536, device="cuda", dtype=dtype)
        z = torch.randn(2, 300, 1536, device="cuda", dtype=dtype)
        w = torch.randn(1536, device="cuda", dtype=dtype)
        check_norm(x, w, tol=tol)
        check_norm(x, w, z, 768, tol=tol)

    @pytest.mark.parametrize("res_dtype,residual_dtype", [(None, torch.float32), (torch.float32, torch.float32),
                                                          (torch.bfloat16, None)])
    def test_add_norm(self, res_dtype, residual_dtype):
        check_add_norm(res_dtype, residual_dtype, "cuda")

    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    def test_dt_proj_fused_update(self, dtype, tol):
        check_dt_proj_update(16, 0, "cuda", dtype, tol)

    def test_conv_channels_last(self):
        # Mamba-2 passes a transposed slice of in_proj's output; y keeps that layout
        wide = torch.randn(2, 257, 200, device="cuda", dtype=torch.bfloat16)
        x = wide[..., 8:168].transpose(1, 2)  # (2, 160, 257), channel stride 1
        w = torch.randn(160, 4, device="cuda")
        y, st = ops.causal_conv1d(x, w, None, "silu", True, backend="triton")
        yr, sr = causal_conv1d_ref(x, w, None, "silu", True)
        assert y.stride(1) == 1 and rel_err(y, yr) < 1e-2 and torch.equal(st, sr)

    def test_conv_and_updates(self):
        x = torch.randn(2, 96, 257, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(96, 4, device="cuda")
        b = torch.randn(96, device="cuda")
        init = torch.randn(2, 96, 4, device="cuda", dtype=torch.bfloat16)
        y, st = ops.causal_conv1d(x, w, b, "silu", True, init, backend="triton")
        yr, sr = causal_conv1d_ref(x, w, b, "silu", True, init)
        assert rel_err(y, yr) < 1e-2 and torch.equal(st, sr)
        state = torch.randn(4, 24, 64, 128, device="cuda")
        state_ref = state.clone()
        xs = torch.randn(4, 24, 64, device="cuda")
        dt = torch.randn(4, 24, device="cuda")
        A = -torch.rand(24, device="cuda")
        B, C = torch.randn(4, 2, 128, device="cuda"), torch.randn(4, 2, 128, device="cuda")
        D = torch.randn(24, device="cuda")
        y1 = ops.selective_state_update(state, xs, dt, A, B, C, D, xs, None, True, backend="triton")
        y2 = selective_state_update_ref(state_ref, xs, dt, A, B, C, D, xs, None, True)
        assert rel_err(y1, y2) < 1e-5 and rel_err(state, state_ref) < 1e-5
