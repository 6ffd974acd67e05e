"""Typed records of a profile run (plain numbers: seconds, FLOPs, bytes), and their JSON round trip.

NaN means "not measured / not applicable" (e.g. peak memory on a CPU); in results.json it is written as
null and read back as NaN.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from perfmamba.errors import PerfMambaError
from perfmamba.fileio import read_json

NAN = math.nan
RESULTS_FILE = "results.json"
RESULTS_VERSION = 1

# Status of a configuration or component.
OK, FUSED, OOM, ERROR = "ok", "fused", "oom", "error"


def _nan_field():
    return field(default=NAN)


@dataclass
class ComponentRecord:
    """One component of one configuration (model x scope x mode x L x batch)."""

    model: str
    family: str
    scope: str  # "block" | "model"
    mode: str  # "prefill" | "decode"
    seqlen: int
    batch: int
    component: str
    status: str = OK  # ok | fused | oom | error
    fused_into: str = ""
    # measured time (per call)
    time_median_s: float = _nan_field()
    time_p10_s: float = _nan_field()
    time_p90_s: float = _nan_field()
    time_min_s: float = _nan_field()
    time_share: float = _nan_field()  # of the sum of the components' medians
    # analytic work (profiling/analytic.py)
    flops: float = _nan_field()
    matmul_flops: float = _nan_field()
    counted_matmul_flops: float = _nan_field()  # torch.utils.flop_counter on the same stages
    bytes: float = _nan_field()
    weight_bytes: float = _nan_field()
    act_read_bytes: float = _nan_field()
    act_write_bytes: float = _nan_field()
    state_read_bytes: float = _nan_field()
    state_write_bytes: float = _nan_field()
    # derived
    intensity: float = _nan_field()
    achieved_flops_per_s: float = _nan_field()
    achieved_bytes_per_s: float = _nan_field()
    roofline_fraction: float = _nan_field()
    bound: str = ""  # compute | memory | launch
    # memory
    peak_mem_bytes: float = _nan_field()  # measured peak allocated above the stage's inputs (CUDA only)
    activation_bytes: float = _nan_field()  # analytic: bytes of activations the component writes
    # launches (CUDA only; profiled on the first layer, the same kernels for every layer)
    kernels: float = _nan_field()
    gpu_time_s: float = _nan_field()  # GPU busy time of one call (torch.profiler), vs time_median_s


@dataclass
class ConfigRecord:
    """One configuration: the whole unit (block, or model with scope "model") timed as one, and totals."""

    model: str
    family: str
    scope: str
    mode: str
    seqlen: int
    batch: int
    status: str = OK
    error: str = ""
    whole_time_median_s: float = _nan_field()
    whole_time_p10_s: float = _nan_field()
    whole_time_p90_s: float = _nan_field()
    whole_time_min_s: float = _nan_field()
    whole_repeats: int = 0
    components_sum_s: float = _nan_field()
    sum_vs_whole: float = _nan_field()  # components_sum / whole - 1
    flops: float = _nan_field()
    bytes: float = _nan_field()
    intensity: float = _nan_field()
    achieved_flops_per_s: float = _nan_field()
    achieved_bytes_per_s: float = _nan_field()
    tokens_per_s: float = _nan_field()
    bound: str = ""
    peak_mem_bytes: float = _nan_field()  # measured peak above the inputs during one whole call (CUDA)
    activation_bytes: float = _nan_field()
    state_cache_bytes: float = _nan_field()
    weight_bytes: float = _nan_field()
    ssm_time_share: float = _nan_field()  # ssm / sum of components
    ssm_mem_share: float = _nan_field()  # measured ssm peak / whole peak (CUDA)
    ssm_activation_share: float = _nan_field()  # analytic ssm activation bytes / all
    kernels: float = _nan_field()
    host_s: float = _nan_field()
    gpu_busy_s: float = _nan_field()
    wall_s: float = _nan_field()
    gpu_busy_fraction: float = _nan_field()
    launch_bound: Optional[bool] = None
    trace_file: str = ""


@dataclass
class ScalingRecord:
    """Log-log slopes against L of one component (or "whole") over the lengths that ran."""

    model: str
    family: str
    scope: str
    mode: str
    batch: int
    component: str
    n_points: int = 0
    seqlen_min: int = 0
    seqlen_max: int = 0
    time_slope: float = _nan_field()
    time_slope_tail: float = _nan_field()  # between the two longest L that ran (the asymptotic trend)
    peak_mem_slope: float = _nan_field()
    activation_slope: float = _nan_field()
    flops_slope: float = _nan_field()


@dataclass
class ProfileRun:
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    ceilings: dict = field(default_factory=dict)
    models: list = field(default_factory=list)  # per model: name, family, config, parameters, backend
    configs: list = field(default_factory=list)  # ConfigRecord
    components: list = field(default_factory=list)  # ComponentRecord
    scaling: list = field(default_factory=list)  # ScalingRecord
    interrupted: bool = False
    started_at: str = ""
    finished_at: str = ""
    wall_s: float = _nan_field()

    # ---------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = {"version": RESULTS_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("configs", "components", "scaling"):
                value = [dataclasses.asdict(r) for r in value]
            d[f.name] = value
        return _json_safe(d)

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileRun":
        kinds = {"configs": ConfigRecord, "components": ComponentRecord, "scaling": ScalingRecord}
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            value = d[f.name]
            if f.name in kinds:
                value = [_record_from_dict(kinds[f.name], r) for r in value]
            elif f.name == "wall_s":
                value = NAN if value is None else value
            kwargs[f.name] = value
        return cls(**kwargs)

    def component_rows(self, **match) -> list:
        return [r for r in self.components if all(getattr(r, k) == v for k, v in match.items())]


def _json_safe(obj):
    """NaN / inf -> None so that results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _record_from_dict(cls, d: dict):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        if value is None and f.type in ("float", float):
            value = NAN
        kwargs[f.name] = value
    return cls(**kwargs)


def load_run(path: str) -> ProfileRun:
    """A run from its output directory (or its results.json); a missing or damaged file is one line."""
    file = os.path.join(path, RESULTS_FILE) if os.path.isdir(path) else path
    d = read_json(file, missing=f"no {RESULTS_FILE} at {path}; pass the --out directory of a `perfmamba profile` run",
                  fix="re-run `perfmamba profile`")
    if not isinstance(d, dict) or "components" not in d:
        raise PerfMambaError(f"{file} is not a `perfmamba profile` results file")
    return ProfileRun.from_dict(d)
