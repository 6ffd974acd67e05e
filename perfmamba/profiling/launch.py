"""Launch overhead: kernels per call and host vs GPU time, from torch.profiler (CUDA only).

For one call of a function (a stage, a block, a whole model):
  kernels      GPU activities it started (kernels, memcpys, memsets);
  gpu_busy_s   the union of their execution intervals;
  host_s       host seconds to issue the call (without waiting for the GPU), median of a few runs;
  wall_s       seconds from idle until its work is done, median of a few runs;
  gpu_busy_fraction = gpu_busy_s / wall_s.  Below ``IDLE_THRESHOLD`` the GPU mostly waits for the host to
  launch work: the call is flagged ``launch_bound``.
On a CPU these are not applicable (None).  Traces (``--trace``) are Chrome / Perfetto JSON files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from perfmamba.fileio import atomic_write
from perfmamba.profiling.timers import host_and_wall_time, synchronize

IDLE_THRESHOLD = 0.5
_GPU_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass
class LaunchStats:
    kernels: int
    gpu_busy_s: float
    host_s: float
    wall_s: float
    gpu_busy_fraction: float
    launch_bound: bool


def _gpu_intervals(prof) -> list:
    """[(start_ns, end_ns)] of the GPU activities recorded by ``prof``."""
    out = []
    try:
        events = prof.profiler.kineto_results.events()
        for e in events:
            if e.device_type() == torch.autograd.DeviceType.CUDA and (
                    str(e.activity_type()).lower() in _GPU_ACTIVITIES or "kernel" in str(e.activity_type()).lower()):
                out.append((e.start_ns(), e.start_ns() + e.duration_ns()))
        return out
    except AttributeError:  # a torch without kineto_results: fall back to the public event list
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                out.append((e.time_range.start * 1000, e.time_range.end * 1000))
        return out


def _union_ns(intervals: list) -> float:
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def _profiled(fn: Callable[[], object], device: torch.device, trace_path: Optional[str] = None) -> list:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    if trace_path:
        atomic_write(trace_path, prof.export_chrome_trace, suffix=".json")
    return _gpu_intervals(prof) if device.type == "cuda" else []


def kernel_stats(fn: Callable[[], object], device: torch.device) -> tuple:
    """(GPU activities started by one call of ``fn``, seconds the GPU was busy with them); (None, None) on a
    CPU."""
    if torch.device(device).type != "cuda":
        return None, None
    intervals = _profiled(fn, torch.device(device))
    return len(intervals), _union_ns(intervals) / 1e9


def launch_stats(fn: Callable[[], object], device: torch.device, repeats: int = 5,
                 trace_path: Optional[str] = None) -> Optional[LaunchStats]:
    """Launch statistics of one call (None on a CPU; the trace is still written when asked)."""
    device = torch.device(device)
    intervals = _profiled(fn, device, trace_path)
    if device.type != "cuda":
        return None
    host_s, wall_s = host_and_wall_time(fn, device, repeats)
    busy = _union_ns(intervals) / 1e9
    frac = busy / wall_s if wall_s > 0 else float("nan")
    return LaunchStats(kernels=len(intervals), gpu_busy_s=busy, host_s=host_s, wall_s=wall_s,
                       gpu_busy_fraction=frac, launch_bound=bool(frac < IDLE_THRESHOLD))
