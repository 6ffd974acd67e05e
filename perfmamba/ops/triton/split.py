"""Split-L: run a sequential scan on several segments of the sequence at once.

The scan kernels give each program a block of channels and walk the whole sequence.  With a small batch
there are too few programs to fill the GPU (a 130m-sized Mamba-1 layer at batch 1 has 96 blocks of 16
channels for 132 SMs; a Mamba-2 layer 24 heads), and the time is the length of one long sequential walk.
Split-L cuts the sequence into S segments and runs three launches:

  1. every segment from a zero state, keeping only the state leaving it and its total decay
     (log2 of prod_t exp(delta_t A), one number per channel or head);
  2. ``state_passing``: a short sequential pass over the segments turns those into the state *entering*
     each segment, h_in[s+1] = decay[s] * h_in[s] + h_out[s] (and the final state);
  3. every segment again from its true entering state, writing y.

Step 1 skips the output, so the cost is about 1.5x the work of one pass, spread over S times as many
programs.  ``pick_splits`` only splits when the grid is too small for the device, and, for a call
launched eagerly (not a CUDA graph's warm-up or capture, ``perfmamba.ops.replay``), only from a length
on where the device time saved is more than the host time the two extra launches cost.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from perfmamba.ops.replay import launches_are_free
from perfmamba.ops.triton.selective_scan import interpreting

LOG2E = 1.4426950408889634

# Eager SSD calls split the sequence only from this many steps on (``ssd_triton`` passes it as
# ``eager_from``).  A split adds two launches and two allocations: host time that a call launched on its
# own pays and a CUDA graph's replay does not, while below this length the unsplit walk's extra device
# time stays hidden behind the host.  Measured on an H200's host (2026-12-02, mamba2-130m, B=1, bf16,
# eager last-token prefill, three interleaved rounds; docs/benchmarks/tuning-h200/eager-split.txt): never
# split, the forward took 0.69-0.87x the split one's time at L = 512 to 4096 (L = 1024: 10.2-11.0 against
# 14.1-15.9 ms in the two calmer rounds), about the same at 8192 (0.98x), and 2.0x at 16384.  Not applied
# to the Mamba-1 scan (not measured: at batch 1 a 130m layer's scan has 384 programs and is not split).
SSD_EAGER_SPLIT_FROM = 8192


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def whole_when_eager(seqlen: int, eager_from: int | None) -> bool:
    """True where a call of ``seqlen`` steps is not split because it is launched eagerly (see
    SSD_EAGER_SPLIT_FROM); part of the kernel's tuning key, since the same shape then runs another grid."""
    return eager_from is not None and seqlen < eager_from and not launches_are_free()


def pick_splits(programs: int, seqlen: int, block: int, device: torch.device, per_sm: int = 2,
                min_segment: int = 256, warps_per_program: int | None = None,
                eager_from: int | None = None) -> int:
    """How many segments to cut the sequence into so that ``programs`` x segments fill the GPU.

    Split only when the grid has fewer programs than the device has SMs (above that the kernels are
    already throughput-bound, and the extra pass only costs: measured on an H100, SSD with 192 programs
    went from 0.30 to 0.47 ms when split in 3), aiming at ``per_sm`` programs per SM (measured best: 4 for
    the Mamba-1 scan, 2 for SSD); never under the interpreter or on short sequences (each segment keeps at
    least ``min_segment`` steps), nor, with ``eager_from``, when the call is launched eagerly on a
    sequence shorter than that (``whole_when_eager``).  With ``warps_per_program``, ``per_sm`` counts warps
    instead and the grid is split whenever it has fewer (the step kernel of ``scan_steps`` runs one latency-bound walk
    per warp and wants about 16 warps per SM: at B=8, L=2048 its best time was 0.75 ms unsplit and
    0.55 ms split in 4).
    """
    if interpreting() or device.type != "cuda" or whole_when_eager(seqlen, eager_from):
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    if warps_per_program is not None:
        warps = max(1, programs * warps_per_program)
        if warps >= per_sm * sms:
            return 1
        wanted = triton.cdiv(per_sm * sms, warps)
    else:
        if programs >= sms:
            return 1
        wanted = triton.cdiv(per_sm * sms, max(1, programs))
    return max(1, min(wanted, seqlen // max(min_segment, block)))


def segment_length(seqlen: int, splits: int, block: int) -> tuple[int, int]:
    """(segment length, number of segments): segments are whole tiles of ``block`` steps."""
    seg = triton.cdiv(triton.cdiv(seqlen, max(1, splits)), block) * block
    return seg, triton.cdiv(seqlen, seg)


def seg_strides(t, ndim: int) -> tuple:
    """Strides of a per-segment state buffer (Bsz, S, ...), or ``ndim`` zeros when there is none."""
    return tuple(t.stride()) if t is not None else (0,) * ndim


@triton.jit
def _state_passing_kernel(hseg_ptr, sums_ptr, coef_ptr, init_ptr, hin_ptr, final_ptr, S, E, ROW,
                          HAS_COEF: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr,
                          BLOCK: tl.constexpr):
    # one program: one batch row, BLOCK state elements (flattened, contiguous); sequential over segments
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    row = offs // ROW  # the decay is shared by ROW consecutive elements (one channel / one head)
    rows_total = E // ROW
    if HAS_COEF:
        coef = tl.load(coef_ptr + offs, mask=mask, other=0.0)
    if HAS_INIT:
        h = tl.load(init_ptr + b.to(tl.int64) * E + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(S):
        bs = (b * S + s).to(tl.int64)
        tl.store(hin_ptr + bs * E + offs, h, mask=mask)
        log2_decay = tl.load(sums_ptr + bs * rows_total + row, mask=mask, other=0.0)
        if HAS_COEF:
            log2_decay = log2_decay * coef
        h = tl.exp2(log2_decay) * h + tl.load(hseg_ptr + bs * E + offs, mask=mask, other=0.0)
    if STORE_FINAL:
        tl.store(final_ptr + b.to(tl.int64) * E + offs, h, mask=mask)


def state_passing(h_out, sums, row: int, coef=None, init=None, final=None):
    """The state entering each segment, (Bsz, S, ...) like ``h_out``, and ``final`` filled when given.

    h_out: (Bsz, S, E...) fp32 contiguous, the state leaving each segment from a zero start;
    sums: (Bsz, S, E / row) fp32 contiguous, per-row sums whose exp2 (times ``coef`` (E,) when given) is
    the segment's decay; init: (Bsz, E...) the state before the first segment; final: (Bsz, E...) out.
    """
    bsz, nseg = h_out.shape[:2]
    numel = h_out[0, 0].numel()
    h_in = torch.empty_like(h_out)
    block = 1024 if not interpreting() else 64
    grid = (bsz, triton.cdiv(numel, block))
    _state_passing_kernel[grid](
        h_out, sums, coef if coef is not None else sums, init.contiguous() if init is not None else sums, h_in,
        final if final is not None else sums, nseg, numel, row,
        HAS_COEF=coef is not None, HAS_INIT=init is not None, STORE_FINAL=final is not None, BLOCK=block,
        num_warps=4,
    )
    return h_in


def run_segmented(kernel, grid, bsz, seqlen, block, device, splits, state_shape, per_sm=2, make_coef=None,
                  init=None, final=None, warps_per_program=None, eager_from=None):
    """Run a scan kernel whole or split-L (the three passes of the module doc); the shared launch logic.

    ``kernel(grid, seg, h_in, h_out, sums, states_only)`` launches one pass: ``seg`` is the segment length
    in steps, ``h_in`` / ``h_out`` per-segment states (Bsz, S, *state_shape) or None, ``sums`` the
    per-segment log2-decay sums (Bsz, S, state_shape[0]).  ``grid`` is the (batch x blocks) part of the
    grid; ``splits`` forces the number of segments (None: ``pick_splits``).  ``init`` / ``final`` are the
    state before the sequence and the one to fill after it (Bsz, *state_shape), or None; ``make_coef()``
    returns ``state_passing``'s ``coef`` (only called when the sequence is split); ``eager_from``: see
    ``pick_splits``.
    """
    programs = grid[0] * grid[1]
    nseg = splits if splits is not None else pick_splits(programs, seqlen, block, device, per_sm=per_sm,
                                                         warps_per_program=warps_per_program,
                                                         eager_from=eager_from)
    seg, nseg = segment_length(seqlen, nseg, block)
    if nseg == 1:
        kernel((*grid, 1), seg, init.unsqueeze(1) if init is not None else None,
               final.unsqueeze(1) if final is not None else None, None, False)
        return
    f32 = dict(device=device, dtype=torch.float32)
    h_out = torch.empty(bsz, nseg, *state_shape, **f32)
    sums = torch.empty(bsz, nseg, state_shape[0], **f32)
    kernel((*grid, nseg), seg, None, h_out, sums, True)
    row = h_out[0, 0].numel() // state_shape[0]
    coef = make_coef() if make_coef is not None else None
    h_in = state_passing(h_out, sums, row, coef=coef, init=init, final=final)
    kernel((*grid, nseg), seg, h_in, None, None, False)
