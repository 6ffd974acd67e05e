"""``ops.ssd_tiles``: the chunk and score tiles the SSD that runs uses, which the profiler's cost model counts.

The Triton kernel's tile is what it launched last for the shape class (autotuned on a GPU; a ``config=``
override is launched as given), else the first candidate it would try.  Runs on the CPU through the
interpreter (CI) and on a GPU compiled.
"""

import pytest
import torch
from kernel_harness import CUDA, interpreter_env, ops  # noqa: F401

triton_ssd = pytest.importorskip("perfmamba.ops.triton.ssd")
F32 = torch.float32


def test_plain_torch_tiles():
    cpu = torch.device("cpu")
    assert ops.ssd_tiles("ref", 256, 1, 1000, 24, 64, 128, cpu, F32) == (64, 24)  # ops.CPU_REF_CHUNK
    assert ops.ssd_tiles("ref", 256, 1, 40, 24, 64, 128, cpu, F32) == (64, 24)  # next_pow2(40)
    assert ops.ssd_tiles("ref", 256, 1, 20, 24, 64, 128, cpu, F32) == (32, 24)
    assert ops.ssd_tiles("loop", 256, 1, 1000, 24, 64, 128, cpu, F32) == (1, 24)  # the recurrence


def _inputs(bsz, seqlen, nheads, headdim, n_state, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bsz, seqlen, nheads, headdim, generator=g)
    dt = torch.rand(bsz, seqlen, nheads, generator=g) * 0.5
    A = -torch.rand(nheads, generator=g) - 0.5
    B = torch.randn(bsz, seqlen, 1, n_state, generator=g)
    C = torch.randn(bsz, seqlen, 1, n_state, generator=g)
    return [t.to(device) for t in (x, dt, A, B, C)]


def test_the_triton_tile_is_the_one_launched():
    device = torch.device("cuda" if CUDA else "cpu")
    # a shape class no other test runs (37 states), so nothing launched before can be read back
    bsz, seqlen, nheads, headdim, n_state = 1, 40, 2, 32, 37
    for dtype in (F32, torch.bfloat16):
        triton_ssd._LAUNCHED.pop(triton_ssd._shape_class(bsz, seqlen, nheads, headdim, n_state, dtype), None)
    first = triton_ssd._ssd_configs(headdim, n_state, 64)[0]
    assert ops.ssd_tiles("triton", 64, bsz, seqlen, nheads, headdim, n_state, device, F32) == (
        first[0], nheads * -(-headdim // first[1]))  # nothing ran yet: the first candidate
    triton_ssd.ssd_triton(*_inputs(bsz, seqlen, nheads, headdim, n_state, device), 64, config=(16, 16, 1, 1))
    # 16-step chunks, two programs (of 16 channels) per head, each computing its head's C B^T
    assert ops.ssd_tiles("triton", 64, bsz, seqlen, nheads, headdim, n_state, device, F32) == (16, 2 * nheads)
    # the same shape class (next power of two of the length) reads the same launch
    assert ops.ssd_tiles("triton", 64, bsz, 33, nheads, headdim, n_state, device, F32) == (16, 2 * nheads)
    # another dtype is another class: the autotuner keys (and may choose) per dtype, so the fp32 launch is not
    # read back for bf16, which reports its own first candidate until it runs
    assert ops.ssd_tiles("triton", 64, bsz, seqlen, nheads, headdim, n_state, device, torch.bfloat16) == (
        first[0], nheads * -(-headdim // first[1]))
