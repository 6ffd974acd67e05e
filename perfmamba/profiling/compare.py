"""Per-component ratios between two profile runs (B / A), e.g. before (A) and after (B) pruning.

Models are paired by name when the runs share names, otherwise in order (the first model of A with the
first of B, ...), which is what a before/after comparison of a checkpoint and its pruned copy needs.
Configurations are matched on (scope, mode, L, batch), components by name; "whole" is the unit timed as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from perfmamba.errors import PerfMambaError
from perfmamba.profiling.records import FUSED, OK, ProfileRun

MATCHES = ("auto", "name", "order")


@dataclass
class CompareRow:
    model_a: str
    model_b: str
    scope: str
    mode: str
    seqlen: int
    batch: int
    component: str
    time_a_s: float
    time_b_s: float
    time_ratio: float
    flops_ratio: float
    bytes_ratio: float
    peak_mem_ratio: float
    activation_ratio: float


def ratio(a: float, b: float) -> float:
    """b / a; equal values (0 and 0 included) give 1.0; NaN when either is unknown."""
    if a is None or b is None or a != a or b != b:
        return math.nan
    if a == b:
        return 1.0
    return b / a if a != 0 else math.inf


def _models(run: ProfileRun) -> list:
    names = [m["name"] for m in run.models] if run.models else []
    for c in run.configs:
        if c.model not in names:
            names.append(c.model)
    return names


def pair_models(a: ProfileRun, b: ProfileRun, match: str = "auto") -> list:
    if match not in MATCHES:
        raise PerfMambaError(f"unknown --match {match!r}; choose {', '.join(MATCHES)}")
    ma, mb = _models(a), _models(b)
    common = [m for m in ma if m in mb]
    if match == "name" or (match == "auto" and common):
        pairs = [(m, m) for m in common]
    else:
        pairs = list(zip(ma, mb))
    if not pairs:
        raise PerfMambaError(f"the two runs share no model (A: {', '.join(ma) or 'none'}; B: {', '.join(mb) or 'none'})"
                             "; use --match order to pair them in order")
    return pairs


def compare_runs(a: ProfileRun, b: ProfileRun, match: str = "auto") -> list:
    rows = []
    for model_a, model_b in pair_models(a, b, match):
        confs_b = {(c.scope, c.mode, c.seqlen, c.batch): c for c in b.configs if c.model == model_b}
        comps_b = {(r.scope, r.mode, r.seqlen, r.batch, r.component): r for r in b.components if r.model == model_b}
        for ca in (c for c in a.configs if c.model == model_a):
            key = (ca.scope, ca.mode, ca.seqlen, ca.batch)
            cb = confs_b.get(key)
            if cb is None:
                continue
            ok = ca.status == OK and cb.status == OK
            ta, tb = (ca.whole_time_median_s, cb.whole_time_median_s) if ok else (math.nan, math.nan)
            rows.append(CompareRow(model_a, model_b, *key, "whole", ta, tb, ratio(ta, tb),
                                   ratio(ca.flops, cb.flops), ratio(ca.bytes, cb.bytes),
                                   ratio(ca.peak_mem_bytes, cb.peak_mem_bytes),
                                   ratio(ca.activation_bytes, cb.activation_bytes)))
            for ra in (r for r in a.components if r.model == model_a and (r.scope, r.mode, r.seqlen, r.batch) == key):
                rb = comps_b.get(key + (ra.component,))
                if rb is None:
                    continue
                timed = ra.status in (OK, FUSED) and rb.status in (OK, FUSED)
                rows.append(CompareRow(model_a, model_b, *key, ra.component,
                                       ra.time_median_s if timed else math.nan, rb.time_median_s if timed else math.nan,
                                       ratio(ra.time_median_s, rb.time_median_s) if timed else math.nan,
                                       ratio(ra.flops, rb.flops), ratio(ra.bytes, rb.bytes),
                                       ratio(ra.peak_mem_bytes, rb.peak_mem_bytes),
                                       ratio(ra.activation_bytes, rb.activation_bytes)))
    if not rows:
        raise PerfMambaError("the two runs have no configuration in common (same scope, mode, L and batch)")
    return rows


def geomean_ratio(rows: list, component: str = "whole") -> float:
    vals = [r.time_ratio for r in rows if r.component == component and r.time_ratio == r.time_ratio
            and 0 < r.time_ratio < math.inf]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else math.nan
