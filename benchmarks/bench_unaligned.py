"""GPU benchmark of sequence lengths that are not multiples of 16 (bf16, CUDA), side by side in one run.

1. ``scan``: the Mamba-1 tile scan (N=16) on inputs laid out as the mixer hands them over (u and z views of
   one (2D, Bsz, L) buffer, B and C rows of x_proj's output), at odd L: the rows as they are
   (``realign=False``), on padded copies (``padded_copy``, forced at every size), the kernel alone on
   inputs padded beforehand, and the default rule (``PAD_FROM_ELEMENTS`` eagerly,
   ``PAD_FROM_ELEMENTS_REPLAYED`` inside a graph's capture).  Device time per call from a CUDA graph of
   ten calls, and eager time per call (50 calls back to back, the host's launches included).
2. ``lm``: mamba-130m's prefill (B=1, last-token logits, random weights) at aligned and unaligned L, with
   the mixer's ``STEP_MULTIPLE`` at 1 (no padding), 16 and 64, the prompt padded once by the model
   (``MambaLM.prompt_steps``, the default), and at 64 also padded by each mixer in turn (what the model
   did before): CUDA-graph replay and eager.

    PERFMAMBA_AUTOTUNE=0 python benchmarks/bench_unaligned.py [--parts scan lm] [--out-dir DIR]

Writes unaligned.json and unaligned.md into --out-dir (default docs/benchmarks/unaligned-<tag>).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from perfmamba.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from perfmamba.report.environment import device_tag, environment_info, git_revision  # noqa: E402

SCAN_SHAPES = ([(1, 1536, L) for L in (127, 255, 511, 1023, 2047, 4095, 16383)]
               + [(8, 1536, L) for L in (127, 511, 2047)] + [(1, 5120, 2047), (2, 5120, 1023)])
LM_LENGTHS = (1024, 1000, 2048, 2040, 2047, 16384, 16383)


def eager_ms(fn, reps=50):
    """ms per call of ``fn`` called ``reps`` times back to back (host launches included)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / reps


def mixer_layout_inputs(bsz, dim, seqlen, n_state=16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, device="cuda")  # noqa: E731
    xz = r(2 * dim, bsz, seqlen).bfloat16().permute(1, 0, 2)  # in_proj's output, (Bsz, 2D, L) viewed
    x_dbl = r(bsz, 48 + 2 * n_state, seqlen).bfloat16()
    args = (xz[:, :dim], (r(bsz, dim, seqlen) * 0.5).bfloat16(), -torch.exp(r(dim, n_state) * 0.5),
            x_dbl[:, 48:48 + n_state], x_dbl[:, 48 + n_state:])
    return args, dict(D=r(dim), z=xz[:, dim:], delta_bias=r(dim) * 0.1, delta_softplus=True,
                      return_last_state=True)


def run_scan(records):
    from bench_kernels import bench_device, rel_err
    from perfmamba.ops.triton import selective_scan as scan_mod
    rule = (scan_mod.PAD_FROM_ELEMENTS, scan_mod.PAD_FROM_ELEMENTS_REPLAYED)

    def thresholds(eager, replayed):
        scan_mod.PAD_FROM_ELEMENTS, scan_mod.PAD_FROM_ELEMENTS_REPLAYED = eager, replayed

    for bsz, dim, seqlen in SCAN_SHAPES:
        args, kw = mixer_layout_inputs(bsz, dim, seqlen)
        grown = seqlen + (-seqlen % 16)
        pre = [scan_mod.padded_copy(t, grown) if t.dim() == 3 else t for t in args]
        pre_kw = dict(kw, z=scan_mod.padded_copy(kw["z"], grown))
        calls = {"as_is": (rule, lambda: scan_mod.selective_scan_triton(*args, **kw, realign=False)),
                 "padded": ((0, 0), lambda: scan_mod.selective_scan_triton(*args, **kw)),
                 "kernel_alone": (rule, lambda: scan_mod.selective_scan_triton(*pre, **pre_kw)),
                 "default": (rule, lambda: scan_mod.selective_scan_triton(*args, **kw))}
        rec = dict(part="scan", bsz=bsz, dim=dim, seqlen=seqlen, elements=bsz * dim * seqlen)
        try:
            reference = None
            for name, (limits, fn) in calls.items():
                thresholds(*limits)
                y, h = fn()
                if reference is None:
                    reference = (y, h)
                elif name != "kernel_alone":
                    rec[f"{name}_rel_err"] = max(rel_err(y, reference[0]), rel_err(h, reference[1]))
                rec[f"{name}_graph_ms"] = bench_device(fn)
                rec[f"{name}_eager_ms"] = eager_ms(fn)
        finally:
            thresholds(*rule)
        records.append(rec)
        print(rec, flush=True)


def run_lm(records):
    from bench_models import prefill_ms
    from perfmamba.api import load_model
    from perfmamba.models import mamba1
    default = mamba1.STEP_MULTIPLE
    model = load_model("mamba-130m", device="cuda", dtype="bfloat16")
    try:
        for seqlen in LM_LENGTHS:
            ids = torch.randint(0, model.config.vocab_size, (1, seqlen), device="cuda")
            for multiple, padded_by in ((1, "model"), (16, "model"), (64, "model"), (64, "mixer")):
                mamba1.STEP_MULTIPLE = multiple
                if padded_by == "mixer":  # the model runs the prompt as it is; each mixer pads its own input
                    model.prompt_steps = lambda n, cache=None: n
                eager, replay = prefill_ms(model, ids, 1)
                model.__dict__.pop("prompt_steps", None)
                rec = dict(part="lm", preset="mamba-130m", bsz=1, seqlen=seqlen, logits_to_keep=1,
                           step_multiple=multiple, padded_by=padded_by,
                           default=multiple == default and padded_by == "model", graph_ms=replay, eager_ms=eager)
                records.append(rec)
                print(rec, flush=True)
    finally:
        mamba1.STEP_MULTIPLE = default
        model.__dict__.pop("prompt_steps", None)


def markdown(records, meta) -> str:
    lines = ["# Sequence lengths that are not multiples of 16 (bf16)", "",
             f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; {meta['date']}; "
             f"git {meta['git']}; kernel tiles "
             f"{'autotuned' if meta['autotune'] else 'untuned (PERFMAMBA_AUTOTUNE=0)'}.", ""]
    scan = [r for r in records if r["part"] == "scan"]
    if scan:
        lines += ["Mamba-1 tile scan, N=16, mixer layout; ms per call, device time (graph) and eager:", "",
                  "| B | D | L | M elements | as is | padded | kernel alone | default | eager: as is | padded | default |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in scan:
            lines.append(f"| {r['bsz']} | {r['dim']} | {r['seqlen']} | {r['elements'] / 2**20:.2f} | "
                         f"{r['as_is_graph_ms']:.4f} | {r['padded_graph_ms']:.4f} | {r['kernel_alone_graph_ms']:.4f} | "
                         f"{r['default_graph_ms']:.4f} | {r['as_is_eager_ms']:.4f} | {r['padded_eager_ms']:.4f} | "
                         f"{r['default_eager_ms']:.4f} |")
        lines.append("")
    lm = [r for r in records if r["part"] == "lm"]
    if lm:
        lines += ["mamba-130m prefill, B=1, last-token logits; ms (graph replay / eager) by STEP_MULTIPLE, the "
                  "prompt padded once by the model (the default) or by each mixer:", "",
                  "| L | 1 | 16 | 64 | 64, each mixer |", "|---:|---|---|---|---|"]
        for seqlen in dict.fromkeys(r["seqlen"] for r in lm):
            cells = {(r["step_multiple"], r.get("padded_by", "mixer")): f"{r['graph_ms']:.3f} / {r['eager_ms']:.3f}"
                     for r in lm if r["seqlen"] == seqlen}
            row = [cells.get(key, "") for key in ((1, "model"), (16, "model"), (64, "model"), (64, "mixer"))]
            lines.append(f"| {seqlen} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("scan", "lm"), default=["scan", "lm"])
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_unaligned.py: needs a CUDA GPU (the kernels it times are GPU kernels); none is visible")
    env = environment_info("cuda")
    # with PERFMAMBA_AUTOTUNE=0 every call runs each kernel's first tile: the scan's comparison is then of
    # one kernel, but the model's times are those of untuned kernels, so the header says which it was
    meta = dict(device=env["device"], torch=env["torch"], triton=env["triton"], git=git_revision(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                autotune=os.environ.get("PERFMAMBA_AUTOTUNE", "1") != "0")
    out_dir = args.out_dir or os.path.join("docs", "benchmarks", f"unaligned-{device_tag(env['device'])}")
    records = []
    if "scan" in args.parts:
        run_scan(records)
    if "lm" in args.parts:
        run_lm(records)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "unaligned.json"), [dict(r, **meta) for r in records])
    write_text_atomic(os.path.join(out_dir, "unaligned.md"), markdown(records, meta))
    print(markdown(records, meta))


if __name__ == "__main__":
    main()
