"""The profile sweep: models x modes x batch sizes x sequence lengths -> typed records.

For every configuration the unit (one block, or the whole model) is profiled twice over:
  * stage by stage (profiling/stages.py): each stage timed in isolation on its real inputs, its peak memory
    taken (CUDA), its matmul FLOPs counted by torch.utils.flop_counter and its kernels counted (CUDA);
  * as one call (Block.forward / Block.step / MambaLM.forward / MambaLM.step): time, peak memory, and
    launch statistics (kernels, host vs GPU time).
The analytic cost model (profiling/analytic.py) supplies FLOPs and bytes; the machine's measured ceilings
(profiling/hardware.py) turn them into achieved rates, roofline fractions and bounds.

Robustness: an out-of-memory error marks that configuration "oom" (its analytic numbers are still
recorded) and the sweep goes on; any other failure of one configuration is recorded as "error" with its
message; Ctrl-C stops the sweep and returns what was finished, marked ``interrupted``.
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from perfmamba import ops
from perfmamba.errors import PerfMambaError
from perfmamba.profiling import analytic, roofline
from perfmamba.profiling.components import SCOPES, flop_checked, fused_into, profiled_components
from perfmamba.profiling.hardware import Ceilings, get_ceilings
from perfmamba.profiling.launch import kernel_stats, launch_stats
from perfmamba.profiling.records import (ERROR, FUSED, OK, OOM, ComponentRecord, ConfigRecord, ProfileRun,
                                         ScalingRecord)
from perfmamba.profiling.stages import unit_stages, whole_call
from perfmamba.profiling.timers import TimingStats, synchronize, time_call

DEFAULT_MODELS = ("mamba-130m", "mamba2-130m")
GPU_SEQLENS = (64, 256, 1024, 4096, 16384)
CPU_SEQLENS = (64, 256)  # the CPU default: ~20 s on two idle cores (fp32, ref backend), ~1 min on busy ones
MODES = ("prefill", "decode")
# (warm-up calls, timed samples, minimum seconds per sample) by device type
TIMING_DEFAULTS = {"cuda": (3, 20, 1e-3), "cpu": (1, 3, 2e-3)}


@dataclass
class SweepSettings:
    """What to profile; ``None`` / "auto" fields take device-dependent defaults in ``resolve``."""

    models: list = field(default_factory=lambda: list(DEFAULT_MODELS))
    seqlens: Optional[list] = None
    batches: list = field(default_factory=lambda: [1])
    mode: str = "both"  # prefill | decode | both
    scope: str = "block"  # block | model
    layer: int = 0
    dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on a CPU
    device: str = "auto"
    backend: str = "auto"
    repeats: Optional[int] = None
    warmup: Optional[int] = None
    min_sample_s: Optional[float] = None
    threads: Optional[int] = None  # CPU intra-op threads (torch.set_num_threads); None: torch's default
    trace_dir: Optional[str] = None
    remeasure_ceilings: bool = False
    count_flops: bool = True


@dataclass
class Resolved:
    settings: SweepSettings
    device: torch.device
    dtype: torch.dtype
    modes: tuple
    seqlens: tuple
    batches: tuple
    warmup: int
    repeats: int
    min_sample_s: float
    backend: str  # concrete: ref | loop | triton

    def describe(self) -> dict:
        s = self.settings
        return {"models": list(s.models), "seqlens": list(self.seqlens), "batches": list(self.batches),
                "modes": list(self.modes), "scope": s.scope, "layer": s.layer, "dtype": _dtype_name(self.dtype),
                "device": str(self.device), "backend": s.backend, "resolved_backend": self.backend,
                "warmup": self.warmup, "repeats": self.repeats, "min_sample_s": self.min_sample_s,
                "threads": torch.get_num_threads(), "l2_flush": self.device.type == "cuda",
                "trace": bool(s.trace_dir)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _positive_ints(values, what: str) -> tuple:
    out = []
    for v in values:
        text = str(v).strip()
        if not text.isdigit() or int(text) < 1:
            raise PerfMambaError(f"{what} must be positive integers, got {v!r}")
        out.append(int(text))
    if not out:
        raise PerfMambaError(f"give at least one value for {what}")
    return tuple(sorted(set(out)))


def resolve(settings: SweepSettings) -> Resolved:
    """Validate everything before any work starts; each problem is a one-line PerfMambaError."""
    from perfmamba.api import _resolve_dtype, resolve_device

    try:
        device = resolve_device(settings.device)
    except RuntimeError:  # torch's own message lists every device type it knows
        raise PerfMambaError(f"unknown device {settings.device!r}; use auto, cpu, cuda or cuda:N") from None
    if settings.dtype in (None, "auto"):
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _resolve_dtype(settings.dtype)
    if settings.mode not in MODES + ("both",):
        raise PerfMambaError(f"unknown mode {settings.mode!r}; choose prefill, decode or both")
    modes = MODES if settings.mode == "both" else (settings.mode,)
    if settings.scope not in SCOPES:
        raise PerfMambaError(f"unknown scope {settings.scope!r}; choose {' or '.join(SCOPES)}")
    seqlens = _positive_ints(settings.seqlens if settings.seqlens else
                             (GPU_SEQLENS if device.type == "cuda" else CPU_SEQLENS), "sequence lengths")
    batches = _positive_ints(settings.batches, "batch sizes")
    warmup, repeats, min_sample = TIMING_DEFAULTS[device.type if device.type in TIMING_DEFAULTS else "cpu"]
    warmup = warmup if settings.warmup is None else settings.warmup
    repeats = repeats if settings.repeats is None else settings.repeats
    min_sample = min_sample if settings.min_sample_s is None else settings.min_sample_s
    if not isinstance(repeats, int) or repeats < 1:
        raise PerfMambaError(f"repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise PerfMambaError(f"warmup must be a non-negative integer, got {warmup!r}")
    if not settings.models:
        raise PerfMambaError("give at least one model (a preset name or a checkpoint directory)")
    if not isinstance(settings.layer, int) or settings.layer < 0:
        raise PerfMambaError(f"layer must be a non-negative integer, got {settings.layer!r}")
    for name in settings.models:
        _check_model_name(name, settings.layer)
    if settings.threads is not None and (not isinstance(settings.threads, int) or settings.threads < 1):
        raise PerfMambaError(f"threads must be a positive integer, got {settings.threads!r}")
    backend = ops.resolve_backend(settings.backend, device)
    return Resolved(settings, device, dtype, modes, seqlens, batches, warmup, repeats, min_sample, backend)


# ---------------------------------------------------------------------------------------------- inputs
def _make_inputs(model, scope: str, mode: str, batch: int, seqlen: int, layer: int):
    """(unit, cache, env) for one configuration; decode caches hold the states after ``seqlen`` tokens."""
    cfg = model.config
    weight = model.backbone.embedding.weight
    dev, dtype = weight.device, weight.dtype
    gen = torch.Generator(device=dev).manual_seed(1234)
    cache = None
    if scope == "block":
        unit = model.backbone.layers[layer]
        if mode == "decode":
            cache = model.allocate_cache(batch)
            unit(torch.randn(batch, seqlen, cfg.d_model, device=dev, dtype=dtype, generator=gen), cache)
            cache.seqlen_offset = seqlen
        shape = (batch, seqlen, cfg.d_model) if mode == "prefill" else (batch, cfg.d_model)
        return unit, cache, {"h": torch.randn(*shape, device=dev, dtype=dtype, generator=gen)}
    ids = torch.randint(0, cfg.vocab_size, (batch, seqlen), device=dev, generator=gen)
    if mode == "decode":
        cache = model.allocate_cache(batch)
        x = model.backbone.embedding(ids)  # the prompt through the blocks fills the cache (no head needed)
        for block in model.backbone.layers:
            x = block(x, cache)
        del x
        cache.seqlen_offset = seqlen
        ids = torch.randint(0, cfg.vocab_size, (batch,), device=dev, generator=gen)
    return model, cache, {"ids": ids}


# ---------------------------------------------------------------------------------------------- measuring
def _peak_delta(fn: Callable, device: torch.device) -> float:
    """Peak bytes allocated above the current allocation during one call (CUDA), outputs included."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return float(peak)


def _counted_flops(fn: Callable) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass
class Measured:
    times: dict  # component -> TimingStats
    peaks: dict  # component -> bytes (CUDA)
    kernels: dict  # component -> count (CUDA)
    gpu_times: dict  # component -> seconds the GPU was busy in one call (CUDA)
    counted: dict  # component -> matmul FLOPs counted by torch.utils.flop_counter
    whole: TimingStats
    whole_peak: float
    launch: object  # LaunchStats | None
    trace_file: str


def _measure(model, r: Resolved, mode: str, batch: int, seqlen: int, trace_path: Optional[str]) -> Measured:
    s, dev = r.settings, r.device
    cuda = dev.type == "cuda"
    with torch.inference_mode():
        unit, cache, env = _make_inputs(model, s.scope, mode, batch, seqlen, s.layer)
        inputs = env
        stages = unit_stages(unit, s.scope, mode, cache)
        times, peaks, counted = {}, defaultdict(float), defaultdict(float)
        kernels, gpu_times = defaultdict(float), defaultdict(float)
        kernels_of_kind = {}  # every layer launches the same kernels: profile them on the first one
        for stage in stages:
            call = (lambda st, e: lambda: st.fn(e))(stage, env)
            t, out = time_call(call, dev, r.warmup, r.repeats, r.min_sample_s, keep_output=True)
            times[stage.component] = times[stage.component] + t if stage.component in times else t
            if s.count_flops and flop_checked(model.config.family, stage.component, mode):
                counted[stage.component] += _counted_flops(call)
            if cuda:
                peaks[stage.component] = max(peaks[stage.component], _peak_delta(call, dev))
                if stage.kind not in kernels_of_kind:
                    kernels_of_kind[stage.kind] = kernel_stats(call, dev)
                n_kernels, busy = kernels_of_kind[stage.kind]
                kernels[stage.component] += n_kernels
                gpu_times[stage.component] += busy
            env = out  # the stage's output is the next stage's input
        del env, out
        whole = whole_call(unit, s.scope, mode, inputs, cache)  # same inputs and cache as the stages
        whole_t = time_call(whole, dev, r.warmup, r.repeats, r.min_sample_s)
        whole_peak = _peak_delta(whole, dev) if cuda else math.nan
        stats = launch_stats(whole, dev, trace_path=trace_path) if (cuda or trace_path) else None
    return Measured(times, dict(peaks), dict(kernels), dict(gpu_times), dict(counted), whole_t, whole_peak, stats,
                    trace_path or "")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- records
def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def profile_config(model, name: str, r: Resolved, ceilings: Ceilings, mode: str, batch: int, seqlen: int,
                   trace_path: Optional[str] = None) -> tuple:
    """(ConfigRecord, [ComponentRecord]) for one configuration; never raises for OOM or a failing op."""
    status, error, m = OK, "", None
    try:
        m = _measure(model, r, mode, batch, seqlen, trace_path)
    except torch.OutOfMemoryError:
        status, error = OOM, "out of memory"
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one failing configuration must not end the sweep
        status, error = ERROR, _one_line(e)
    if status != OK:
        _free(r.device)
    return build_records(model.config, name, r, ceilings, mode, batch, seqlen, status, error, m)


def build_records(cfg, name: str, r: Resolved, ceilings: Ceilings, mode: str, batch: int, seqlen: int,
                  status: str, error: str, m: Optional[Measured]) -> tuple:
    """Analytic numbers always; measured ones (and what derives from them) when ``m`` is given."""
    s = r.settings
    dtype_bytes = torch.tensor([], dtype=r.dtype).element_size()
    # the SSD's in-chunk work depends on the chunk the backend runs, which is not the config's chunk_size
    # (64 steps on a CPU, the kernel's tile on a GPU): count what ran (ops.ssd_tiles)
    ssd_tiles = None
    if cfg.family == "mamba2":
        def ssd_tiles(n_state):
            return ops.ssd_tiles(r.backend, cfg.chunk_size, batch, seqlen, cfg.nheads, cfg.headdim, n_state, r.device,
                                 r.dtype)
    costs = analytic.component_costs(cfg, s.scope, mode, batch, seqlen, dtype_bytes, layer=s.layer,
                                     ssd_tiles=ssd_tiles)
    base = dict(model=name, family=cfg.family, scope=s.scope, mode=mode, seqlen=seqlen, batch=batch)
    roof = ceilings.roof(with_launches=r.device.type == "cuda")  # kernel launches are counted on a GPU only
    names = profiled_components(cfg.family, s.scope)
    comp_sum = sum(m.times[c].median_s for c in names if c in m.times) if m else math.nan
    components = []
    for c in names:
        cost = costs[c]
        rec = ComponentRecord(**base, component=c, status=status,
                              fused_into=fused_into(cfg.family, c, mode) or "",
                              flops=cost.flops, matmul_flops=cost.matmul_flops, bytes=cost.bytes,
                              weight_bytes=cost.weight_bytes, act_read_bytes=cost.act_read_bytes,
                              act_write_bytes=cost.act_write_bytes, state_read_bytes=cost.state_read_bytes,
                              state_write_bytes=cost.state_write_bytes, activation_bytes=cost.act_write_bytes,
                              intensity=roofline.intensity(cost.flops, cost.bytes))
        if m is not None and c not in m.times:  # its work runs inside another component's kernel
            rec.status = FUSED
            rec.time_median_s = rec.time_p10_s = rec.time_p90_s = rec.time_min_s = rec.time_share = 0.0
        elif m is not None:
            t = m.times[c]
            rec.time_median_s, rec.time_p10_s, rec.time_p90_s, rec.time_min_s = t.median_s, t.p10_s, t.p90_s, t.min_s
            rec.time_share = t.median_s / comp_sum if comp_sum > 0 else math.nan
            checked = s.count_flops and flop_checked(cfg.family, c, mode)
            counted = m.counted.get(c, math.nan) if checked else math.nan
            # 0 with work to do: a custom (Triton) kernel, invisible to the counter -- nothing to compare
            rec.counted_matmul_flops = math.nan if counted == 0 and cost.matmul_flops > 0 else counted
            rec.achieved_flops_per_s = roofline.rate(cost.flops, t.median_s)
            rec.achieved_bytes_per_s = roofline.rate(cost.bytes, t.median_s)
            rec.roofline_fraction = roofline.roofline_fraction(cost.flops, cost.matmul_flops, cost.bytes, t.median_s,
                                                               roof)
            rec.peak_mem_bytes = m.peaks.get(c, math.nan)
            rec.kernels = m.kernels.get(c, math.nan)
            rec.gpu_time_s = m.gpu_times.get(c, math.nan)
            rec.bound = roofline.classify_bound(cost.flops, cost.matmul_flops, cost.bytes, roof, m.kernels.get(c),
                                                t.median_s, m.gpu_times.get(c))
        components.append(rec)

    total = analytic.Cost()
    for cost in costs.values():
        total = total + cost
    layers = [s.layer] if s.scope == "block" else None
    conf = ConfigRecord(**base, status=status, error=error, flops=total.flops, bytes=total.bytes,
                        intensity=roofline.intensity(total.flops, total.bytes), weight_bytes=total.weight_bytes,
                        activation_bytes=total.act_write_bytes,
                        state_cache_bytes=float(analytic.state_cache_bytes(cfg, batch, dtype_bytes, layers)))
    ssm_act = costs["ssm"].act_write_bytes
    conf.ssm_activation_share = ssm_act / total.act_write_bytes if total.act_write_bytes else math.nan
    if m is not None:
        w = m.whole
        conf.whole_time_median_s, conf.whole_time_p10_s, conf.whole_time_p90_s = w.median_s, w.p10_s, w.p90_s
        conf.whole_time_min_s = w.min_s
        conf.whole_repeats = w.repeats
        conf.components_sum_s = comp_sum
        conf.sum_vs_whole = comp_sum / w.median_s - 1 if w.median_s > 0 else math.nan
        conf.achieved_flops_per_s = roofline.rate(total.flops, w.median_s)
        conf.achieved_bytes_per_s = roofline.rate(total.bytes, w.median_s)
        span = seqlen if mode == "prefill" else 1
        conf.tokens_per_s = roofline.rate(batch * span, w.median_s)
        conf.ssm_time_share = m.times["ssm"].median_s / comp_sum if comp_sum > 0 else math.nan
        conf.peak_mem_bytes = m.whole_peak
        if m.whole_peak == m.whole_peak and m.whole_peak > 0:
            conf.ssm_mem_share = m.peaks.get("ssm", math.nan) / m.whole_peak
        launch = m.launch
        if launch is not None:
            conf.kernels, conf.host_s, conf.gpu_busy_s = launch.kernels, launch.host_s, launch.gpu_busy_s
            conf.wall_s, conf.gpu_busy_fraction = launch.wall_s, launch.gpu_busy_fraction
            conf.launch_bound = launch.launch_bound
        if launch is not None and launch.launch_bound:
            conf.bound = "launch"  # the GPU was busy less than half of the call's wall time
        else:
            conf.bound = roofline.classify_bound(total.flops, total.matmul_flops, total.bytes,
                                                 ceilings.roof(with_launches=False), seconds=w.median_s)
        conf.trace_file = os.path.basename(m.trace_file) if m.trace_file else ""
    return conf, components


def scaling_records(run: ProfileRun) -> list:
    """Log-log slopes against L per (model, scope, mode, batch, component), over configurations that ran."""
    groups = defaultdict(list)
    for rec in run.components:
        if rec.status in (OK, FUSED):
            groups[(rec.model, rec.family, rec.scope, rec.mode, rec.batch, rec.component)].append(
                (rec.seqlen, rec.time_median_s, rec.peak_mem_bytes, rec.activation_bytes, rec.flops))
    for conf in run.configs:
        if conf.status == OK:
            groups[(conf.model, conf.family, conf.scope, conf.mode, conf.batch, "whole")].append(
                (conf.seqlen, conf.whole_time_median_s, conf.peak_mem_bytes, conf.activation_bytes, conf.flops))
    out = []
    for (model, family, scope, mode, batch, comp), pts in groups.items():
        pts.sort()
        xs = [p[0] for p in pts]
        out.append(ScalingRecord(model=model, family=family, scope=scope, mode=mode, batch=batch, component=comp,
                                 n_points=len(pts), seqlen_min=xs[0], seqlen_max=xs[-1],
                                 time_slope=roofline.loglog_slope(xs, [p[1] for p in pts]),
                                 time_slope_tail=roofline.loglog_slope(xs[-2:], [p[1] for p in pts[-2:]]),
                                 peak_mem_slope=roofline.loglog_slope(xs, [p[2] for p in pts]),
                                 activation_slope=roofline.loglog_slope(xs, [p[3] for p in pts]),
                                 flops_slope=roofline.loglog_slope(xs, [p[4] for p in pts])))
    return out


# ---------------------------------------------------------------------------------------------- the sweep
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(name)) or name)


def environment(device: torch.device) -> dict:
    from perfmamba.report.environment import environment_info, git_revision
    env = environment_info(device)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["git_revision"] = git_revision(repo)
    env["platform"] = __import__("platform").platform()
    return env


def _check_model_name(name: str, layer: int) -> None:
    """Fail before any work on a name that load_model would reject later, or a layer that does not exist."""
    from perfmamba.api import config_of
    hub_id = name.count("/") == 1 and not name.startswith((".", "/")) and not os.path.exists(name)
    if hub_id:
        return  # fetched (or refused, in one line) by load_model
    n_layer = config_of(name).n_layer  # refuses a name that is no preset, demo model or directory
    if layer >= n_layer:
        raise PerfMambaError(f"--layer {layer} does not exist: {name} has {n_layer} layers (0..{n_layer - 1})")


def _model_info(model, name: str, r: Resolved) -> dict:
    cfg = model.config
    return {"name": name, "family": cfg.family, "config": cfg.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": _dtype_name(r.dtype),
            "backend": r.settings.backend, "resolved_backend": r.backend}


def run_sweep(settings: SweepSettings, progress: Optional[Callable] = None,
              on_config: Optional[Callable] = None, resolved: Optional[Resolved] = None) -> ProfileRun:
    """Profile every configuration.  ``progress(done, total, description)`` is called before each one and
    at the end; ``on_config(run)`` after each one (to save partial results)."""
    r = resolved or resolve(settings)
    threads_before = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _sweep(settings, r, progress, on_config)
    finally:
        torch.set_num_threads(threads_before)


def _grid(r: Resolved) -> list:
    return [(mode, batch, seqlen) for mode in r.modes for batch in r.batches for seqlen in r.seqlens]


def _sweep(settings: SweepSettings, r: Resolved, progress, on_config) -> ProfileRun:
    from perfmamba.api import config_of, load_model

    t0 = time.perf_counter()
    run = ProfileRun(settings=r.describe(), environment=environment(r.device), started_at=_now())
    total = len(settings.models) * len(_grid(r))
    done = 0
    report = progress or (lambda *a: None)
    try:
        report(done, total, "measuring machine ceilings")
        ceilings = get_ceilings(r.device, r.dtype, remeasure=settings.remeasure_ceilings)
        run.ceilings = ceilings.to_dict()
        for name in settings.models:
            report(done, total, f"loading {name}")
            try:
                model = load_model(name, device=r.device, dtype=r.dtype, backend=settings.backend)
            except torch.OutOfMemoryError:
                _free(r.device)
                cfg = config_of(name)
                for mode, batch, seqlen in _grid(r):
                    conf, comps = build_records(cfg, name, r, ceilings, mode, batch, seqlen, OOM,
                                                "out of memory loading the model", None)
                    run.configs.append(conf)
                    run.components.extend(comps)
                    done += 1
                if on_config:
                    on_config(run)
                continue
            run.models.append(_model_info(model, name, r))
            for mode, batch, seqlen in _grid(r):
                report(done, total, f"{name} {mode} L={seqlen} batch={batch}")
                trace = None
                if settings.trace_dir:
                    os.makedirs(settings.trace_dir, exist_ok=True)
                    trace = os.path.join(settings.trace_dir,
                                         f"trace_{_safe(name)}_{settings.scope}_{mode}_L{seqlen}_B{batch}.json")
                conf, comps = profile_config(model, name, r, ceilings, mode, batch, seqlen, trace)
                run.configs.append(conf)
                run.components.extend(comps)
                done += 1
                if on_config:
                    on_config(run)
            del model
            _free(r.device)
        report(done, total, "done")
    except KeyboardInterrupt:
        run.interrupted = True
    run.scaling = scaling_records(run)
    run.finished_at = _now()
    run.wall_s = time.perf_counter() - t0
    return run
