"""Timing: CUDA events on a GPU, perf_counter + synchronize elsewhere; warm-up, medians and quantiles.

``time_call(fn, device)`` runs ``fn`` a few times to warm up (Triton compiles and autotunes there, the
allocator settles), then takes ``repeats`` samples, each a per-call time; the record keeps the median, the
10th/90th percentiles, min and max.  On a GPU every sample is one call after an L2 flush, timed with CUDA
events; on a CPU, calls shorter than ``min_sample_s`` are timed over several back-to-back calls, which
keeps timer overhead out of the number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

MAX_INNER = 1000


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class TimingStats:
    """Per-call seconds over ``repeats`` samples of ``inner`` back-to-back calls each."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float
    repeats: int
    inner: int

    @classmethod
    def from_samples(cls, samples: Sequence[float], inner: int = 1) -> "TimingStats":
        return cls(median_s=quantile(samples, 0.5), p10_s=quantile(samples, 0.1), p90_s=quantile(samples, 0.9),
                   min_s=min(samples) if samples else math.nan, max_s=max(samples) if samples else math.nan,
                   repeats=len(samples), inner=inner)

    @classmethod
    def zero(cls) -> "TimingStats":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the samples."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else math.nan

    def __add__(self, other: "TimingStats") -> "TimingStats":
        """Sum of two sequential parts (medians and quantiles added: an approximation for the quantiles)."""
        return TimingStats(self.median_s + other.median_s, self.p10_s + other.p10_s, self.p90_s + other.p90_s,
                           self.min_s + other.min_s, self.max_s + other.max_s,
                           max(self.repeats, other.repeats), max(self.inner, other.inner))


_FLUSH = {}


def l2_flush_buffer(device: torch.device):
    """A buffer twice the GPU's L2 size (at least 256 MiB): zeroing it evicts what earlier calls left in L2."""
    key = str(device)
    if key not in _FLUSH:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (50 << 20)
        _FLUSH[key] = torch.empty(max(256 << 20, 2 * l2), dtype=torch.uint8, device=device)
    return _FLUSH[key]


def _sample(fn: Callable[[], object], device: torch.device, inner: int, flush: bool) -> tuple:
    """(seconds for ``inner`` back-to-back calls from idle to all work finished, the last call's output)."""
    out = None
    if device.type == "cuda":
        if flush:
            l2_flush_buffer(device).zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def time_call(fn: Callable[[], object], device: torch.device | str, warmup: int = 2, repeats: int = 5,
              min_sample_s: float = 1e-3, flush_l2: Optional[bool] = None, keep_output: bool = False):
    """TimingStats of ``fn`` (and its last output when ``keep_output``).

    On a GPU the L2 cache is flushed before every sample (``flush_l2``, default on for CUDA), each sample
    being one call timed with CUDA events, as triton.testing.do_bench does: a component then reads its
    weights from device memory, as it does inside a whole model whose weights do not fit in L2.  Elsewhere
    (and with ``flush_l2=False``) calls shorter than ``min_sample_s`` are timed in back-to-back groups.
    """
    device = torch.device(device)
    flush = device.type == "cuda" if flush_l2 is None else (flush_l2 and device.type == "cuda")
    out = None
    for _ in range(warmup):
        out = fn()
    synchronize(device)
    first, out = _sample(fn, device, 1, flush)
    samples = []
    if flush or first >= min_sample_s:
        inner = 1
        samples.append(first)  # already a valid one-call sample
    else:  # size the groups from the fastest of a few single calls (one call alone is easily disturbed)
        for _ in range(2):
            t, out = _sample(fn, device, 1, flush)
            first = min(first, t)
        inner = min(MAX_INNER, max(1, math.ceil(min_sample_s / max(first, 1e-9))))
    while len(samples) < max(repeats, 1):
        t, out = _sample(fn, device, inner, flush)
        samples.append(t / inner)
    stats = TimingStats.from_samples(samples, inner)
    return (stats, out) if keep_output else stats


def host_and_wall_time(fn: Callable[[], object], device: torch.device | str, repeats: int = 5) -> tuple:
    """(median host seconds to issue ``fn``, median wall seconds until its work is done), from idle."""
    device = torch.device(device)
    host, wall = [], []
    for _ in range(max(repeats, 1)):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        synchronize(device)
        t2 = time.perf_counter()
        host.append(t1 - t0)
        wall.append(t2 - t0)
    return quantile(host, 0.5), quantile(wall, 0.5)
