"""CPU reference paths side by side: the sequential-loop scans vs the plain-torch paths that "ref" runs.

One Mamba-1 and one Mamba-2 layer (mixer) at the 130m presets' sizes, random weights, fp32, batch 1,
L in {256, 1024, 4096}, in inference mode.  Each backend is warmed up once and timed as the median of
several runs.  Beside the whole layer: the scan op alone on the layer's own inputs -- the loop; the
chunked form (Mamba-1: the closed form "ref" runs where autograd differentiates it; Mamba-2: ``ssd_ref`` at
the config's chunk_size); and the form "ref" runs in inference on a CPU (Mamba-1: the blocked step-by-step
scan, ``perfmamba/ops/scan_blocked.py``; Mamba-2: ``ssd_ref`` in ``ops.CPU_REF_CHUNK``-step chunks) -- and
the layer's projections alone (in_proj, x_proj, dt_proj, out_proj: the time no scan can remove).

    python benchmarks/bench_ref_cpu.py [--lengths 256 1024 4096] [--repeats 3]

Writes docs/benchmarks/ref-cpu.json and ref-cpu.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from perfmamba import ops  # noqa: E402
from perfmamba.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from perfmamba.profiling.timers import time_call  # noqa: E402
from perfmamba.config import get_preset  # noqa: E402
from perfmamba.models.block import MIXERS  # noqa: E402
from perfmamba.ops.scan_chunked import selective_scan_chunked  # noqa: E402
from perfmamba.ops.scan_ref import ssd_ref  # noqa: E402
from perfmamba.report.environment import environment_info  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks")


def median_seconds(fn, repeats: int) -> float:
    """One warm-up call, then the median of ``repeats`` single calls."""
    return time_call(fn, "cpu", warmup=1, repeats=repeats, min_sample_s=0.0).median_s


class _ScanInputs(Exception):
    """Raised by the capturing stand-in to stop the layer right after its scan's inputs are known."""


def capture_scan_call(mixer, x):
    """The (args, kwargs) the layer passes to its scan op, captured by running it up to that call."""
    name = "selective_scan" if isinstance(mixer, MIXERS["mamba1"]) else "ssd"
    captured = {}

    def stand_in(*args, **kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise _ScanInputs

    original = getattr(ops, name)
    setattr(ops, name, stand_in)
    try:
        mixer(x)
    except _ScanInputs:
        pass
    finally:
        setattr(ops, name, original)
    return getattr(ops, name), captured["args"], captured["kwargs"]


def time_parts(mixer, x, repeats):
    """Scan op alone (loop, chunked, and what "ref" runs in inference on a CPU) on the layer's own inputs,
    and the layer's projections alone."""
    with torch.inference_mode():
        scan, args, kwargs = capture_scan_call(mixer, x)
        kwargs = {k: v for k, v in kwargs.items() if k != "backend"}
        loop_s = median_seconds(lambda: scan(*args, **kwargs, backend="loop"), repeats)
        ref_s = median_seconds(lambda: scan(*args, **kwargs, backend="ref"), repeats)
        # the chunked form called by name: Mamba-1's closed form, Mamba-2's SSD at the config's chunk_size
        if scan is ops.selective_scan:
            plain = {k: v for k, v in kwargs.items() if k not in ("length", "out")}
            chunk_s = median_seconds(lambda: selective_scan_chunked(*args, **plain), repeats)
        else:
            chunk_s = median_seconds(lambda: ssd_ref(*args, **kwargs), repeats)
        inner = mixer.d_inner

        def projections():
            h = mixer.in_proj(x)
            if hasattr(mixer, "x_proj"):
                dbl = mixer.x_proj(h[..., :inner])
                mixer.dt_proj(dbl[..., :mixer.dt_rank])
            mixer.out_proj(h[..., :inner])
        proj_s = median_seconds(projections, repeats)
    return loop_s, chunk_s, ref_s, proj_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    records = []
    print(f"{'layer':<12} {'L':>6} {'loop ms':>10} {'ref ms':>11} {'speed-up':>9} {'rel err':>9} "
          f"{'scan loop':>10} {'scan chunked':>12} {'scan as ref':>12} {'proj ms':>8}")
    for preset in ("mamba-130m", "mamba2-130m"):
        cfg = get_preset(preset)
        mixer = MIXERS[cfg.family](cfg, layer_idx=0).eval()
        for seqlen in args.lengths:
            x = torch.randn(1, seqlen, cfg.d_model)
            with torch.inference_mode():
                mixer.backend = "loop"
                ref = mixer(x)
                loop_s = median_seconds(lambda: mixer(x), args.repeats)
                mixer.backend = "ref"
                out = mixer(x)
                ref_s = median_seconds(lambda: mixer(x), args.repeats)
            err = float((out - ref).norm() / ref.norm())
            scan_loop_s, scan_chunk_s, scan_ref_s, proj_s = time_parts(mixer, x, args.repeats)
            rec = {"layer": preset, "family": cfg.family, "seqlen": seqlen, "batch": 1, "dtype": "float32",
                   "loop_ms": loop_s * 1e3, "ref_ms": ref_s * 1e3, "speedup": loop_s / ref_s,
                   "rel_err": err, "scan_loop_ms": scan_loop_s * 1e3, "scan_chunked_ms": scan_chunk_s * 1e3,
                   "scan_ref_ms": scan_ref_s * 1e3,
                   "projections_ms": proj_s * 1e3}
            records.append(rec)
            print(f"{preset:<12} {seqlen:>6} {rec['loop_ms']:>10.1f} {rec['ref_ms']:>11.1f} "
                  f"{rec['speedup']:>8.1f}x {err:>9.1e} {rec['scan_loop_ms']:>10.1f} {rec['scan_chunked_ms']:>12.1f} "
                  f"{rec['scan_ref_ms']:>12.1f} {rec['projections_ms']:>8.1f}", flush=True)
    env = environment_info("cpu")
    os.makedirs(OUT_DIR, exist_ok=True)
    write_json_atomic(os.path.join(OUT_DIR, "ref-cpu.json"), {"environment": env, "records": records})
    lines = ["# CPU reference scans: sequential loop vs what `ref` runs", "",
             f"Device: {env['device']}, torch {env['torch']} ({env['torch_threads']} threads), {env['date']}, "
             f"git {env['git_revision']}. One mixer layer, random weights, fp32, batch 1, median of "
             f"{args.repeats} runs after a warm-up.", "",
             "Layer columns: the mixer on `backend=\"loop\"` and on `backend=\"ref\"` in inference mode (Mamba-1: "
             "the blocked scan; Mamba-2: the chunked SSD in `ops.CPU_REF_CHUNK`-step chunks). Scan columns: the "
             "SSM op alone on the layer's own inputs -- the loop; chunked (Mamba-1: the closed form `ref` runs "
             "where autograd needs it; Mamba-2: the SSD at the config's chunk_size, 256); as `ref` runs it on a "
             "CPU -- and the layer's matmuls alone.",
             "", "| layer | L | loop ms | ref ms | speed-up | rel err | scan loop ms | scan chunked ms | "
             "scan as ref ms | projections ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['seqlen']} | {r['loop_ms']:.1f} | {r['ref_ms']:.1f} | {r['speedup']:.1f}x "
              f"| {r['rel_err']:.1e} | {r['scan_loop_ms']:.1f} | {r['scan_chunked_ms']:.1f} | "
              f"{r['scan_ref_ms']:.1f} | "
              f"{r['projections_ms']:.1f} |" for r in records]
    write_text_atomic(os.path.join(OUT_DIR, "ref-cpu.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
