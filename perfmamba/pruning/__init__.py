"""SSM state pruning: calibrate, score state channels (Δ-guided and baselines), allocate a budget, cut the
tensors, bridge to the original layout, and sweep accuracy against speed.

    from perfmamba.pruning import prune, calibration_ids
    ids, _ = calibration_ids(model)
    result = prune(model, "delta", 0.25, ids, bridge="refit")
    result.model  # a regular, smaller MambaLM
"""

from perfmamba.pruning.bridge import BRIDGES, load_compat, pad_to_original
from perfmamba.pruning.budget import BUDGETS
from perfmamba.pruning.calibration import calibration_ids
from perfmamba.pruning.pipeline import PruneResult, prune
from perfmamba.pruning.scores import METHODS, compute_scores
from perfmamba.pruning.surgery import keep_all, prune_model

__all__ = ["BRIDGES", "BUDGETS", "METHODS", "PruneResult", "calibration_ids", "compute_scores", "keep_all",
           "load_compat", "pad_to_original", "prune", "prune_model"]
