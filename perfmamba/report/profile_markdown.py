"""report.md of a profile run."""

from __future__ import annotations

from perfmamba.profiling.components import flop_checked
from perfmamba.profiling.records import OK, ProfileRun
from perfmamba.report import profile_tables as T
from perfmamba.report.format import human_bytes, human_count, human_seconds

NOTES = """\
## How to read this

- **Components** (one naming for timers, cost model and report): `norm` (the block's pre-norm RMSNorm and
  residual add; a whole model fuses each residual add into the next norm, as it runs, and adds the final
  norm), `in_proj`, `conv1d` (causal depthwise conv + SiLU), `x_proj` and `dt_proj` (Mamba-1 only; dt's
  bias and softplus run inside the scan), `ssm` (selective scan / SSD, with the D skip), `gate_norm`
  (Mamba-2: gated RMSNorm), `out_proj`, and for whole models `embedding` and `lm_head`. **Mamba-1's SiLU(z)
  gate is fused into the scan kernel** (as in mamba_ssm), so its time, FLOPs and bytes are in `ssm`; its
  `gate_norm` row says "in ssm". So is Mamba-1's `dt_proj` in decode, which the state-update kernel
  computes itself.
- **Time**: each component is run on its real inputs, in isolation, through the same modules and
  `perfmamba.ops` calls as the model's forward / step (a test checks that the stages reproduce the
  model's output exactly); warm-up, then the median (and 10th–90th percentiles) of the samples; short
  calls are timed over several back-to-back calls. *Whole* is the block (or model) called as one;
  *Σ parts vs whole* is how far the sum of the isolated components is from it (positive: isolated timing
  adds per-call overhead or loses overlap/caching). Shares are of the summed component time.
- **FLOPs and bytes** are analytic (`perfmamba/profiling/analytic.py` documents the model: the selective scan
  is 9·B·L·D·N FLOPs plus per-channel work; SSD is chunked with chunk length Q; bytes are the compulsory
  traffic of a fused kernel). Matmul FLOPs of the projections and the conv are checked against
  `torch.utils.flop_counter` on every run (table below).
- **Bound**: three floors under the time — compute (matmul FLOPs at the measured matmul rate plus the other
  FLOPs at the measured fp32 vector rate), memory (bytes at the measured copy bandwidth) and launch (kernels ×
  measured host time per launch; GPU only). A component is *launch*-bound when its launches take at least
  half of its measured time, else *compute*- or *memory*-bound by the higher floor. *Of roof* is that
  floor over the measured time (100% = at the roof; above 100% on a CPU means data served from caches).
- **GPU timing**: every sample is one call after an L2 flush, timed with CUDA events (like
  `triton.testing.do_bench`): component times are GPU execution times with weights read from device memory,
  and the flush hides up to ~0.1 ms of the host's launch work. The whole block pays all its launches,
  so on a GPU a negative *Σ parts vs whole* at short L is launch overhead — the GPU-busy column says how
  much of the call the GPU actually worked.
- **GPU busy** (per component): the GPU's kernel time in one call, from torch.profiler; far below the
  measured time means the GPU waited for the host.
- **Memory**: *peak mem* is the peak allocated above the inputs during one call (CUDA; n/a on a CPU),
  *activations* the analytic bytes the component writes, *state* the conv + SSM state it reads and writes.
- **Scaling**: least-squares slope of log(value) against log(L): 1 is linear, 0 constant (decode). Short
  L are often launch- or latency-bound, so the slope between the two longest L shows the asymptotic trend.
- **Launches** (CUDA): kernels per call and host vs GPU time from torch.profiler; a call whose GPU is busy
  less than half of its wall time is flagged: the GPU waits for the host to launch work.
"""


def _environment(run: ProfileRun) -> str:
    env, s, c = run.environment, run.settings, run.ceilings
    lines = ["## Environment", "",
             T.markdown_table(("what", "value"), [
                 ["device", env.get("device", "")], ["torch", env.get("torch", "")],
                 ["triton", env.get("triton") or "not installed"], ["cuda", env.get("cuda") or "-"],
                 ["python", env.get("python", "")], ["git revision", env.get("git_revision") or "unknown"],
                 ["date", env.get("date", "")], ["dtype", s.get("dtype", "")],
                 ["backend", f"{s.get('backend', '')} → {s.get('resolved_backend', '')}"],
                 ["scope", s.get("scope", "") + (f" (layer {s.get('layer')})" if s.get("scope") == "block" else "")],
                 ["timing", f"{s.get('warmup')} warm-up, {s.get('repeats')} samples of ≥ "
                            f"{human_seconds(s.get('min_sample_s') or 0)}"],
             ]), ""]
    if c:
        def value(key, fmt):
            return fmt(c[key]) if isinstance(c.get(key), (int, float)) else "-"

        dtype = c.get("dtype", "")
        rows = [["copy bandwidth", value("copy_bytes_per_s", lambda v: f"{human_count(v)}B/s")],
                ["matmul rate", value("matmul_flops_per_s", lambda v: f"{human_count(v)}FLOP/s ({dtype})")],
                ["vector rate", value("vector_flops_per_s", lambda v: f"{human_count(v)}FLOP/s (fp32, no tensor "
                                                                        "cores)")],
                ["ridge point", value("ridge_intensity", lambda v: f"{v:.1f} FLOP/B")],
                ["launch overhead", value("launch_overhead_s", lambda v: f"{human_seconds(v)} per op (host)")],
                ["measured", c.get("measured_at", "")]]
        if c.get("datasheet_source"):
            rows.append(["datasheet", c["datasheet_source"]])
        lines += ["### Machine ceilings (measured, cached per machine)", "",
                  T.markdown_table(("ceiling", "value"), rows), ""]
    return "\n".join(lines)


def _flop_check(run: ProfileRun) -> str:
    worst, n = 0.0, 0
    for r in run.components:
        counted = r.counted_matmul_flops == r.counted_matmul_flops  # not NaN
        if r.status == OK and flop_checked(r.family, r.component, r.mode) and counted:
            n += 1
            if r.matmul_flops:
                worst = max(worst, abs(r.counted_matmul_flops - r.matmul_flops) / r.matmul_flops)
    if not n:
        return ""
    return (f"**Cost-model check**: analytic matmul FLOPs vs `torch.utils.flop_counter` on {n} projection/conv "
            f"measurements: largest relative difference {worst:.2%}.\n")


def render_report(run: ProfileRun, images: list) -> str:
    s = run.settings
    out = ["# perfmamba profile", ""]
    if run.interrupted:
        out += ["> **Interrupted**: this report holds the configurations finished before Ctrl-C.", ""]
    out += [f"Models: {', '.join(s.get('models', []))}; L: {', '.join(map(str, s.get('seqlens', [])))}; "
            f"batch: {', '.join(map(str, s.get('batches', [])))}; modes: {', '.join(s.get('modes', []))}; "
            f"wall time {human_seconds(run.wall_s) if run.wall_s == run.wall_s else '-'}.", ""]
    out += [_environment(run), "## Summary", "",
            T.markdown_table(*T.drop_empty_columns(T.SUMMARY_HEADERS, T.summary_rows(run))), ""]
    failed = [c for c in run.configs if c.status != OK]
    if failed:
        out += ["Not measured: " + "; ".join(f"{c.model} {c.mode} L={c.seqlen} batch={c.batch}: {c.status}"
                                              + (f" ({c.error})" if c.error else "") for c in failed) + ".", ""]
    check = _flop_check(run)
    if check:
        out += [check]
    for img in images:
        out += [f"![{img}]({img})", ""]
    for key, confs in T.groups(run).items():
        model, family, scope, mode, batch = key
        out += [f"## {T.short_name(model)} ({family}) — {scope}, {mode}, batch {batch}", ""]
        headers, rows = T.time_by_length_rows(run, confs)
        out += ["### Time per component", "", T.markdown_table(headers, rows), ""]
        ran = [c for c in confs if c.status == OK]
        if ran:
            last = ran[-1]
            out += [f"### Costs and bounds at L={last.seqlen}", "",
                    T.markdown_table(*T.detail_rows(run, last)), "",
                    f"Whole: {human_seconds(last.whole_time_median_s)}, {human_count(last.flops)}FLOP, "
                    f"{human_bytes(last.bytes)}, state cache {human_bytes(last.state_cache_bytes)}, "
                    f"ssm share of time {T.pct(last.ssm_time_share)}, of activations "
                    f"{T.pct(last.ssm_activation_share)}, of peak memory {T.pct(last.ssm_mem_share)}.", ""]
        srows = T.scaling_rows(run, key)
        if srows[1] and len(confs) > 1:
            out += ["### Scaling with L (log-log slopes)", "", T.markdown_table(*srows), ""]
    lrows = T.launch_rows(run)
    out += ["## Launch overhead", ""]
    out += [T.markdown_table(T.LAUNCH_HEADERS, lrows) if lrows else "Not applicable on this device (CPU).", ""]
    out += [NOTES]
    return "\n".join(out)
