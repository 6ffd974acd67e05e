"""The transposed SSD kernel with B and C read through tensor descriptors (``BC_TMA``, ``bc_descriptors``).

Under the interpreter (CPU tensors) and on a GPU: the descriptor loads give the pointer loads' results
(bit-identical), against the step-by-step reference too, whole and split-L, with y pre-filled with NaN; the tiles
each N gets; and the fallback to pointer loads where the copy engine cannot read the rows.
"""

import pytest
import torch
from kernel_harness import CUDA, interpreted, interpreter_env, rel_err  # noqa: F401
from test_ssd_transposed import check
from test_ssd_two_tiles import make_case

from perfmamba.ops.replay import for_replay
from perfmamba.ops.triton import ssd as ssd_mod


def _run(c, config, bc_tma, splits=None):
    kw = dict(D=c["D"], z=c["z"], dt_bias=c["dt_bias"], dt_softplus=True, initial_states=c["initial_states"],
              return_final_states=True)
    return ssd_mod.ssd_triton(c["x"], c["dt"], c["A"], c["B"], c["C"], 64, **kw, config=config, splits=splits,
                              out=torch.full_like(c["x"], float("nan")), bc_tma=bc_tma)


def _spy(monkeypatch):
    boxes = []
    real = ssd_mod.bc_descriptors

    def spy(B, C, block_t, block_n):
        boxes.append((block_t, block_n))
        return real(B, C, block_t, block_n)
    monkeypatch.setattr(ssd_mod, "bc_descriptors", spy)
    return boxes


def test_tma_tiles():
    # one box of at most 128 bytes a row, below 64 states (where descriptors measured faster)
    assert [ssd_mod.tma_tiles(n, 64, 2) for n in (7, 16, 32, 48, 56, 63, 64, 96, 128)] == [
        (16, 0), (16, 0), (32, 0), (64, 0), (64, 0), (64, 0), None, None, None]
    assert [ssd_mod.tma_tiles(n, 64, 4) for n in (16, 32, 56)] == [(16, 0), (32, 0), None]  # fp32 boxes
    assert ssd_mod.tma_tiles(40, 32, 2) is None  # 32 + 16 at BLOCK_T 32: two tiles


def test_descriptors_readable():
    x = torch.zeros(2, 10, 1, 56, dtype=torch.bfloat16)
    assert ssd_mod.descriptors_readable(x, x)  # rows 112 bytes apart
    assert not ssd_mod.descriptors_readable(torch.zeros(2, 10, 1, 13, dtype=torch.bfloat16))  # 26 bytes
    assert not ssd_mod.descriptors_readable(torch.zeros(2, 10, 1, 64)[..., 1:33])  # base 4 bytes off a line
    assert not ssd_mod.descriptors_readable(torch.zeros(2, 10, 64, 1).transpose(-1, -2))  # N not contiguous


def test_descriptors_wanted_follows_for_replay(monkeypatch):
    # a graph's warm-up (not capturing) and its capture must choose alike: for_replay decides, not the capture
    monkeypatch.setattr(ssd_mod, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not ssd_mod.descriptors_wanted(torch.device("cuda"))  # eager calls, even inside someone's capture
    with for_replay():
        assert ssd_mod.descriptors_wanted(torch.device("cuda"))
        assert not ssd_mod.descriptors_wanted(torch.device("cpu"))
    monkeypatch.setattr(ssd_mod, "interpreting", lambda: True)
    assert ssd_mod.descriptors_wanted(torch.device("cpu"))


@interpreted
class TestDescriptorsInterpreted:
    @pytest.mark.parametrize("n,seqlen,config,splits,boxes", [
        (32, 50, (16, 16, 1, 1, True), None, [(16, 32)]),
        (56, 77, (64, 16, 1, 1, True), None, [(64, 64)]),
        (48, 130, (64, 16, 1, 1, True), 3, [(64, 64), (64, 64)]),  # split-L: both passes read boxes
        (96, 70, (64, 16, 1, 1, True), None, []),                  # 64 states and more: pointer loads
    ])
    def test_against_pointer_loads(self, monkeypatch, n, seqlen, config, splits, boxes):
        c = make_case(2, seqlen, 2, 24, 1, n, "h", True, True, seed=n)
        c = {k: (v.bfloat16() if k in ("x", "B", "C", "dt", "z") and v is not None else v) for k, v in c.items()}
        y0, h0 = _run(c, config, False, splits)
        seen = _spy(monkeypatch)
        y1, h1 = _run(c, config, True, splits)
        assert seen == boxes
        assert not y1.isnan().any()
        assert torch.equal(y1, y0) and torch.equal(h1, h0)  # the same tiles, values and sums

    @pytest.mark.parametrize("n,groups,splits", [(48, 2, None), (16, 2, 3), (32, 1, None)])
    def test_fp32_and_groups_against_reference(self, monkeypatch, n, groups, splits):
        seen = _spy(monkeypatch)
        c = make_case(2, 70, 4, 16, groups, n, "hp", True, True, seed=n + groups)
        check(c, 1e-5, (64, 16, 1, 1, True), splits=splits)
        # fp32 rows of 128 bytes at most: up to 32 states in one box; 48 stays on pointer loads
        assert seen == ([] if n > 32 else [(64, ssd_mod.tma_tiles(n, 64, 4)[0])] * (1 if splits is None else 2))

    def test_unreadable_rows_keep_pointer_loads(self, monkeypatch):
        seen = _spy(monkeypatch)
        c = make_case(1, 40, 2, 16, 1, 13, "h", False, False, seed=4)
        c = {k: (v.bfloat16() if k in ("x", "B", "C", "dt") and v is not None else v) for k, v in c.items()}
        y, _ = _run(c, (64, 16, 1, 1, True), True)
        assert seen == [] and not y.isnan().any()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("n", [16, 32, 48, 56])
def test_descriptors_on_gpu(n):
    c = make_case(2, 257, 4, 64, 1, n, "h", True, True, device="cuda", dtype=torch.bfloat16, seed=n + 5)
    for splits in (None, 3):
        check(c, 1e-2, (64, 64, 4, 2, True), splits=splits)
        y0, h0 = _run(c, (64, 64, 4, 2, True), False, splits)
        y1, h1 = _run(c, (64, 64, 4, 2, True), True, splits)
        assert rel_err(y1, y0) < 1e-2 and rel_err(h1, h0) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_capture_asks_for_the_configuration_its_warm_up_chose(monkeypatch):
    """The capture must find the autotuner's key that the warm-up tuned: a capture cannot time candidates,
    and one the warm-up did not compile would be compiled inside the capture."""
    from perfmamba.models.cuda_graph import capture
    keys = []
    real = ssd_mod.pick_config

    def spy(key, candidates, launch):
        keys.append((torch.cuda.is_current_stream_capturing(), key))
        return real(key, candidates, launch)
    monkeypatch.setattr(ssd_mod, "pick_config", spy)
    c = make_case(1, 300, 4, 64, 1, 48, "h", True, False, device="cuda", dtype=torch.bfloat16, seed=11)
    seen = _spy(monkeypatch)

    def call():
        return ssd_mod.ssd_triton(c["x"], c["dt"], c["A"], c["B"], c["C"], 64, D=c["D"], z=c["z"],
                                  dt_bias=c["dt_bias"], dt_softplus=True)
    graph, y_graph = capture(call, torch.device("cuda"))
    captured = [k for capturing, k in keys if capturing]
    assert captured and set(captured) <= {k for capturing, k in keys if not capturing}
    assert seen  # 48 states: the graph reads B and C through descriptors
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(y_graph, call()) < 1e-2  # against an eager call (pointer loads)
