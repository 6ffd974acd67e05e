"""How many state channels each layer keeps, and which ones.

``ratio`` is the fraction of state channels removed (0: nothing, 0.75: three quarters).

* ``uniform``: every layer keeps round((1 - ratio) * N_layer) channels.
* ``global``:  the same total number of kept channels as ``uniform``, spread over layers by score.  Each
  layer's scores are divided by their sum, so a channel competes by its share of its own layer's activity
  (raw scores differ in scale between layers); then kept slots are handed out one at a time (one block of
  ``multiple`` at a time), always to the layer whose next slot carries the largest normalised score.  A
  layer's slot value is the sum over its groups of the k-th best channel of each group, so the greedy choice
  is optimal for this objective (values decrease within a layer).  Every layer keeps at least ``multiple``
  (or 1) channels.

``multiple`` snaps kept sizes to multiples (e.g. 8), for kernel-friendly shapes: uniform sizes are rounded to
the nearest multiple (ties: keep more), never below one multiple nor above N.  For Mamba-2 the conv channel
count d_inner + 2 G k then stays a multiple of 8 whenever d_inner is and G k is a multiple of 4.
"""

from __future__ import annotations

import math

import torch

from perfmamba.errors import PerfMambaError

BUDGETS = ("uniform", "global")

# A Mamba-2 state size that is not a multiple of 8 ends B's and C's rows inside a 16-byte vector in bf16 and
# fp16 (fp32 rows need only a multiple of 4; the note does not ask which dtype, since a pruned checkpoint is
# usually run in 16 bits on a GPU whatever it was pruned in), and the SSD kernel then loads them in narrower
# pieces: on an H200 (bf16, 2026-12-01) N = 60 took 1.41x the
# time of N = 64 at the kernel benchmark's heads (docs/kernel_notes.md, "x's strides too").  Mamba-1's scan
# covers any size with equal power-of-two state tiles and has no such cliff.
KERNEL_MULTIPLE = 8


def slow_sizes(config, sizes) -> list:
    """The kept state sizes, sorted, that the GPU kernels run slowly: for Mamba-2 those that are not
    multiples of KERNEL_MULTIPLE (``--multiple 8`` avoids them); none for Mamba-1."""
    if config.family != "mamba2":
        return []
    return sorted({int(k) for k in sizes if int(k) % KERNEL_MULTIPLE})


def slow_sizes_note(sizes: list) -> str:
    """One line for the prune commands' log about ``slow_sizes`` (empty when there are none)."""
    if not sizes:
        return ""
    verb = "is" if len(sizes) == 1 else "are"
    return (f"note: kept d_state {', '.join(map(str, sizes))} {verb} not a multiple of {KERNEL_MULTIPLE}; Mamba-2's "
            f"SSD kernel loads such rows in narrower pieces in bf16 / fp16 (on an H200, 60 states took 1.41x the "
            f"time of 64); "
            f"--multiple {KERNEL_MULTIPLE} snaps kept sizes to multiples of {KERNEL_MULTIPLE}")


def check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise PerfMambaError(f"pruning ratio must lie in [0, 1) (the fraction of state channels removed); got {ratio}")
    return ratio


def check_multiple(multiple: int) -> int:
    if not isinstance(multiple, int) or multiple < 1:
        raise PerfMambaError(f"--multiple must be a positive integer, got {multiple!r}")
    return multiple


def snap(k: float, n: int, multiple: int = 1) -> int:
    """k kept channels of n, rounded to the nearest multiple (ties up), clamped to [multiple, n]; if n itself is
    below one multiple, n (nothing can be removed in whole multiples)."""
    if multiple > 1 and n <= multiple:
        return n
    top = multiple * (n // multiple)  # the largest size that is a whole number of multiples
    snapped = multiple * int(math.floor(k / multiple + 0.5))
    return max(multiple, min(snapped, top))


def uniform_keep(config, ratio: float, multiple: int = 1) -> list:
    ratio, multiple = check_ratio(ratio), check_multiple(multiple)
    out = []
    for i in range(config.n_layer):
        n = config.layer_d_state(i)
        out.append(n if ratio == 0 else snap((1.0 - ratio) * n, n, multiple))
    return out


def global_keep(config, scores: list, ratio: float, multiple: int = 1) -> list:
    """Kept sizes per layer under one budget for the whole model (see the module doc)."""
    ratio, multiple = check_ratio(ratio), check_multiple(multiple)
    sizes = [config.layer_d_state(i) for i in range(config.n_layer)]
    if ratio == 0:
        return sizes
    budget = sum(uniform_keep(config, ratio, multiple))
    slot_values = []
    for s in scores:
        ranked = torch.sort(s.double().clamp(min=0), dim=-1, descending=True).values.sum(0)  # (N,)
        slot_values.append(ranked / ranked.sum().clamp(min=1e-300))
    keep = [min(n, multiple) for n in sizes]

    def block_value(layer):
        k, n = keep[layer], sizes[layer]
        step = min(multiple, n - k)
        return float(slot_values[layer][k:k + step].sum()) if step > 0 else -math.inf

    total = sum(keep)
    while total < budget:
        layer = max(range(len(sizes)), key=block_value)
        step = min(multiple, sizes[layer] - keep[layer])
        if step <= 0 or abs(total + step - budget) > abs(total - budget):
            break
        keep[layer] += step
        total += step
    return keep


def keep_sizes(config, ratio: float, budget: str = "uniform", scores=None, multiple: int = 1) -> list:
    if budget == "uniform":
        return uniform_keep(config, ratio, multiple)
    if budget == "global":
        if scores is None:
            raise PerfMambaError("the global budget needs scores")
        return global_keep(config, scores, ratio, multiple)
    raise PerfMambaError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")


def select(scores: list, keep: list) -> list:
    """Indices to keep: per layer a sorted LongTensor (G, k) with each group's k best channels (ties: lower
    index first, so the choice is deterministic)."""
    out = []
    for s, k in zip(scores, keep):
        n = s.shape[-1]
        if not 1 <= k <= n:
            raise PerfMambaError(f"cannot keep {k} of {n} state channels")
        # stable descending order: sort by (-score, index)
        order = torch.stack([torch.sort(-row.double(), stable=True).indices for row in s])
        out.append(torch.sort(order[:, :k], dim=-1).values)
    return out
