"""Budgets: uniform ratios, a global budget allocated by score, snapping to kernel-friendly multiples."""

import pytest
import torch

from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.errors import PerfMambaError
from perfmamba.pruning import budget


def test_snap_rounds_to_the_nearest_multiple_within_bounds():
    assert budget.snap(12, 16, 1) == 12
    assert budget.snap(12.4, 16, 1) == 12
    assert budget.snap(12, 16, 8) == 16  # tie: keep more
    assert budget.snap(11.9, 16, 8) == 8
    assert budget.snap(1, 16, 8) == 8  # never below one multiple
    assert budget.snap(96, 128, 8) == 96
    assert budget.snap(99, 128, 8) == 96
    assert budget.snap(19, 20, 8) == 16  # never above the largest whole multiple
    assert budget.snap(3, 6, 8) == 6  # fewer channels than one multiple: nothing to remove
    assert budget.snap(0.2, 16, 1) == 1


def test_uniform_keep():
    cfg = Mamba1Config(d_model=64, n_layer=3, vocab_size=256, d_state=16)
    assert budget.uniform_keep(cfg, 0.0) == [16, 16, 16]
    assert budget.uniform_keep(cfg, 0.25) == [12, 12, 12]
    assert budget.uniform_keep(cfg, 0.75, multiple=8) == [8, 8, 8]
    per_layer = cfg.replace(d_state_per_layer=[16, 8, 12])
    assert budget.uniform_keep(per_layer, 0.5) == [8, 4, 6]


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan"), 2])
def test_bad_ratio_is_an_error(ratio):
    cfg = Mamba1Config(d_model=64, n_layer=2, vocab_size=256, d_state=16)
    with pytest.raises(PerfMambaError):
        budget.uniform_keep(cfg, ratio)


def test_multiple_keeps_mamba2_conv_channels_a_multiple_of_8():
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=40, headdim=16, ngroups=1)
    for ratio in (0.125, 0.25, 0.5, 0.75):
        for k in budget.uniform_keep(cfg, ratio, multiple=8):
            assert k % 8 == 0 and (cfg.d_inner + 2 * cfg.ngroups * k) % 8 == 0


def test_global_budget_follows_the_scores_and_keeps_the_total():
    cfg = Mamba1Config(d_model=64, n_layer=3, vocab_size=256, d_state=16)
    flat = torch.ones(1, 16, dtype=torch.float64)  # activity spread evenly over all channels
    peaked = torch.cat([torch.full((1, 4), 10.0), torch.full((1, 12), 0.01)], dim=1).double()  # 4 matter
    scores = [flat, peaked, flat.clone()]
    keep = budget.global_keep(cfg, scores, 0.5)
    assert sum(keep) == sum(budget.uniform_keep(cfg, 0.5))
    assert keep[1] < 8 < keep[0]  # the peaked layer gives its slots to the others
    keep8 = budget.global_keep(cfg, scores, 0.5, multiple=8)
    assert all(k % 8 == 0 and k >= 8 for k in keep8) and sum(keep8) == 24
    assert budget.global_keep(cfg, scores, 0.0) == [16, 16, 16]


def test_global_budget_groups_share_one_size():
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=8, headdim=16, ngroups=2)
    scores = [torch.rand(2, 8, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(2)]
    keep = budget.global_keep(cfg, scores, 0.5)
    idx = budget.select(scores, keep)
    assert [tuple(t.shape) for t in idx] == [(2, keep[0]), (2, keep[1])]


def test_select_takes_each_groups_best_and_breaks_ties_by_index():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.9], [1.0, 0.0, 0.0, 2.0]], dtype=torch.float64)
    (idx,) = budget.select([s], [2])
    assert idx.tolist() == [[1, 3], [0, 3]]
    (idx,) = budget.select([torch.zeros(1, 4, dtype=torch.float64)], [2])
    assert idx.tolist() == [[0, 1]]


def test_slow_sizes_are_mamba2_sizes_off_multiples_of_8():
    slow_sizes, slow_sizes_note = budget.slow_sizes, budget.slow_sizes_note
    m2 = Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=64, headdim=16)
    m1 = Mamba1Config(d_model=64, n_layer=2, vocab_size=256, d_state=16)
    assert slow_sizes(m2, [60, 56, 60, 12]) == [12, 60]
    assert slow_sizes(m2, [64, 56, 8]) == []
    assert slow_sizes(m1, [14, 12, 7]) == []  # the Mamba-1 scan covers these with equal tiles
    assert slow_sizes_note([]) == ""
    assert "d_state 60 is not" in slow_sizes_note([60]) and "--multiple 8" in slow_sizes_note([60])
    assert "d_state 12, 60 are not" in slow_sizes_note([12, 60])
