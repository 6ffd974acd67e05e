"""The stride-unit rule that lets Triton prove rows aligned (perfmamba/ops/triton/alignment.py)."""

import torch

from perfmamba.ops.triton.alignment import common_factor, padded_copy, stride_unit


def test_multiples_of_16_are_left_to_triton():
    # a Mamba-2 conv output (G = 1, N = 56, rows 512 + 2 x 56 = 624 apart): every stride that matters is a
    # multiple of 16, so unit 1 and the strides as they are, the group stride zeroed (its index is always 0)
    conv = torch.empty(2, 100, 624)
    B = conv[..., 512:568].view(2, 100, 1, 56)
    assert stride_unit(B, B) == (1, [(62400, 624, 0, 1)] * 2, [])


def test_the_largest_common_power_of_two():
    B = torch.empty(2, 100, 1, 56)[..., :56]  # rows 56 apart: a multiple of 8
    wide = torch.empty(2, 100, 78)[..., :56].view(2, 100, 1, 56)  # rows 78 apart: of 2
    assert stride_unit(B, B) == (8, [(700, 7, 0, 1)] * 2, [])
    assert stride_unit(B, wide) == (2, [(2800, 28, 0, 1), (3900, 39, 0, 1)], [])
    odd = torch.empty(1, 100, 3, 7)  # batch 1: its stride is zeroed too; 21 and 7 are odd
    assert stride_unit(odd, odd) == (1, [(0, 21, 7, 1)] * 2, [])


def test_sizes_take_part_and_are_divided_too():
    # a Mamba-1 scan input (Bsz, D, L): L = 2040 is a multiple of 8, and so is every stride
    u = torch.empty(3, 4, 2040)
    assert stride_unit(u, sizes=(2040,)) == (8, [(1020, 255, 1)], [255])
    assert stride_unit(u, sizes=(2047,))[0] == 1  # an odd length: nothing to gain
    aligned = torch.empty(3, 4, 2048)
    assert stride_unit(aligned, sizes=(2048,)) == (1, [(8192, 2048, 1)], [2048])
    assert stride_unit(aligned, sizes=(2040,)) == (8, [(1024, 256, 1)], [255])


def test_common_factor_keeps_16():
    u = torch.empty(3, 4, 2048)
    assert common_factor(u, sizes=(2048,)) == 16  # stride_unit then leaves the values to Triton
    assert common_factor(u, sizes=(2044,)) == 4
    assert common_factor(torch.empty(1, 4, 7)[..., :6]) == 1  # rows 7 apart; the batch of 1 does not count
    assert common_factor(torch.empty(1, 1, 7)) == 16


def test_padded_copy_keeps_the_values_and_zeros_the_rest():
    # u as the Mamba-1 mixer hands it over: a view of a (2D, Bsz, L) buffer, rows L apart, not contiguous
    xz = torch.randn(8, 3, 35).permute(1, 0, 2)
    u = xz[:, :4]
    out = padded_copy(u, 48)
    assert out.shape == (3, 4, 48) and out.is_contiguous()
    assert torch.equal(out[..., :35], u) and not out[..., 35:].any()
    assert torch.equal(padded_copy(u, 35), u)  # nothing to pad: a plain copy


def test_common_factor_is_the_largest_dividing_power_of_two_on_random_layouts():
    # the one-pass form (lowest set bit of the OR) against the definition, on views of random shapes inside
    # larger buffers (odd, even and size-1 dimensions) and random extra sizes
    import random
    rng = random.Random(0)

    def by_definition(values):
        return max(f for f in (1, 2, 4, 8, 16) if all(v % f == 0 for v in values))

    for _ in range(500):
        tensors = []
        for _ in range(rng.randint(1, 4)):
            shape = [rng.choice([1, 2, 3, 8]) for _ in range(rng.randint(1, 4))]
            big = torch.empty(*(s * rng.choice([1, 2]) + rng.choice([0, 1, 6]) for s in shape))
            tensors.append(big[tuple(slice(0, s) for s in shape)])
        sizes = tuple(rng.choice([0, 1, 24, 1000, 1024]) for _ in range(rng.randint(0, 2)))
        leading = [st for t in tensors for size, st in zip(t.shape[:-1], t.stride()[:-1]) if size > 1]
        factor = by_definition(leading + list(sizes))
        assert common_factor(*tensors, sizes=sizes) == factor
        unit, strides, divided = stride_unit(*tensors, sizes=sizes)
        assert unit == (1 if factor == 16 else factor)
        assert divided == [s // unit for s in sizes]
        for t, row in zip(tensors, strides):
            assert row == tuple((st if size > 1 else 0) // unit for size, st in zip(t.shape[:-1], t.stride()[:-1])) \
                + (t.stride(-1),)
