"""One call from a model to its pruned version: calibrate, score, budget, select, cut, bridge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from perfmamba.errors import PerfMambaError
from perfmamba.models.lm import MambaLM
from perfmamba.pruning import budget as budgets
from perfmamba.pruning.bridge import BRIDGES, refit_bridge
from perfmamba.pruning.calibration import collect
from perfmamba.pruning.scores import check_methods, compute_scores, stats_needed
from perfmamba.pruning.surgery import prune_model


@dataclass
class PruneResult:
    model: MambaLM  # the smaller model
    keep: list  # per layer, LongTensor (G, k): kept state indices of each group
    scores: list  # per layer, float64 (G, N)
    refit: Optional[dict] = None  # refit_bridge record when bridge == "refit"


def check_bridge(bridge: str) -> str:
    if bridge not in BRIDGES:
        raise PerfMambaError(f"unknown bridge {bridge!r}; choose one of {', '.join(BRIDGES)}")
    return bridge


def prune(model: MambaLM, method: str = "delta", ratio: float = 0.25, calib_ids: Optional[torch.Tensor] = None,
          budget: str = "uniform", multiple: int = 1, bridge: str = "none", seed: int = 0,
          ridge: float = 1e-2, batch_size: int = 1) -> PruneResult:
    """Prune ``model`` (left unchanged) by ``method`` scores at ``ratio``; ``calib_ids`` (n, L) token ids are
    needed by every method but random and magnitude, and by the refit bridge."""
    check_methods([method])
    budgets.check_ratio(ratio)
    check_bridge(bridge)
    need = stats_needed([method])
    if (need or bridge == "refit") and calib_ids is None:
        raise PerfMambaError(f"method {method!r} / bridge {bridge!r} need calibration token ids")
    stats = collect(model, calib_ids, need, batch_size=batch_size) if need else None
    scores = compute_scores(method, model, stats, seed)
    sizes = budgets.keep_sizes(model.config, ratio, budget, scores, multiple)
    keep = budgets.select(scores, sizes)
    pruned = prune_model(model, keep)
    refit = refit_bridge(model, pruned, calib_ids, ridge, batch_size) if bridge == "refit" else None
    return PruneResult(pruned, keep, scores, refit)
