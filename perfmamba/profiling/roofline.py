"""Roofline arithmetic: pure functions of plain numbers (no torch, no I/O).

A component doing ``flops`` FLOPs, ``matmul_flops`` of them as matrix products, and moving ``nbytes`` bytes
can go no faster than
  t_compute = matmul_flops / matmul rate + (flops - matmul_flops) / vector rate
              (tensor-core work at the matmul rate, elementwise work and scans at the CUDA-core fp32 rate),
  t_memory  = nbytes / bandwidth,
and, when it needs ``launches`` kernels from a host that issues one every ``launch_s`` seconds,
  t_launch  = launches * launch_s.
Its bound: "launch" when the GPU was busy for less than ``LAUNCH_SHARE`` of the measured time or its work
is shorter than its launches (the GPU finishes faster than the host hands work out; without a GPU busy
time: when the launches alone take that share of the measured time), otherwise "compute" or "memory",
whichever floor is higher.  Its roofline fraction is max(t_compute, t_memory) / measured time (1.0 = at the roof).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

BOUNDS = ("compute", "memory", "launch")
LAUNCH_SHARE = 0.5


@dataclass(frozen=True)
class Roof:
    """The ceilings that bound a component (measured: profiling/hardware.py)."""

    matmul_flops_per_s: float
    vector_flops_per_s: float
    bytes_per_s: float
    launch_s: Optional[float] = None  # host seconds per kernel launch; None where launches are not counted


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def intensity(flops: float, nbytes: float) -> float:
    """Arithmetic intensity, FLOPs per byte."""
    return flops / nbytes if nbytes > 0 else math.nan


def rate(amount: float, seconds: float) -> float:
    """amount / seconds, NaN when the time is not positive or unknown."""
    seconds = _nan(seconds)
    return amount / seconds if seconds > 0 else math.nan


def ridge_point(peak_flops: float, peak_bw: float) -> float:
    return peak_flops / peak_bw


def attainable_flops(ai: float, peak_flops: float, peak_bw: float) -> float:
    """The classic roofline: min(peak FLOP/s, intensity * bandwidth)."""
    if ai != ai:
        return math.nan
    return min(peak_flops, ai * peak_bw)


def floors(flops: float, matmul_flops: float, nbytes: float, roof: Roof, launches: Optional[float] = None) -> dict:
    """The three lower bounds on the time, in seconds (launch is 0 when the launch count is unknown)."""
    matmul = min(max(matmul_flops, 0.0), flops)
    t_launch = 0.0
    if launches is not None and roof.launch_s is not None and launches == launches:
        t_launch = launches * roof.launch_s
    return {"compute": matmul / roof.matmul_flops_per_s + (flops - matmul) / roof.vector_flops_per_s,
            "memory": nbytes / roof.bytes_per_s, "launch": t_launch}


def classify_bound(flops: float, matmul_flops: float, nbytes: float, roof: Roof, launches: Optional[float] = None,
                   seconds: Optional[float] = None, gpu_busy_s: Optional[float] = None) -> str:
    """"compute" | "memory" | "launch" ("" for no work).  Without a measured time, the highest floor.

    Launch-bound: when the GPU's busy time is known, the GPU worked less than LAUNCH_SHARE of the measured
    time, or its work is shorter than the launches that feed it (the host cannot keep up); otherwise the
    launches alone take at least LAUNCH_SHARE of the measured time."""
    if flops <= 0 and nbytes <= 0:
        return ""
    f = floors(flops, matmul_flops, nbytes, roof, launches)
    seconds, busy = _nan(seconds), _nan(gpu_busy_s)
    if seconds == seconds and seconds > 0:
        if roof.launch_s is not None and busy == busy:
            if busy < LAUNCH_SHARE * seconds or (f["launch"] > 0 and f["launch"] > busy):
                return "launch"
        elif f["launch"] > 0 and f["launch"] >= LAUNCH_SHARE * seconds:
            return "launch"
        return "compute" if f["compute"] >= f["memory"] else "memory"
    return max(BOUNDS, key=lambda k: f[k])


def roofline_fraction(flops: float, matmul_flops: float, nbytes: float, seconds: float, roof: Roof) -> float:
    """max(t_compute, t_memory) / measured time: how close to the roof (1.0) the component runs."""
    seconds = _nan(seconds)
    if not seconds > 0:
        return math.nan
    f = floors(flops, matmul_flops, nbytes, roof)
    return max(f["compute"], f["memory"]) / seconds


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x) over points with x, y > 0 (NaN with fewer than two).

    A slope of 1 is linear scaling in the sequence length, 2 quadratic, 0 constant (e.g. decode)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
           if x is not None and y is not None and x == x and y == y and x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx
