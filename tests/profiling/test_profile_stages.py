"""The staged pipelines that the profiler times reproduce the model exactly (so they cannot drift)."""

import copy

import pytest
import torch

from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.models.lm import MambaLM
from perfmamba.profiling.components import fused_into, profiled_components
from perfmamba.profiling.stages import block_stages, model_stages, run_stages

CONFIGS = {
    "mamba1": Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=5, d_conv=3, bias=True),
    "mamba1-pruned": Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, d_state_per_layer=[3, 8]),
    "mamba2": Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=12, headdim=8, ngroups=2, chunk_size=16),
    "mamba2-untied": Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, chunk_size=8,
                                  tie_embeddings=False, conv_bias=False),
}


def _model(name):
    torch.manual_seed(0)
    model = MambaLM(CONFIGS[name], backend="ref").eval()
    with torch.no_grad():  # move every parameter off its structured init so that nothing can cancel out
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seqlen", [1, 21])
@torch.inference_mode()
def test_block_prefill_stages_equal_block_forward(name, seqlen):
    model = _model(name)
    for block in model.backbone.layers:
        x = torch.randn(2, seqlen, 32)
        assert torch.equal(run_stages(block_stages(block, "prefill"), {"h": x})["h"], block(x))


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.inference_mode()
def test_block_decode_stages_equal_block_step(name):
    model = _model(name)
    cache = model.allocate_cache(3)
    model(torch.randint(0, 64, (3, 11)), cache)
    staged_cache = copy.deepcopy(cache)
    for i, block in enumerate(model.backbone.layers):
        x = torch.randn(3, 32)
        staged = run_stages(block_stages(block, "decode", staged_cache), {"h": x})["h"]
        assert torch.equal(staged, block.step(x, cache))
        assert torch.equal(staged_cache.conv_states[i], cache.conv_states[i])
        assert torch.equal(staged_cache.ssm_states[i], cache.ssm_states[i])


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.inference_mode()
def test_model_stages_equal_model(name):
    model = _model(name)
    ids = torch.randint(0, 64, (2, 17))
    assert torch.equal(run_stages(model_stages(model, "prefill"), {"ids": ids})["logits"], model(ids))
    cache = model.allocate_cache(2)
    model(ids, cache)
    staged_cache = copy.deepcopy(cache)
    token = torch.randint(0, 64, (2,))
    staged = run_stages(model_stages(model, "decode", staged_cache), {"ids": token})["logits"]
    assert torch.equal(staged, model.step(token, cache))


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_stages_use_the_canonical_component_names(name):
    model = _model(name)
    family = CONFIGS[name].family
    for mode in ("prefill", "decode"):
        cache = model.allocate_cache(1)
        # a component fused into another's kernel has no stage of its own
        fused = {"gate_norm"} if family == "mamba1" else set()
        if family == "mamba1" and mode == "decode":
            fused.add("dt_proj")  # projected inside the state update
        assert {c for c in profiled_components(family, "model") if fused_into(family, c, mode)} == fused
        names = {s.component for s in block_stages(model.backbone.layers[0], mode, cache)}
        assert names == set(profiled_components(family, "block")) - fused
        names = {s.component for s in model_stages(model, mode, cache)}
        assert names == set(profiled_components(family, "model")) - fused
