"""Strides in units of their power-of-two factor, so that Triton can prove rows aligned.

Triton knows an integer argument's divisibility only when it is a multiple of 16 (it then specializes
the kernel); any other value is of unknown alignment, and every address computed from it is loaded
element by element.  A kernel that takes its strides (and, where a mask bound matters, its length)
divided by their largest power-of-two factor UNIT and multiplies them back by that constexpr is compiled
knowing each row starts on a UNIT-element boundary: a multiple of 8 is then as good as one of 16 for
16-bit data (one 16-byte vector).  Measured on an H200 (2026-12-01): the SSD of a demo-mamba2 layer pruned
to 56 states, whose B/C strides are 56, took 1.4x its 64-state time before, 1.03x after.
"""

from __future__ import annotations


def _leading_strides(t) -> list:
    """t's strides but the innermost, with 0 for a dimension of size 1 (its index is always 0)."""
    return [st if size > 1 else 0 for size, st in zip(t.shape, t.stride())][:-1]


def _factor_of(values) -> int:
    """The largest power of two up to 16 that divides every integer in ``values``: the lowest set bit of
    their bitwise OR (0 divides by anything).  One pass, since the launchers call this on every eager call."""
    bits = 0
    for v in values:
        bits |= v
    return 16 if bits == 0 else min(16, bits & -bits)


def _unit(factor: int) -> int:
    """The unit strides are passed in for a common factor: 1 at 16, where Triton sees the alignment itself."""
    return 1 if factor == 16 else factor


def common_factor(*tensors, sizes: tuple = ()) -> int:
    """The largest power of two up to 16 that divides every leading stride of ``tensors`` (a dimension of
    size 1 counts as stride 0: its index is always 0) and every integer in ``sizes``."""
    return _factor_of([st for t in tensors for st in _leading_strides(t)] + list(sizes))


def unit_of(*tensors, sizes: tuple = ()) -> int:
    """The unit a kernel takes these strides and sizes in: their ``common_factor``, or 1 where that is 16
    (Triton then sees the alignment itself, and the kernel compiles as without units)."""
    return _unit(common_factor(*tensors, sizes=sizes))


def stride_unit(*tensors, sizes: tuple = ()) -> tuple[int, list, list]:
    """(unit, strides, sizes): the leading strides of ``tensors`` (each with innermost stride 1) and the
    integers ``sizes``, divided by their ``common_factor`` -- or, when that is 16, as they are (unit 1:
    Triton sees the alignment itself, and the kernel compiles as without this).

    A dimension of size 1 gets stride 0 (so that its stride does not spoil the alignment: G = 1 with
    N = 56 in a Mamba-2 layer's conv output, rows 624 apart, is then all multiples of 16).
    """
    leading = [_leading_strides(t) for t in tensors]
    unit = _unit(_factor_of([st for row in leading for st in row] + list(sizes)))
    strides = [tuple(st // unit for st in row) + (t.stride(-1),) for row, t in zip(leading, tensors)]
    return unit, strides, [s // unit for s in sizes]


def padded_copy(t, length: int):
    """A copy of ``t`` whose last dimension is ``length`` (>= its own), zeros past the end: one copy of the
    values into a fresh buffer and a fill of the few columns after them, instead of ``torch.nn.functional.pad``,
    which fills the whole buffer with zeros before copying."""
    out = t.new_empty(*t.shape[:-1], length)
    out[..., :t.shape[-1]].copy_(t)
    out[..., t.shape[-1]:].zero_()
    return out
