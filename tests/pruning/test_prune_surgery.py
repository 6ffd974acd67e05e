"""Surgery: pruning nothing is the identity, pruned tensors are physically smaller and hold the kept
weights, a pruned model decodes step by step exactly as it prefills, and it survives a save/load."""

import pytest
import torch

import perfmamba
from perfmamba.errors import PerfMambaError
from perfmamba.pruning import budget, prune, prune_model
from perfmamba.pruning.scores import compute_scores
from perfmamba.pruning.surgery import keep_all

from prune_helpers import CONFIGS, make_model, rel_err, token_ids, uneven_keep

NAMES = list(CONFIGS)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_ratio_zero_is_the_identity(name):
    model = make_model(name)
    ids = token_ids(2, 40)
    same = prune_model(model, keep_all(model.config))
    assert same.config == model.config
    assert torch.equal(same(ids), model(ids))
    result = prune(model, "random", 0.0)
    assert result.model.config == model.config
    assert torch.equal(result.model(ids), model(ids))


@pytest.mark.parametrize("name", NAMES)
def test_pruned_tensors_are_smaller_and_hold_the_kept_weights(name):
    model = make_model(name)
    cfg = model.config
    scores = compute_scores("random", model, seed=3)
    keep = budget.select(scores, budget.uniform_keep(cfg, 0.5))
    pruned = prune_model(model, keep)
    k = cfg.d_state // 2
    assert pruned.config.d_state == k and pruned.config.d_state_per_layer is None
    assert pruned.num_parameters() < model.num_parameters()
    for i, (blk, new) in enumerate(zip(model.backbone.layers, pruned.backbone.layers)):
        old, mix, idx = blk.mixer, new.mixer, keep[i]
        assert mix.d_state == k
        if cfg.family == "mamba1":
            r, n = cfg.dt_rank, cfg.d_state
            assert mix.A_log.shape == (cfg.d_inner, k)
            assert mix.x_proj.weight.shape == (r + 2 * k, cfg.d_inner)
            assert torch.equal(mix.A_log, old.A_log[:, idx[0]])
            assert torch.equal(mix.x_proj.weight[r:r + k], old.x_proj.weight[r + idx[0]])
            assert torch.equal(mix.x_proj.weight[r + k:], old.x_proj.weight[r + n + idx[0]])
        else:
            d, g, n = cfg.d_inner, cfg.ngroups, cfg.d_state
            assert mix.in_proj.weight.shape == (2 * d + 2 * g * k + cfg.nheads, cfg.d_model)
            assert mix.conv1d.weight.shape[0] == d + 2 * g * k
            for grp in range(g):
                b_new = mix.in_proj.weight[2 * d + grp * k: 2 * d + (grp + 1) * k]
                c_new = mix.in_proj.weight[2 * d + g * k + grp * k: 2 * d + g * k + (grp + 1) * k]
                assert torch.equal(b_new, old.in_proj.weight[2 * d + grp * n + idx[grp]])
                assert torch.equal(c_new, old.in_proj.weight[2 * d + g * n + grp * n + idx[grp]])
                conv_c = mix.conv1d.weight[d + g * k + grp * k: d + g * k + (grp + 1) * k]
                assert torch.equal(conv_c, old.conv1d.weight[d + g * n + grp * n + idx[grp]])
            assert torch.equal(mix.in_proj.weight[-cfg.nheads:], old.in_proj.weight[-cfg.nheads:])
    cache = pruned.allocate_cache(1)
    assert cache.nbytes() < model.allocate_cache(1).nbytes()


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_pruned_step_by_step_decode_equals_prefill(name):
    model = make_model(name)
    pruned = prune_model(model, uneven_keep(model.config))
    assert pruned.config.d_state_per_layer == [model.config.d_state // 2, model.config.d_state - 3]
    ids = token_ids(2, 24, seed=1)
    full = pruned(ids)
    cache = pruned.allocate_cache(2)
    prefix = pruned(ids[:, :10], cache)
    steps = torch.stack([pruned.step(ids[:, t], cache) for t in range(10, 24)], dim=1)
    assert rel_err(prefix, full[:, :10]) < 1e-5
    assert rel_err(steps, full[:, 10:]) < 1e-5
    assert rel_err(full, model(ids)) > 1e-3  # the pruning changed the function


@pytest.mark.parametrize("fmt", ["hf", "mamba_ssm"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "per-layer"])
@pytest.mark.parametrize("name", ["m1", "m2-g2"])
@torch.no_grad()
def test_save_load_round_trip(name, uniform, fmt, tmp_path):
    model = make_model(name)
    cfg = model.config
    keep = (budget.select(compute_scores("random", model), budget.uniform_keep(cfg, 0.25)) if uniform
            else uneven_keep(cfg))
    pruned = prune_model(model, keep)
    pruned.save_pretrained(str(tmp_path), format=fmt)
    loaded = perfmamba.load_model(str(tmp_path), device="cpu", backend="ref")
    assert loaded.config == pruned.config
    ids = token_ids(1, 30)
    assert torch.equal(loaded(ids), pruned(ids))


def test_bad_keep_is_a_one_line_error():
    model = make_model("m2-g2")
    cfg = model.config
    good = keep_all(cfg)
    bad = {
        "layers": good[:1],
        "range": [torch.tensor([[0, 40], [1, 2]])] + good[1:],
        "repeat": [torch.tensor([[1, 1], [1, 2]])] + good[1:],
        "groups": [torch.tensor([[1, 2]])] + good[1:],
    }
    for case, keep in bad.items():
        with pytest.raises(PerfMambaError) as err:
            prune_model(model, keep)
        assert "\n" not in str(err.value), case
