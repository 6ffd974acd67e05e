"""The cost model: matmul FLOPs equal torch.utils.flop_counter exactly; the rest is consistent."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.models.cache import InferenceCache
from perfmamba.models.lm import MambaLM
from perfmamba.profiling import analytic
from perfmamba.profiling.components import flop_checked, profiled_components
from perfmamba.profiling.stages import block_stages, model_stages

CONFIGS = [
    Mamba1Config(d_model=48, n_layer=2, vocab_size=80, d_state=7, bias=True),
    Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, d_state_per_layer=[4, 8]),
    Mamba2Config(d_model=48, n_layer=2, vocab_size=80, d_state=10, headdim=16, ngroups=2, chunk_size=16),
]


def _counted_by_component(stages, env):
    counts = {}
    for stage in stages:
        with FlopCounterMode(display=False) as counter:
            out = stage.fn(env)
        counts[stage.component] = counts.get(stage.component, 0) + counter.get_total_flops()
        env = out
    return counts


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.family}-N{c.d_state}")
@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("scope", ["block", "model"])
@pytest.mark.parametrize("batch,seqlen", [(1, 9), (3, 40)])
@torch.inference_mode()
def test_matmul_flops_equal_flop_counter(cfg, mode, scope, batch, seqlen):
    torch.manual_seed(0)
    model = MambaLM(cfg, backend="ref").eval()
    cache = None
    if mode == "decode":
        cache = model.allocate_cache(batch)
        model(torch.randint(0, cfg.vocab_size, (batch, seqlen)), cache)
    if scope == "block":
        layer = 1
        stages = block_stages(model.backbone.layers[layer], mode, cache)
        shape = (batch, seqlen, cfg.d_model) if mode == "prefill" else (batch, cfg.d_model)
        env = {"h": torch.randn(*shape)}
    else:
        layer = 0
        stages = model_stages(model, mode, cache)
        env = {"ids": torch.randint(0, cfg.vocab_size, (batch, seqlen) if mode == "prefill" else (batch,))}
    counted = _counted_by_component(stages, env)
    costs = analytic.component_costs(cfg, scope, mode, batch, seqlen, dtype_bytes=4, layer=layer)
    checked = [c for c in profiled_components(cfg.family, scope) if flop_checked(cfg.family, c, mode)]
    assert {"in_proj", "out_proj"} <= set(checked)
    for comp in checked:
        assert costs[comp].matmul_flops == counted[comp], comp


def test_selective_scan_flops_follow_9BLDN():
    cfg = Mamba1Config(d_model=64, n_layer=1, vocab_size=10, d_state=16)
    batch, seqlen = 2, 100
    cost = analytic.component_costs(cfg, "block", "prefill", batch, seqlen, 2)["ssm"]
    scan = 9 * batch * seqlen * cfg.d_inner * cfg.d_state
    assert scan <= cost.flops <= 1.2 * scan  # + dt softplus, D skip and the fused gate per channel


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.family}-N{c.d_state}")
def test_decode_costs_do_not_grow_with_context_and_prefill_does(cfg):
    short = analytic.component_costs(cfg, "block", "decode", 2, 64, 2)
    long = analytic.component_costs(cfg, "block", "decode", 2, 4096, 2)
    assert short == long
    p1 = analytic.component_costs(cfg, "block", "prefill", 2, 64, 2)
    p2 = analytic.component_costs(cfg, "block", "prefill", 2, 128, 2)
    for comp in ("in_proj", "conv1d", "out_proj"):
        assert p2[comp].flops == 2 * p1[comp].flops
        assert p2[comp].weight_bytes == p1[comp].weight_bytes
    # decode reads and writes the carried SSM state; prefill writes the final one only
    assert long["ssm"].state_read_bytes == long["ssm"].state_write_bytes > 0
    assert p1["ssm"].state_read_bytes == 0 and p1["ssm"].state_write_bytes > 0


def test_mamba1_gate_is_costed_inside_the_scan():
    cfg = CONFIGS[0]
    costs = analytic.component_costs(cfg, "block", "prefill", 1, 32, 2)
    assert costs["gate_norm"] == analytic.Cost()
    assert costs["ssm"].act_read_bytes == 32 * (3 * cfg.d_inner + 2 * cfg.d_state) * 2  # u, dt, z, B, C


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.family}-N{c.d_state}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_cache_bytes_match_the_inference_cache(cfg, dtype):
    cache = InferenceCache.allocate(cfg, 3, dtype=dtype)
    assert analytic.state_cache_bytes(cfg, 3, dtype.itemsize) == cache.nbytes()


def test_model_costs_sum_the_layers():
    cfg = CONFIGS[1]  # per-layer state sizes
    whole = analytic.component_costs(cfg, "model", "prefill", 1, 16, 4)
    w = analytic.make_work(cfg, "prefill", 1, 16, 4)
    per_layer = [analytic.mixer_costs(cfg, i, w)["x_proj"] for i in range(cfg.n_layer)]
    assert whole["x_proj"] == per_layer[0] + per_layer[1]
    assert whole["lm_head"].matmul_flops == 2 * 16 * cfg.d_model * cfg.vocab_size


def test_whole_model_norms_are_the_fused_add_norms():
    # MambaLM fuses each residual add into the next norm: per layer the kernel reads the mixer output (the
    # embedding before layer 0, with no residual yet) and the residual, and writes both of its outputs
    cfg = Mamba1Config(d_model=16, n_layer=3, vocab_size=10, d_state=4, residual_in_fp32=True)
    batch, seqlen, act, res = 2, 5, 2, 4
    norm = analytic.component_costs(cfg, "model", "prefill", batch, seqlen, act)["norm"]
    tokens, d, norms = batch * seqlen, cfg.d_model, cfg.n_layer + 1
    with_residual = norms - 1  # every norm but layer 0's
    assert norm.weight_bytes == norms * d * act
    assert norm.act_read_bytes == norms * tokens * d * act + with_residual * tokens * d * res
    assert norm.act_write_bytes == norms * tokens * d * (act + res)
    assert norm.flops == norms * tokens * d * analytic.RMS_FLOPS + with_residual * tokens * d


def test_ssd_in_chunk_flops_follow_the_chunk_that_runs():
    # the plain-torch SSD on a CPU runs shorter chunks than the config's (ops.ref_chunk_length), the Triton
    # kernel its own step tile: the in-chunk work, 2 Q (S N + H P) matmul FLOPs a token with S score tiles
    # per chunk (one per head unless told), is counted at the Q that runs
    cfg = Mamba2Config(d_model=64, n_layer=1, vocab_size=10, d_state=16, headdim=16, ngroups=2, chunk_size=256)
    batch, seqlen = 2, 1024
    asked = analytic.component_costs(cfg, "block", "prefill", batch, seqlen, 4)["ssm"]
    ran = analytic.component_costs(cfg, "block", "prefill", batch, seqlen, 4,
                                   ssd_tiles=lambda n: (64, cfg.nheads))["ssm"]
    per_q = 2 * batch * seqlen * (cfg.nheads * cfg.d_state + cfg.nheads * cfg.headdim)
    assert asked.matmul_flops - ran.matmul_flops == (256 - 64) * per_q
    assert ran.bytes == asked.bytes  # the traffic of a fused kernel does not depend on the chunk
    # twice the score tiles (two programs per head): the C B^T term doubles, nothing else moves
    twice = analytic.component_costs(cfg, "block", "prefill", batch, seqlen, 4,
                                     ssd_tiles=lambda n: (64, 2 * cfg.nheads))["ssm"]
    assert twice.matmul_flops - ran.matmul_flops == 2 * 64 * batch * seqlen * cfg.nheads * cfg.d_state
    decode = analytic.component_costs(cfg, "block", "decode", batch, seqlen, 4,
                                      ssd_tiles=lambda n: (64, cfg.nheads))["ssm"]
    assert decode == analytic.component_costs(cfg, "block", "decode", batch, seqlen, 4)["ssm"]  # Q = 1 there


def test_ssd_tiles_are_passed_each_layers_d_state():
    # a pruned model's layers keep different state sizes, and the kernel's tile may differ with them
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=10, d_state=32, headdim=16, chunk_size=256,
                       d_state_per_layer=[32, 16])
    seen = []
    analytic.component_costs(cfg, "model", "prefill", 1, 128, 4, ssd_tiles=lambda n: seen.append(n) or (64, 4))
    assert seen == [32, 16]
