"""CPU reference paths side by side: the sequential-loop scan vs the chunked plain-torch scan.

One Mamba-1 and one Mamba-2 layer (mixer) at the 130m presets' sizes, random weights, fp32, batch 1,
L in {256, 1024, 4096}.  Each backend is warmed up once and timed as the median of several runs.

    python benchmarks/bench_ref_cpu.py [--lengths 256 1024 4096] [--repeats 3]

Writes docs/benchmarks/ref-cpu.json and ref-cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from perfmamba.config import get_preset, write_json_atomic  # noqa: E402
from perfmamba.models.block import MIXERS  # noqa: E402
from perfmamba.report.environment import environment_info  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks")


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    records = []
    print(f"{'layer':<12} {'L':>6} {'loop ms':>10} {'chunked ms':>11} {'speed-up':>9} {'rel err':>9}")
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
                chunk_s = median_seconds(lambda: mixer(x), args.repeats)
            err = float((out - ref).norm() / ref.norm())
            rec = {"layer": preset, "family": cfg.family, "seqlen": seqlen, "batch": 1, "dtype": "float32",
                   "loop_ms": loop_s * 1e3, "chunked_ms": chunk_s * 1e3, "speedup": loop_s / chunk_s,
                   "rel_err": err}
            records.append(rec)
            print(f"{preset:<12} {seqlen:>6} {rec['loop_ms']:>10.1f} {rec['chunked_ms']:>11.1f} "
                  f"{rec['speedup']:>8.1f}x {err:>9.1e}", flush=True)
    env = environment_info("cpu")
    os.makedirs(OUT_DIR, exist_ok=True)
    write_json_atomic(os.path.join(OUT_DIR, "ref-cpu.json"), {"environment": env, "records": records})
    lines = [f"# CPU reference scans: sequential loop vs chunked", "",
             f"Device: {env['device']}, torch {env['torch']} ({env['torch_threads']} threads), {env['date']}, "
             f"git {env['git_revision']}. One mixer layer, random weights, fp32, batch 1, median of "
             f"{args.repeats} runs after a warm-up.", "",
             "| layer | L | loop ms | chunked ms | speed-up | rel err |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['seqlen']} | {r['loop_ms']:.1f} | {r['chunked_ms']:.1f} | {r['speedup']:.1f}x "
              f"| {r['rel_err']:.1e} |" for r in records]
    tmp = os.path.join(OUT_DIR, "ref-cpu.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(OUT_DIR, "ref-cpu.md"))


if __name__ == "__main__":
    main()
