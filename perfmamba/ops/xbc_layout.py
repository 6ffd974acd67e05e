"""Where Mamba-2's conv output puts x, B and C in a row, so that every B and C row starts on a cache line.

The conv runs over in_proj's xBC slice: d_inner x channels, then G groups of N B channels, then G of C.
Stored back to back, a row of B or C whose N is not a multiple of 64 elements starts part-way into a
128-byte line, and the SSD, which reads each chunk's B and C rows once per head, then asks L2 for more
lines: an H200 measured it (2026-12-03, ``docs/benchmarks/tuning-h200/xbc-rows.txt``, B=8 L=4096 H=24
P=64, bf16), the SSD taking 0.2371 / 0.2038 / 0.1960 ms at N = 96 / 56 / 48 in the conv-output row as
packed, and 0.2351 / 0.1958 / 0.1928 with B and C on lines (N=128, already aligned: 0.2357).

So where a group's row of N states is over half a line, the Triton path writes the conv output into
rows laid out in segments of ``SEGMENT`` elements: x first, then each group's B and each group's C at
the start of a segment of its own, the rest of a segment unused (never read: the kernels mask past N).
Where d_inner and N are multiples of ``SEGMENT`` this is the packed row itself (mamba2-130m and every
published Mamba-2 size: N = 128).  ``SEGMENT`` is the conv's channel block, 64 elements, which is 128
bytes in 16-bit types (256 in fp32), so each program of the conv kernel writes one segment's columns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEGMENT = 64
# Rows of at most half a line are left packed: at N = 32 and 16 (bf16) the aligned row measured 0.1851 and
# 0.1694 ms against 0.1856 and 0.1715 packed (same run as above), for 11% and 18% more conv-output memory
# in a demo-mamba2 layer (d_inner 512) -- more than its unpruned 64-state row.
PAD_ABOVE_BYTES = 64


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


@dataclass(frozen=True)
class XbcRows:
    """Column offsets of one conv-output row: x at 0, B's group g at ``b_offset + g * group_stride``, C's
    group g at ``c_offset + g * group_stride``; rows ``row`` elements apart."""

    d_inner: int
    ngroups: int
    d_state: int
    b_offset: int
    c_offset: int
    group_stride: int
    row: int

    @property
    def packed(self) -> bool:
        """Whether this is the plain back-to-back row (no unused columns)."""
        return self.row == self.d_inner + 2 * self.ngroups * self.d_state

    def split(self, buf: torch.Tensor):
        """Views of a (Bsz, L, row) buffer: x (Bsz, L, d_inner), B and C (Bsz, L, G, N)."""
        g, n, gs = self.ngroups, self.d_state, self.group_stride
        x = buf[..., :self.d_inner]
        B = buf[..., self.b_offset:self.b_offset + g * gs].unflatten(-1, (g, gs))[..., :n]
        C = buf[..., self.c_offset:self.c_offset + g * gs].unflatten(-1, (g, gs))[..., :n]
        return x, B, C


def xbc_rows(d_inner: int, ngroups: int, d_state: int, element_size: int = 2) -> XbcRows:
    """The row the Triton path writes for these sizes: line-aligned where a group's row of N states is
    over half a line (PAD_ABOVE_BYTES), else packed.  Where d_inner and N are multiples of SEGMENT the
    two are the same."""
    if d_state * element_size <= PAD_ABOVE_BYTES:
        return packed_rows(d_inner, ngroups, d_state)
    b_offset = _round_up(d_inner, SEGMENT)
    group_stride = _round_up(d_state, SEGMENT)
    c_offset = b_offset + ngroups * group_stride
    return XbcRows(d_inner, ngroups, d_state, b_offset, c_offset, group_stride, c_offset + ngroups * group_stride)


def packed_rows(d_inner: int, ngroups: int, d_state: int) -> XbcRows:
    """The back-to-back row, as in_proj and transformers lay xBC out."""
    n = ngroups * d_state
    return XbcRows(d_inner, ngroups, d_state, d_inner, d_inner + n, d_state, d_inner + 2 * n)
