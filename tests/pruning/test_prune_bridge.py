"""The bridge: the original-layout (compat) export computes the pruned function with the original shapes and
comes back through bridge.json; the least-squares refit lowers the layer error on held-out data; pruned
checkpoints load in transformers with the same logits."""

import pytest
import torch

import perfmamba
from perfmamba.errors import PerfMambaError
from perfmamba.pruning import bridge, budget, calibration, load_compat, pad_to_original, prune, prune_model
from perfmamba.pruning.scores import compute_scores

from prune_helpers import CONFIGS, make_model, rel_err, token_ids, twin_states, uneven_keep

NAMES = list(CONFIGS)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_padded_model_has_original_shapes_and_the_pruned_function(name):
    model = make_model(name)
    keep = uneven_keep(model.config)
    pruned = prune_model(model, keep)
    padded = pad_to_original(pruned, model.config, keep)
    assert padded.config == model.config
    assert {k: v.shape for k, v in padded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    ids = token_ids(2, 33)
    assert rel_err(padded(ids), pruned(ids)) < 1e-6
    assert torch.equal(prune_model(padded, keep)(ids), pruned(ids))  # cutting the padding again is exact


@pytest.mark.parametrize("name", ["m1", "m2-g2"])
def test_compat_checkpoint_round_trip(name, tmp_path):
    model = make_model(name)
    keep = uneven_keep(model.config)
    pruned = prune_model(model, keep)
    record = bridge.bridge_record(model.config, keep, "compat")
    bridge.export_compat(pruned, model.config, keep, str(tmp_path), record)
    back = load_compat(str(tmp_path), device="cpu", backend="ref")
    assert back.config == pruned.config
    ids = token_ids(1, 20)
    with torch.no_grad():
        assert torch.equal(back(ids), pruned(ids))
    assert bridge.read_bridge(str(tmp_path))["kept"] == [k.tolist() for k in keep]


def test_read_bridge_errors_are_one_line(tmp_path):
    with pytest.raises(PerfMambaError, match="no bridge.json"):
        bridge.read_bridge(str(tmp_path))
    (tmp_path / "bridge.json").write_text("{not json")
    with pytest.raises(PerfMambaError, match="not valid JSON"):
        bridge.read_bridge(str(tmp_path))


@pytest.mark.parametrize("name", NAMES)
def test_refit_lowers_the_heldout_layer_error(name):
    model = twin_states(make_model(name))
    cfg = model.config
    groups = 1 if cfg.family == "mamba1" else cfg.ngroups
    keep = [torch.arange(cfg.d_state // 2).repeat(groups, 1) for _ in range(cfg.n_layer)]  # one of each twin
    calib, heldout = token_ids(16, 64, seed=10), token_ids(2, 64, seed=11)
    plain = prune_model(model, keep)
    refit = prune_model(model, keep)
    record = bridge.refit_bridge(model, refit, calib)
    assert all(a < b for a, b in zip(record["calibration_relative_error_after"],
                                     record["calibration_relative_error_before"]))
    none_err = bridge.layer_output_errors(model, plain, heldout)
    refit_err = bridge.layer_output_errors(model, refit, heldout)
    assert min(none_err) > 0.1  # the pruning matters in this model
    if cfg.family == "mamba1":  # a rescaled twin and a refit D make up for the removed channel exactly
        assert max(refit_err) < 0.05 * min(none_err), (none_err, refit_err)
    else:  # the gated RMSNorm leaves a linear out_proj refit only part of the way
        assert all(r < n for r, n in zip(refit_err, none_err)), (none_err, refit_err)
        assert sum(refit_err) < 0.95 * sum(none_err), (none_err, refit_err)
    # nothing changes shape; only D and out_proj change
    for (k, a), (_, b) in zip(plain.state_dict().items(), refit.state_dict().items()):
        assert a.shape == b.shape
        assert torch.equal(a, b) or k.endswith(("out_proj.weight", ".D")), k


def test_refit_through_prune(tmp_path):
    model = make_model("m1")
    result = prune(model, "delta", 0.5, token_ids(4, 32), bridge="refit")
    assert result.refit["method"].startswith("least-squares refit")
    assert len(result.refit["calibration_relative_error_after"]) == model.config.n_layer


# ---------------------------------------------------------------------------------------- transformers
transformers = pytest.importorskip("transformers")


def _hf_class(cfg):
    return transformers.MambaForCausalLM if cfg.family == "mamba1" else transformers.Mamba2ForCausalLM


@pytest.mark.parametrize("name", NAMES)
def test_pruned_uniform_checkpoint_gives_the_same_logits_in_transformers(name, tmp_path,
                                                                        skip_unless_transformers_groups_agree):
    model = make_model(name)
    skip_unless_transformers_groups_agree(model.config)
    keep = budget.select(compute_scores("random", model, seed=1), budget.uniform_keep(model.config, 0.5))
    pruned = prune_model(model, keep)
    pruned.save_pretrained(str(tmp_path))
    theirs, info = _hf_class(model.config).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert theirs.config.state_size == model.config.d_state // 2
    ids = token_ids(2, 37)
    with torch.no_grad():
        assert rel_err(theirs.float().eval()(ids).logits, pruned(ids)) < 1e-4


@pytest.mark.parametrize("name", ["m1", "m2-g2"])
def test_compat_export_of_a_per_layer_model_loads_in_transformers(name, tmp_path, skip_unless_transformers_groups_agree):
    model = make_model(name)
    skip_unless_transformers_groups_agree(model.config)
    keep = uneven_keep(model.config)
    pruned = prune_model(model, keep)
    bridge.export_compat(pruned, model.config, keep, str(tmp_path), bridge.bridge_record(model.config, keep, "compat"))
    theirs, info = _hf_class(model.config).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert theirs.config.state_size == model.config.d_state
    ids = token_ids(2, 29)
    with torch.no_grad():
        assert rel_err(theirs.float().eval()(ids).logits, pruned(ids)) < 1e-4
    assert perfmamba.load_model(str(tmp_path), device="cpu").config == model.config


def test_calibration_text_windows(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefghij\n" * 300)
    model = make_model("m1")
    ids, desc = calibration.calibration_ids(model, str(path), "train", 3, 50)
    assert ids.shape == (3, 50) and ids.dtype == torch.int64
    assert desc["tokens"] == 150 and desc["tokenizer"] == "byte"
    with pytest.raises(PerfMambaError, match="calibration text"):
        calibration.calibration_ids(model, str(path), "validation", 10, 50)  # 5% of 3300 bytes is too short
