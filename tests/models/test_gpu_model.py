"""Whole models on the GPU: bf16 logits against the fp32 CPU reference, CUDA-graph decode against eager.

Skipped cleanly on machines without CUDA (CI)."""

import copy

import pytest
import torch

from perfmamba import Mamba1Config, Mamba2Config, MambaLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIGS = {
    "mamba1": Mamba1Config(d_model=256, n_layer=4, vocab_size=512, d_state=16),
    "mamba1-odd": Mamba1Config(d_model=128, n_layer=2, vocab_size=512, d_state=13),
    "mamba2": Mamba2Config(d_model=256, n_layer=4, vocab_size=512, d_state=64, headdim=32, chunk_size=64),
    "mamba2-g2": Mamba2Config(d_model=128, n_layer=2, vocab_size=512, d_state=97, headdim=32, ngroups=2,
                              chunk_size=64),
}


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(params=list(CONFIGS))
def cpu_model(request):
    torch.manual_seed(0)
    return MambaLM(CONFIGS[request.param]).eval()


@pytest.mark.parametrize("seqlen", [1, 63, 257])
def test_gpu_bf16_logits_match_cpu_reference(cpu_model, seqlen):
    """bf16 logits of the GPU model within 1e-2 of the fp32 CPU reference, or, where rounding every layer's
    activations to bf16 costs more than that over the whole model, within twice what the CPU reference
    itself loses when run in bf16 (its own rounding floor)."""
    ids = torch.randint(0, 512, (2, seqlen))
    with torch.inference_mode():
        ref = cpu_model(ids)
        ref_bf16 = copy.deepcopy(cpu_model).to(torch.bfloat16)(ids)
        gpu = MambaLM(cpu_model.config, backend="auto").cuda().to(torch.bfloat16)
        gpu.load_state_dict(cpu_model.state_dict())
        out = gpu(ids.cuda())
    assert out.shape == ref.shape
    assert rel_err(out.cpu(), ref) < max(1e-2, 2 * rel_err(ref_bf16, ref))


def test_gpu_fp32_logits_match_cpu_reference(cpu_model):
    ids = torch.randint(0, 512, (3, 300))
    with torch.inference_mode():
        ref = cpu_model(ids)
        out = MambaLM(cpu_model.config).cuda()
        out.load_state_dict(cpu_model.state_dict())
        got = out(ids.cuda())
    assert rel_err(got.cpu(), ref) < 1e-4


@pytest.mark.parametrize("batch", [1, 4, 8])  # 8: past the fused Mamba-1 step's batch limit (mamba1_step.MAX_BATCH)
def test_cuda_graph_decode_equals_eager(cpu_model, batch):
    model = MambaLM(cpu_model.config).cuda().to(torch.bfloat16)
    model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(0, 512, (batch, 17), device="cuda")
    eager = model.generate(ids, max_new_tokens=24, cuda_graph=False)
    graph = model.generate(ids, max_new_tokens=24, cuda_graph=True)
    assert torch.equal(eager, graph)
    again = model.generate(ids, max_new_tokens=24, cuda_graph=True)  # the captured graph is reused
    assert torch.equal(graph, again)


def test_cuda_graph_prefill_equals_eager(cpu_model):
    # L = 1023: mamba1's scan input (2 x 512 x 1023) lies between the padding thresholds, so the graph's
    # capture scans padded copies where the eager forward loads the rows as they are
    from perfmamba.models.cuda_graph import GraphPrefill
    model = MambaLM(cpu_model.config).cuda().to(torch.bfloat16)
    model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(0, 512, (2, 1023), device="cuda")
    with torch.inference_mode():
        eager = model(ids)
    graph = GraphPrefill(model, 2, 1023)
    assert rel_err(graph(ids), eager) < 1e-2
    other = torch.randint(0, 512, (2, 1023), device="cuda")
    with torch.inference_mode():
        assert rel_err(graph(other), model(other)) < 1e-2  # the replay reads the new input


@pytest.mark.parametrize("batch", [1, 2])
def test_decode_with_the_gemv_linears(cpu_model, batch, monkeypatch):
    # the step's in_proj / out_proj forced onto the Triton GEMV (triton/gemv.py; with autotuning off, as in
    # the tests, cuBLAS runs them): a step's logits equal cuBLAS's within bf16 rounding, and CUDA-graph
    # decode equals eager decode with it
    from perfmamba.ops.triton import gemv
    model = MambaLM(cpu_model.config).cuda().to(torch.bfloat16)
    model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(0, 512, (batch, 17), device="cuda")
    with torch.inference_mode():
        cache = model.allocate_cache(batch)
        model(ids, cache)
        gemv_cache = copy.deepcopy(cache)
        with_cublas = model.step(ids[:, -1], cache)
        monkeypatch.setattr(gemv, "gemv_configs", lambda k: [(8, min(512, gemv.next_pow2(k)), 4, 2)])
        with_gemv = model.step(ids[:, -1], gemv_cache)
    assert rel_err(with_gemv, with_cublas) < 1e-2
    eager = model.generate(ids, max_new_tokens=24, cuda_graph=False)
    assert torch.equal(model.generate(ids, max_new_tokens=24, cuda_graph=True), eager)
