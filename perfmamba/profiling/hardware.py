"""Machine ceilings: what this device can do, measured once and cached per machine, plus datasheet peaks.

Measured (what the roofline and the bound judgements use):
  * copy bandwidth: ``dst.copy_(src)`` of a buffer much larger than the caches, bytes read + written / time;
  * matmul rate: a square matrix product in the profiled dtype, 2*n^3 / time (tensor cores on a GPU);
  * vector rate: the same in fp32 with TF32 off, which runs on the CUDA cores of a GPU: the ceiling of
    elementwise work and scans (on a CPU it is the fp32 matmul rate);
  * launch overhead: the host time per tiny op when many are issued back to back (the floor under which a
    kernel's cost is its launch, not its work).
Each is the best of several timed repeats (a ceiling is what the machine can reach).

The cache lives in ``$PERFMAMBA_CACHE_DIR`` (default ``~/.cache/perfmamba``) as
``ceilings-<device hash>.json``, one entry per dtype; the hash covers the device name, its memory, the CPU
model and thread count, and the torch and CUDA versions, so a different machine or stack measures afresh.

Hardware constants live only in this module (DATASHEETS), each with its source.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from perfmamba.fileio import write_json_atomic
from perfmamba.profiling.timers import synchronize

# Dense peaks from vendor datasheets (no sparsity).  Matched by substring of torch.cuda.get_device_name.
DATASHEETS = (
    # (name substring, {dtype: FLOP/s}, memory bytes/s, source)
    ("H100 80GB HBM3", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}, 3.35e12,
     "NVIDIA H100 Tensor Core GPU datasheet, SXM5: 989 TFLOP/s BF16 dense, 67 TFLOP/s FP32, 3.35 TB/s HBM3"),
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12}, 2.0e12,
     "NVIDIA H100 Tensor Core GPU datasheet, PCIe: 756 TFLOP/s BF16 dense, 51 TFLOP/s FP32, 2.0 TB/s"),
    ("H100 NVL", {"bfloat16": 835e12, "float16": 835e12, "float32": 60e12}, 3.9e12,
     "NVIDIA H100 NVL datasheet: 835 TFLOP/s BF16 dense, 60 TFLOP/s FP32, 3.9 TB/s HBM3"),
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}, 4.8e12,
     "NVIDIA H200 Tensor Core GPU datasheet, SXM: 989 TFLOP/s BF16 dense, 67 TFLOP/s FP32, 4.8 TB/s HBM3e"),
    ("A100-SXM4-80GB", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}, 2.039e12,
     "NVIDIA A100 datasheet, SXM4 80GB: 312 TFLOP/s BF16 dense, 19.5 TFLOP/s FP32, 2,039 GB/s HBM2e"),
    ("A100-SXM4-40GB", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}, 1.555e12,
     "NVIDIA A100 datasheet, SXM4 40GB: 312 TFLOP/s BF16 dense, 19.5 TFLOP/s FP32, 1,555 GB/s HBM2"),
    ("A100 80GB PCIe", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}, 1.935e12,
     "NVIDIA A100 datasheet, PCIe 80GB: 312 TFLOP/s BF16 dense, 19.5 TFLOP/s FP32, 1,935 GB/s HBM2e"),
)

# Sizes of the measurements: (copy bytes, matmul n) per device type.
_COPY_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}
_MATMUL_N = {"cuda": 8192, "cpu": 1024}
_VECTOR_N = {"cuda": 4096, "cpu": 1024}
_LAUNCH_OPS = 2000
CEILINGS_VERSION = 2


@dataclass
class Ceilings:
    """Measured ceilings of one device for one dtype (plain numbers), plus the datasheet's when known."""

    device: str
    device_key: str
    dtype: str
    copy_bytes_per_s: float
    matmul_flops_per_s: float
    vector_flops_per_s: float
    launch_overhead_s: float
    measured_at: str
    method: dict = field(default_factory=dict)
    datasheet_flops_per_s: Optional[float] = None
    datasheet_bytes_per_s: Optional[float] = None
    datasheet_source: Optional[str] = None

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte above which a kernel is compute-bound on this machine."""
        return self.matmul_flops_per_s / self.copy_bytes_per_s

    def roof(self, with_launches: bool = True):
        from perfmamba.profiling.roofline import Roof
        return Roof(self.matmul_flops_per_s, self.vector_flops_per_s, self.copy_bytes_per_s,
                    self.launch_overhead_s if with_launches else None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ridge_intensity"] = self.ridge_intensity
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Ceilings":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------- identity
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict:
    """What identifies the machine for the cache (and is reported)."""
    d = {"type": device.type, "torch": torch.__version__, "cpu": _cpu_model(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        d.update(name=props.name, memory=props.total_memory, capability=f"{props.major}.{props.minor}",
                 multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        d.update(name=f"CPU: {d['cpu']} ({os.cpu_count()} logical cores, {d['threads']} torch threads)")
    return d


def device_key(device: torch.device) -> str:
    desc = json.dumps(device_description(device), sort_keys=True)
    return hashlib.sha1(desc.encode()).hexdigest()[:12]


def datasheet(device: torch.device, dtype: torch.dtype):
    """(FLOP/s, bytes/s, source) from DATASHEETS, or (None, None, None) for an unlisted device."""
    if device.type != "cuda":
        return None, None, None
    name = torch.cuda.get_device_name(device)
    dt = str(dtype).replace("torch.", "")
    for sub, flops, bw, source in DATASHEETS:
        if sub in name:
            return flops.get(dt), bw, source
    return None, None, None


# ---------------------------------------------------------------------------------------------- measuring
def _best_time(fn, device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> float:
    nbytes = nbytes or _COPY_BYTES[device.type]
    if device.type == "cuda":
        nbytes = min(nbytes, torch.cuda.mem_get_info(device)[0] // 4)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), device, repeats)
    return 2.0 * nbytes / t


def measure_matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    n = n or _MATMUL_N[device.type]
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    inner = 5 if device.type == "cuda" else 1  # several products per timing amortise the sync on a GPU
    t = _best_time(lambda: [torch.mm(a, b) for _ in range(inner)], device, repeats) / inner
    return 2.0 * n ** 3 / t


def measure_vector_rate(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """fp32 matrix products with TF32 off: CUDA-core (non-tensor-core) FLOP/s on a GPU."""
    n = n or _VECTOR_N[device.type]
    if device.type != "cuda":
        return measure_matmul_rate(device, torch.float32, n, repeats)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return measure_matmul_rate(device, torch.float32, n, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def measure_launch_overhead(device: torch.device, ops: int = _LAUNCH_OPS) -> float:
    """Host seconds per tiny op issued back to back (kernel launch + framework dispatch)."""
    x = torch.zeros(1, device=device)

    def issue():
        for _ in range(ops):
            x.add_(1.0)

    return _best_time(issue, device, 3) / ops


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> Ceilings:
    flops, bw, source = datasheet(device, dtype)
    return Ceilings(
        device=device_description(device)["name"], device_key=device_key(device),
        dtype=str(dtype).replace("torch.", ""),
        copy_bytes_per_s=measure_copy_bandwidth(device), matmul_flops_per_s=measure_matmul_rate(device, dtype),
        vector_flops_per_s=measure_vector_rate(device), launch_overhead_s=measure_launch_overhead(device),
        measured_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        method={"copy_bytes": _COPY_BYTES[device.type], "matmul_n": _MATMUL_N[device.type],
                "vector_n": _VECTOR_N[device.type],
                "launch_ops": _LAUNCH_OPS, "statistic": "best of repeats"},
        datasheet_flops_per_s=flops, datasheet_bytes_per_s=bw, datasheet_source=source)


# ---------------------------------------------------------------------------------------------- cache
def cache_dir() -> str:
    return os.environ.get("PERFMAMBA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "perfmamba")


def cache_path(device: torch.device) -> str:
    return os.path.join(cache_dir(), f"ceilings-{device_key(device)}.json")


def get_ceilings(device: torch.device | str, dtype: torch.dtype, remeasure: bool = False) -> Ceilings:
    """The cached ceilings of this machine for ``dtype``; measured (a few seconds) on first use."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    path = cache_path(device)
    key = str(dtype).replace("torch.", "")
    entries = {}
    try:
        with open(path) as f:
            stored = json.load(f)
        if stored.get("version") == CEILINGS_VERSION:
            entries = stored.get("by_dtype", {})
    except (OSError, ValueError):
        pass
    if key in entries and not remeasure:
        return Ceilings.from_dict(entries[key])
    ceilings = measure_ceilings(device, dtype)
    entries[key] = ceilings.to_dict()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, {"version": CEILINGS_VERSION, "device": device_description(device),
                                 "by_dtype": entries})
    except OSError:
        pass  # a read-only home still profiles; it just measures again next time
    return ceilings
