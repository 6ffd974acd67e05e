"""Whole-layer time against state size on a CUDA GPU: does every state removed save time in the mixer?

The GPU issue asks the kernels to get faster for every state taken away, and `bench_kernels.py` times the
scan and the SSD alone, on contiguous inputs. A pruned model runs them inside its mixers, after in_proj and
the conv, whose sizes also shrink with the state. This times one `mamba-130m` and one `mamba2-130m` mixer
(random weights, bf16, replayed from a CUDA graph) at each state size, side by side:

  * mamba-130m  at N in {16, 14, 12, 8, 4};
  * mamba2-130m at N in {128, 96, 64, 56, 48, 32, 16};

each at B=1, L=16384 (the pruning issue's prefill) and B=8, L=4096 (the kernel benchmark's batch). Every
size is timed once per round, in an order rotated each round, over ``--rounds`` rounds; a time is the
median over the rounds of triton.testing.do_bench's median (CUDA events, L2 flushed before each run), and
"spread" is (slowest round - fastest round) / median.

    PYTHONPATH=. python benchmarks/bench_state_sizes.py [--out-dir docs/benchmarks] [--rounds 5]

Writes state-sizes-TAG.json and state-sizes-TAG.md (TAG: --tag, by default the GPU's model, e.g. h200).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from perfmamba.config import get_preset  # noqa: E402
from perfmamba.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from perfmamba.models.block import MIXERS  # noqa: E402
from perfmamba.models.cuda_graph import capture  # noqa: E402
from perfmamba.report.environment import device_tag, environment_info  # noqa: E402

STATE_SIZES = {"mamba-130m": (16, 14, 12, 8, 4), "mamba2-130m": (128, 96, 64, 56, 48, 32, 16)}
SHAPES = ((1, 16384), (8, 4096))  # (batch, length)


def mixer(preset: str, d_state: int):
    """One layer's mixer of ``preset`` resized to ``d_state`` states (seeded random weights, bf16, CUDA)."""
    cfg = get_preset(preset).replace(d_state=d_state)
    torch.manual_seed(0)
    return MIXERS[cfg.family](cfg, 0).cuda().to(torch.bfloat16).eval()


def time_sizes(preset: str, batch: int, seqlen: int, rounds: int) -> list[dict]:
    """One record per state size: the median ms over ``rounds`` interleaved rounds, and the spread."""
    import triton.testing
    sizes = STATE_SIZES[preset]
    d_model = get_preset(preset).d_model
    x = torch.randn(batch, seqlen, d_model, device="cuda", dtype=torch.bfloat16)
    graphs, layers = {}, []  # the layers stay referenced: a graph replays on their weights' memory
    for n in sizes:  # every graph first (compiling and tuning each size), so the rounds time replays only
        layers.append(mixer(preset, n))
        graphs[n] = capture(lambda layer=layers[-1]: layer(x), torch.device("cuda"))[0]
    per_round = {n: [] for n in sizes}
    for r in range(rounds):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for n in order:
            per_round[n].append(triton.testing.do_bench(graphs[n].replay, warmup=10, rep=100,
                                                        return_mode="median"))
    full = statistics.median(per_round[sizes[0]])
    records = []
    for n in sizes:
        ms = statistics.median(per_round[n])
        records.append({"workload": f"{preset} layer", "batch": batch, "seqlen": seqlen, "d_state": n,
                        "ms": ms, "rounds_ms": per_round[n],
                        "spread": (max(per_round[n]) - min(per_round[n])) / ms,
                        "speedup_vs_full": full / ms, "tokens_per_s": batch * seqlen / (ms / 1e3)})
        print(f"{preset} B={batch} L={seqlen} N={n}: {ms:.4f} ms ({full / ms:.3f}x of N={sizes[0]})", flush=True)
    return records


def falls_with_state(records: list[dict]) -> bool:
    """Whether the time never rises as the state shrinks (records in the order of STATE_SIZES)."""
    times = [r["ms"] for r in records]
    return all(a >= b for a, b in zip(times, times[1:]))


def write_markdown(path: str, env: dict, groups: list[list[dict]], rounds: int) -> None:
    lines = ["# One layer's time against its state size (bf16, CUDA graph)", "",
             f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
             f"{env['date']}; git {env['git_revision']}. One mixer with random weights, replayed from a CUDA "
             f"graph; the median over {rounds} interleaved rounds of triton.testing.do_bench's median. "
             "Spread: (slowest round - fastest) / median.", "",
             "| layer | batch | L | d_state | ms | vs the full state | tokens/s | spread |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group in groups:
        for r in group:
            lines.append(f"| {r['workload']} | {r['batch']} | {r['seqlen']} | {r['d_state']} | {r['ms']:.4f} | "
                         f"{r['speedup_vs_full']:.3f}x | {r['tokens_per_s'] / 1e6:.2f} M | "
                         f"{100 * r['spread']:.1f}% |")
    lines += ["", "| layer | batch | L | time never rises as the state shrinks |", "|---|---:|---:|---|"]
    for group in groups:
        first = group[0]
        verdict = "yes" if falls_with_state(group) else "NO: " + " -> ".join(f"{r['ms']:.4f}" for r in group)
        lines.append(f"| {first['workload']} | {first['batch']} | {first['seqlen']} | {verdict} |")
    write_text_atomic(path, "\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join("docs", "benchmarks"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tag", default=None, help="output file suffix (default: from the GPU's name)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_state_sizes.py needs a CUDA GPU")
    if args.rounds < 1:
        sys.exit(f"--rounds must be at least 1, got {args.rounds}")
    groups = []
    with torch.inference_mode():
        for preset in STATE_SIZES:
            for batch, seqlen in SHAPES:
                groups.append(time_sizes(preset, batch, seqlen, args.rounds))
                torch.cuda.empty_cache()
    env = environment_info("cuda")
    tag = args.tag or device_tag(torch.cuda.get_device_name())
    os.makedirs(args.out_dir, exist_ok=True)
    write_json_atomic(os.path.join(args.out_dir, f"state-sizes-{tag}.json"),
                      {"environment": env, "rounds": args.rounds, "records": [r for g in groups for r in g]})
    write_markdown(os.path.join(args.out_dir, f"state-sizes-{tag}.md"), env, groups, args.rounds)


if __name__ == "__main__":
    main()
