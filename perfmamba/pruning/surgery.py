"""Model surgery: remove SSM state channels so that the tensors are physically smaller.

``keep`` is one LongTensor (G, k_layer) per layer, sorted, with the state channels each B/C group keeps
(Mamba-1: G = 1).  What is sliced (everything else is copied unchanged):

* Mamba-1: A_log (D, N) -> its kept columns; x_proj rows [dt (R), B (N), C (N)] -> the kept B and C rows.
* Mamba-2: in_proj rows [z (D), x (D), B (G*N), C (G*N), dt (H)] -> the kept B and C rows of each group;
  conv1d channels [x (D), B (G*N), C (G*N)] (weights and bias) -> the same channels.  A is a per-head
  scalar, so nothing else changes.

The result is a regular :class:`MambaLM` whose config has ``d_state = k`` when every layer keeps the same k,
else ``d_state_per_layer``; the same ops and kernels run it, and ``allocate_cache`` sizes its cache.
A cache or CUDA graph made for the original model does not fit the new one: allocate new ones
(``allocate_cache`` / ``graph_decoder`` read the config).
"""

from __future__ import annotations

import torch

from perfmamba.errors import PerfMambaError
from perfmamba.models.lm import MambaLM
from perfmamba.pruning.scores import layer_groups


def keep_all(config) -> list:
    """The identity selection: every channel of every group."""
    g = layer_groups(config)
    return [torch.arange(config.layer_d_state(i)).repeat(g, 1) for i in range(config.n_layer)]


def check_keep(config, keep: list) -> list:
    """Validated copy of ``keep`` (int64 on the CPU); one-line errors for any mismatch."""
    g = layer_groups(config)
    if len(keep) != config.n_layer:
        raise PerfMambaError(f"keep lists {len(keep)} layers but the model has {config.n_layer}")
    out = []
    for i, idx in enumerate(keep):
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        if idx.dim() == 1:
            idx = idx[None]
        n = config.layer_d_state(i)
        if idx.dim() != 2 or idx.shape[0] != g or idx.shape[1] < 1:
            raise PerfMambaError(f"layer {i}: keep must be ({g}, k) with k >= 1, got shape {tuple(idx.shape)}")
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise PerfMambaError(f"layer {i}: kept state indices must lie in [0, {n})")
        for row in idx:
            if row.unique().numel() != row.numel():
                raise PerfMambaError(f"layer {i}: kept state indices repeat")
        out.append(torch.sort(idx, dim=-1).values)
    return out


def pruned_config(config, kept_sizes: list):
    sizes = [int(k) for k in kept_sizes]
    if len(set(sizes)) == 1:
        return config.replace(d_state=sizes[0], d_state_per_layer=None)
    return config.replace(d_state=max(sizes), d_state_per_layer=sizes)


def _rows_mamba1(config, layer: int, idx: torch.Tensor) -> torch.Tensor:
    r, n = config.dt_rank, config.layer_d_state(layer)
    return torch.cat([torch.arange(r), r + idx[0], r + n + idx[0]])


def _bc_channels(config, layer: int, idx: torch.Tensor, offset: int) -> torch.Tensor:
    """Indices of the kept B then C channels of all groups, in a tensor whose B block starts at ``offset``."""
    n, g = config.layer_d_state(layer), config.ngroups
    per_group = (torch.arange(g)[:, None] * n + idx).reshape(-1)  # (G*k,)
    return torch.cat([offset + per_group, offset + g * n + per_group])


def _rows_mamba2_in_proj(config, layer: int, idx: torch.Tensor) -> torch.Tensor:
    n = config.layer_d_state(layer)
    d, g, h = config.d_inner, config.ngroups, config.nheads
    start_dt = 2 * d + 2 * g * n
    return torch.cat([torch.arange(2 * d), _bc_channels(config, layer, idx, 2 * d),
                      torch.arange(start_dt, start_dt + h)])


def _channels_mamba2_conv(config, layer: int, idx: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.arange(config.d_inner), _bc_channels(config, layer, idx, config.d_inner)])


def slice_plan(config, keep: list) -> dict:
    """{parameter name suffix per layer: (dim, indices)} for every tensor that surgery slices."""
    plan = {}
    for i, idx in enumerate(keep):
        p = f"backbone.layers.{i}.mixer."
        if config.family == "mamba1":
            plan[p + "A_log"] = (1, idx[0])
            plan[p + "x_proj.weight"] = (0, _rows_mamba1(config, i, idx))
        else:
            rows = _rows_mamba2_in_proj(config, i, idx)
            conv = _channels_mamba2_conv(config, i, idx)
            plan[p + "in_proj.weight"] = (0, rows)
            plan[p + "in_proj.bias"] = (0, rows)
            plan[p + "conv1d.weight"] = (0, conv)
            plan[p + "conv1d.bias"] = (0, conv)
    return plan


def _model_like(model: MambaLM, config, state: dict) -> MambaLM:
    """A MambaLM for ``config`` holding ``state`` (built on the meta device, tensors assigned)."""
    p = model.backbone.embedding.weight
    with torch.device("meta"):
        new = MambaLM(config, backend=model.backend, dtype=p.dtype)
    if config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"surgery produced a mismatched state dict: missing {missing}, unexpected {unexpected}")
    if config.tie_embeddings:
        new.lm_head.weight = new.backbone.embedding.weight
    return new.train(model.training)


@torch.no_grad()
def prune_model(model: MambaLM, keep: list) -> MambaLM:
    """A new, smaller MambaLM keeping the state channels ``keep`` (see the module doc); ``model`` is unchanged.
    Keeping everything gives a model equal to the original."""
    keep = check_keep(model.config, keep)
    config = pruned_config(model.config, [idx.shape[1] for idx in keep])
    plan = slice_plan(model.config, keep)
    state = {}
    for name, tensor in model.state_dict().items():
        if name in plan:
            dim, index = plan[name]
            tensor = tensor.index_select(dim, index.to(tensor.device))
        state[name] = tensor.detach().clone()
    return _model_like(model, config, state)
