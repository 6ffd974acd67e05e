"""Split-L bookkeeping (perfmamba/ops/triton/split.py); the kernels' split paths are tested against the
reference in test_triton_kernels.py (splits forced on the CPU interpreter, automatic on a GPU)."""

import contextlib

import pytest
import torch

pytest.importorskip("triton")

from perfmamba.ops.triton.split import pick_splits, segment_length  # noqa: E402


@pytest.mark.parametrize("seqlen,splits,block", [(100, 3, 32), (4096, 7, 64), (5, 4, 1), (64, 1, 32), (33, 2, 32)])
def test_segments_cover_the_sequence_in_whole_tiles(seqlen, splits, block):
    seg, nseg = segment_length(seqlen, splits, block)
    assert seg % block == 0
    assert (nseg - 1) * seg < seqlen <= nseg * seg  # every step in exactly one segment, none empty
    assert nseg <= splits


def test_no_split_off_the_gpu():
    assert pick_splits(1, 1 << 20, 32, torch.device("cpu")) == 1


@pytest.mark.parametrize("programs,warps,seqlen,expected", [
    (192, None, 2048, 1),      # at least one program per SM: the tile kernels are not split
    (24, None, 16384, 22),     # 4 programs per SM wanted: ceil(4 * 132 / 24)
    (384, 1, 2048, 6),         # step kernel: 384 warps, 16 per SM wanted -> ceil(2112 / 384)
    (48, 2, 4096, 16),         # 96 warps -> 22 segments wanted, capped at 4096 / 256
    (96, 4, 16384, 6),         # 384 warps of 4-warp programs: same count, same split
    (2200, 1, 2048, 1),        # 16 warps per SM already: no split
])
def test_split_policy(monkeypatch, programs, warps, seqlen, expected):
    from perfmamba.ops.triton import split
    monkeypatch.setattr(split, "_sm_count", lambda index: 132)
    monkeypatch.setattr(split, "interpreting", lambda: False)
    per_sm = 16 if warps else 4
    got = split.pick_splits(programs, seqlen, 1, torch.device("cuda", 0), per_sm=per_sm, warps_per_program=warps)
    assert got == expected


@pytest.mark.parametrize("seqlen,replayed,expected", [
    (1024, False, 1),      # launched eagerly, shorter than eager_from: one walk, two launches fewer
    (1024, True, 4),       # the same inside a CUDA graph's capture: split (segments of at least 256 steps)
    (4096, False, 11),     # from eager_from on, eager calls split too
    (16384, False, 11),
])
def test_eager_calls_split_only_long_sequences(monkeypatch, seqlen, replayed, expected):
    from perfmamba.ops.replay import for_replay
    from perfmamba.ops.triton import split
    monkeypatch.setattr(split, "_sm_count", lambda index: 132)
    monkeypatch.setattr(split, "interpreting", lambda: False)
    # 24 programs (a 130m Mamba-2 layer's heads at batch 1), 2 per SM wanted: ceil(264 / 24) = 11 segments
    with for_replay() if replayed else contextlib.nullcontext():
        got = split.pick_splits(24, seqlen, 64, torch.device("cuda", 0), per_sm=2, eager_from=4096)
        assert split.whole_when_eager(seqlen, 4096) == (got == 1)
    assert got == expected
    # without eager_from (the step kernel) the rule is not applied
    assert split.pick_splits(24, seqlen, 64, torch.device("cuda", 0), per_sm=2) == min(11, seqlen // 256)
