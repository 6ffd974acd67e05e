"""GPU benchmark of whole layers and whole models, side by side in one run (bf16, CUDA).

1. One `mamba-130m` / `mamba2-130m` layer at B=1, L=4096: ours (Triton; eager and replayed from a CUDA graph)
   vs transformers' plain-torch mixer (eager, as users run it) on the same weights; time ratio and peak
   memory.
2. Whole 130m LMs, batch 1, prefill at L in {1024, 16384}: eager and CUDA-graph captured, with every
   position's logits and with the last position's only (as generate runs it); and at L in {1000, 16383},
   lengths that are not multiples of 16, with the last position's only.
3. Decode per token (after a 128-token prompt), batch 1, 2 and 16: eager and CUDA graph; at batches 1 and 2
   also the graph with every linear left to cuBLAS (PERFMAMBA_GEMV=0), beside ours (``ops.linear``).
mamba_ssm's models are timed beside ours when `mamba_ssm` happens to be importable (never required).

    python benchmarks/bench_models.py [--out docs/benchmarks] [--tag h200]

Writes models-<tag>.json and models-<tag>.md (tag: by default the GPU's model, e.g. h100 or h200).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from perfmamba.api import load_model  # noqa: E402
from perfmamba.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from perfmamba.profiling.timers import time_call  # noqa: E402
from perfmamba.config import get_preset  # noqa: E402
from perfmamba.models.block import MIXERS  # noqa: E402
from perfmamba.models.cuda_graph import GraphPrefill, capture  # noqa: E402
from perfmamba.report.environment import device_tag, environment_info  # noqa: E402


def cuda_median_ms(fn, warmup: int = 3, repeats: int = 20) -> float:
    """Median over repeats of CUDA-event time around one call of ``fn`` (after warm-up), in ms."""
    return time_call(fn, "cuda", warmup=warmup, repeats=repeats).median_s * 1e3


@torch.inference_mode()
def prefill_ms(model, ids, keep: int, repeats: int = 20) -> tuple[float, float]:
    """(eager ms, CUDA-graph replay ms) of a prefill of ``ids`` keeping the last ``keep`` positions' logits
    (0: all)."""
    eager_ms = cuda_median_ms(lambda: model.forward_unchecked(ids, None, keep), repeats=repeats)
    graph = GraphPrefill(model, ids.shape[0], ids.shape[1], logits_to_keep=keep)
    graph_ms = cuda_median_ms(lambda: graph(ids), repeats=repeats)
    del graph
    return eager_ms, graph_ms


def peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def graphed(fn):
    """``fn`` captured once in a CUDA graph; returns the replay (our layer's time without launch overhead:
    an eager layer call is 10 to 20 kernel launches, each with Python-side cost)."""
    return capture(fn, "cuda")[0].replay


def hf_mixer(preset: str, ours):
    """transformers' mixer for the same config, loaded with our layer's weights."""
    import transformers
    cfg = get_preset(preset)
    hf_cfg = getattr(transformers, "MambaConfig" if cfg.family == "mamba1" else "Mamba2Config")(**cfg.to_hf_dict())
    module = transformers.models.mamba.modeling_mamba if cfg.family == "mamba1" else \
        transformers.models.mamba2.modeling_mamba2
    cls = module.MambaMixer if cfg.family == "mamba1" else module.Mamba2Mixer
    mixer = cls(hf_cfg, layer_idx=0).cuda().to(torch.bfloat16).eval()
    mixer.load_state_dict(ours.state_dict())
    return mixer


def bench_layers(records, repeats):
    for preset in ("mamba-130m", "mamba2-130m"):
        cfg = get_preset(preset)
        torch.manual_seed(0)
        ours = MIXERS[cfg.family](cfg, 0).cuda().to(torch.bfloat16).eval()
        x = torch.randn(1, 4096, cfg.d_model, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            eager_ms = cuda_median_ms(lambda: ours(x), repeats=repeats)
            graph_ms = cuda_median_ms(graphed(lambda: ours(x)), repeats=repeats)
            ours_ms = min(eager_ms, graph_ms)
            ours_mb = peak_mb(lambda: ours(x))
            rec = {"workload": f"{preset} layer prefill", "batch": 1, "seqlen": 4096, "ours_ms": ours_ms,
                   "eager_ms": eager_ms, "graph_ms": graph_ms, "ours_peak_mb": ours_mb}
            try:
                ref = hf_mixer(preset, ours)
                y_ref, y = ref(x), ours(x)
                rec["rel_err_vs_reference"] = float((y.float() - y_ref.float()).norm() / y_ref.float().norm())
                rec["reference"] = "transformers plain-torch mixer"
                rec["reference_ms"] = cuda_median_ms(lambda: ref(x), warmup=1, repeats=3)
                rec["reference_peak_mb"] = peak_mb(lambda: ref(x))
                rec["speedup"] = rec["reference_ms"] / ours_ms
                rec["speedup_eager"] = rec["reference_ms"] / eager_ms
            except ImportError:
                rec["reference"] = "transformers not installed"
        records.append(rec)
        print(rec, flush=True)


def bench_prefill(records, model, name, repeats, ssm_model=None):
    """Prefill at L = 1024 and 16384, twice: with the logits of every position (a scoring forward, what
    mamba_ssm's and transformers' models return by default) and with the last position's only (what
    ``generate`` runs: ``logits_to_keep=1``, mamba_ssm's ``num_last_tokens=1``).  Then prompts whose length
    is not a multiple of 16 (1000 and 16383, last-token logits), which the Mamba-1 mixer runs as padded
    steps (``mamba1.padded_steps``)."""
    cases = [(1024, 0), (1024, 1), (16384, 0), (16384, 1), (1000, 1), (16383, 1)]
    for seqlen, keep in cases:
        ids = torch.randint(0, model.config.vocab_size, (1, seqlen), device="cuda")
        label = "LM prefill, last-token logits" if keep else "LM prefill"
        eager_ms, graph_ms = prefill_ms(model, ids, keep, repeats)
        rec = {"workload": f"{name} {label}", "batch": 1, "seqlen": seqlen, "logits_to_keep": keep,
               "eager_ms": eager_ms, "ours_ms": min(eager_ms, graph_ms), "graph_ms": graph_ms,
               "tokens_per_s": seqlen / (min(eager_ms, graph_ms) / 1e3)}
        if ssm_model is not None:
            with torch.inference_mode():
                rec["reference"] = "mamba_ssm"
                rec["reference_ms"] = cuda_median_ms(lambda: ssm_model(ids, num_last_tokens=keep),
                                                     repeats=repeats)
        records.append(rec)
        print(rec, flush=True)


def per_token_ms(model, prompt, use_graph: bool, tokens: int) -> float:
    """Median over 3 rounds of one decode step's ms: (prefill + N+1 tokens) - (prefill + 1 token), over N."""
    ms = []
    for _ in range(3):
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        short_start = torch.cuda.Event(enable_timing=True)
        short_start.record()
        model.generate(prompt, max_new_tokens=1, cuda_graph=use_graph)
        start.record()
        model.generate(prompt, max_new_tokens=tokens + 1, cuda_graph=use_graph)
        stop.record()
        stop.synchronize()
        ms.append((start.elapsed_time(stop) - short_start.elapsed_time(start)) / tokens)
    return statistics.median(ms)


def graph_ms_with_cublas_linears(model, prompt, tokens: int) -> float:
    """Graph decode with every linear left to cuBLAS (PERFMAMBA_GEMV=0), captured into a graph of its own;
    the model's own captured decoders are put back after."""
    decoders = model.__dict__.pop("_graph_decoders", {})
    os.environ["PERFMAMBA_GEMV"] = "0"
    try:
        model.generate(prompt, max_new_tokens=8, cuda_graph=True)  # captures with cuBLAS linears
        return per_token_ms(model, prompt, True, tokens)
    finally:
        del os.environ["PERFMAMBA_GEMV"]
        model.__dict__["_graph_decoders"] = decoders


def bench_decode(records, model, name, tokens=64):
    from perfmamba.ops.triton.gemv import MAX_ROWS
    for batch in (1, 2, 16):
        prompt = torch.randint(0, model.config.vocab_size, (batch, 128), device="cuda")
        rec = {"workload": f"{name} LM decode", "batch": batch, "prompt": 128}
        for mode, use_graph in (("eager", False), ("graph", True)):
            model.generate(prompt, max_new_tokens=8, cuda_graph=use_graph)  # warm-up (and capture)
            rec[f"{mode}_ms_per_token"] = per_token_ms(model, prompt, use_graph, tokens)
        rec["ours_ms"] = rec["graph_ms_per_token"]
        if batch <= MAX_ROWS:  # where ops.linear may take the GEMV: the same graph with cuBLAS, side by side
            rec["reference"] = "graph, cuBLAS linears"
            rec["reference_ms"] = graph_ms_with_cublas_linears(model, prompt, tokens)
        rec["state_cache_bytes"] = model.allocate_cache(batch).nbytes()
        records.append(rec)
        print(rec, flush=True)


def mamba_ssm_model(cfg):
    """mamba_ssm's LM with random weights, when the package is importable (timing reference only)."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except ImportError:
        return None
    ssm_cfg = cfg.to_mamba_ssm_dict()
    return MambaLMHeadModel(MambaConfig(**{k: v for k, v in ssm_cfg.items() if k != "norm_epsilon"}),
                            device="cuda", dtype=torch.bfloat16).eval()


def write_markdown(path, env, records):
    lines = ["# Layers and whole models on the GPU (bf16)", "",
             f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
             f"{env['date']}; git {env['git_revision']}. Medians of CUDA-event timings after warm-up.", "",
             "| workload | batch | L | ours ms | eager ms | graph ms | reference | reference ms | ratio | peak MB |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in records:
        ref_ms = r.get("reference_ms")
        ratio = f"{ref_ms / r['ours_ms']:.1f}x" if ref_ms else ""
        eager = r.get("eager_ms", r.get("eager_ms_per_token"))
        graph = r.get("graph_ms", r.get("graph_ms_per_token"))
        peak = r.get("ours_peak_mb")
        lines.append(
            f"| {r['workload']} | {r['batch']} | {r.get('seqlen', '1 (decode)')} | {r['ours_ms']:.3f} | "
            f"{'' if eager is None else f'{eager:.3f}'} | {'' if graph is None else f'{graph:.3f}'} | "
            f"{r.get('reference', '')} | {'' if ref_ms is None else f'{ref_ms:.2f}'} | {ratio} | "
            f"{'' if peak is None else f'{peak:.0f}'} |")
    write_text_atomic(path, "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks"))
    parser.add_argument("--tag", default=None, help="output file suffix (default: from the GPU's name)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_models.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    records = []
    bench_layers(records, args.repeats)
    for preset in ("mamba-130m", "mamba2-130m"):
        model = load_model(preset, device="cuda", dtype="bfloat16")
        bench_prefill(records, model, preset, args.repeats, mamba_ssm_model(model.config))
        bench_decode(records, model, preset)
        del model
        torch.cuda.empty_cache()
    env = environment_info("cuda")
    args.tag = args.tag or device_tag(torch.cuda.get_device_name())
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, f"models-{args.tag}.json"), {"environment": env, "records": records})
    write_markdown(os.path.join(args.out, f"models-{args.tag}.md"), env, records)


if __name__ == "__main__":
    main()
