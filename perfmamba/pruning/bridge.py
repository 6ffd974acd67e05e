"""The bridging layer: what keeps a pruned model compatible, and what compensates for the removed channels.

``--bridge`` levels (each includes the one before):

``none``
    Only the smaller model (its own, smaller d_state; per-layer sizes in ``d_state_per_layer``).

``compat``
    Also a checkpoint in the ORIGINAL layout (:func:`pad_to_original`): every tensor has its original shape;
    the kept channels sit at their original indices; the removed channels' B and C weights (Mamba-1: x_proj
    rows; Mamba-2: in_proj rows and conv1d filters and biases) are zero and their A_log entries (Mamba-1) are
    0 (A = -1).  A removed channel then gets B = C = 0 at every token: its state stays exactly 0 and adds
    exactly 0 to the output, so the padded model computes the same function as the pruned one, and code
    or kernels that expect the original shapes (transformers, mamba_ssm) load and run it unchanged.
    ``bridge.json`` records which state indices each layer and group kept; :func:`load_compat` turns such a
    checkpoint back into the small model.

``refit``
    compat, plus a least-squares refit on calibration data that compensates for the removed channels
    (:func:`refit_bridge`).  Layers are refit in order, each on the residual stream of the already refit,
    pruned model (the inputs it will see), against the unpruned layer on the same input.  Nothing changes
    shape; two stages per layer:

    1. the skip path.  Mamba-1, per channel d, with S the pruned SSM output, U = u silu(z) the gated skip
       input and Y the unpruned layer's gated scan output:
           (a_d, b_d) = argmin sum_t (Y - a S - b U)^2 + lam ((a - 1)^2 + (b - D_d)^2),
       then D_d <- b_d / a_d and out_proj column d <- a_d * column d (the gate is elementwise, so a scale
       of the gated output folds into out_proj).  A kept channel's read-out is rescaled to make up for its
       removed neighbours, and the skip D takes the part of the removed output that follows the input.
       Mamba-2 has no stage 1: the gated RMSNorm after its scan divides every token's output by its own
       scale, so a least-squares fit before the norm (of D, say) aims at the wrong target; measured, it
       made the layer error larger.
    2. out_proj.  With o_full and o_pruned the inputs of out_proj (gated SSM output; for Mamba-2 after the
       gated RMSNorm) of the unpruned and the (stage-1) pruned mixer,
           W' = argmin_W  sum_t || W_full o_full[t] - W o_pruned[t] ||^2 + lam || W - W_cur ||_F^2
              = (W_full S_fp + lam W_cur) (S_pp + lam I)^-1,   S_pp = sum o_p o_p^T,  S_fp = sum o_f o_p^T.

    lam = ridge x the mean diagonal of each normal matrix (default ridge 1e-2): it pulls toward the
    unrefit weights, so a small calibration set cannot overfit wildly.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from perfmamba.fileio import read_json, write_json_atomic
from perfmamba.errors import PerfMambaError
from perfmamba.models.lm import MambaLM
from perfmamba.pruning.calibration import intercept_scans
from perfmamba.pruning.surgery import _model_like, check_keep, prune_model, slice_plan

BRIDGES = ("none", "compat", "refit")
BRIDGE_FILE = "bridge.json"
BRIDGE_FORMAT = "perfmamba-state-pruning-bridge"


# ------------------------------------------------------------------------------------------ compat
@torch.no_grad()
def pad_to_original(pruned: MambaLM, original_config, keep: list) -> MambaLM:
    """The pruned model in the original layout (see the module doc): same function, original shapes."""
    keep = check_keep(original_config, keep)
    plan = slice_plan(original_config, keep)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in MambaLM(original_config).state_dict().items()}
    state = {}
    for name, tensor in pruned.state_dict().items():
        if name in plan:
            dim, index = plan[name]
            # removed channels: zero weights; A_log 0 (A = -1, any finite value works since B = C = 0)
            full = torch.zeros(shapes[name], dtype=tensor.dtype, device=tensor.device)
            tensor = full.index_copy(dim, index.to(tensor.device), tensor)
        state[name] = tensor.detach().clone()
    return _model_like(pruned, original_config, state)


def bridge_record(original_config, keep: list, bridge: str, refit: Optional[dict] = None) -> dict:
    keep = check_keep(original_config, keep)
    return {"format": BRIDGE_FORMAT, "version": 1, "family": original_config.family, "bridge": bridge,
            "original_d_state": [original_config.layer_d_state(i) for i in range(original_config.n_layer)],
            "kept_d_state": [int(k.shape[1]) for k in keep],
            "groups": int(keep[0].shape[0]),
            "kept": [k.tolist() for k in keep],
            "removed_channels": ("B and C weights zero (Mamba-1 x_proj rows; Mamba-2 in_proj rows and conv1d "
                                 "filters) and A_log 0 (Mamba-1): B = C = 0, state 0, no contribution"),
            "refit": refit}


def write_bridge(directory: str, record: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    write_json_atomic(os.path.join(directory, BRIDGE_FILE), record)


def read_bridge(directory: str) -> dict:
    path = os.path.join(directory, BRIDGE_FILE)
    record = read_json(path, missing=f"no {BRIDGE_FILE} in {directory}; perfmamba prune --bridge compat writes it",
                       fix="re-run perfmamba prune")
    if record.get("format") != BRIDGE_FORMAT or "kept" not in record:
        raise PerfMambaError(f"{path} is not a perfmamba pruning bridge file")
    return record


def export_compat(pruned: MambaLM, original_config, keep: list, directory: str, record: dict,
                  format: str = "hf") -> None:
    """Write the original-layout checkpoint and its bridge.json into ``directory``."""
    pad_to_original(pruned, original_config, keep).save_pretrained(directory, format=format)
    write_bridge(directory, record)


def load_compat(directory: str, **load_kwargs) -> MambaLM:
    """An original-layout (compat) checkpoint back as the small model, using its bridge.json."""
    from perfmamba.api import load_model
    record = read_bridge(directory)
    model = load_model(directory, **load_kwargs)
    if model.config.family != record["family"]:
        raise PerfMambaError(f"{directory}: bridge.json is for {record['family']} but the checkpoint is "
                             f"{model.config.family}")
    return prune_model(model, [torch.tensor(k) for k in record["kept"]])


# ------------------------------------------------------------------------------------------- refit
class _Capture:
    """What one mixer call did: the input of its out_proj and, optionally, the scan's arguments and result."""

    def __init__(self, mixer, scan: bool = False):
        self.mixer, self.scan = mixer, scan
        self.out_proj_input = self.scan_args = self.scan_out = None
        self.seqlen = None  # the mixer input's length (out_proj may see padded steps beyond it)

    def __call__(self, hidden):
        """Run the mixer on ``hidden`` (normed block input); returns its output."""
        self.seqlen = hidden.shape[1]
        handle = self.mixer.out_proj.register_forward_pre_hook(self._hook)
        try:
            if not self.scan:
                return self.mixer(hidden)
            with intercept_scans([self.mixer], lambda layer, family, args: None, after=self._after):
                return self.mixer(hidden)
        finally:
            handle.remove()

    def _hook(self, module, args):  # without the rows of padded steps (Mamba1Mixer.prefill_out_proj)
        self.out_proj_input = args[0][:, :self.seqlen].reshape(-1, args[0].shape[-1])

    def _after(self, layer, family, args, result):
        self.scan_args, self.scan_out = args, result[0] if isinstance(result, tuple) else result


def _mixer_io(block, hidden):
    """(mixer output, out_proj input) for one block's mixer on its block input ``hidden``."""
    cap = _Capture(block.mixer)
    out = cap(block.norm(hidden))
    return out, cap.out_proj_input


def _streams(model: MambaLM, ids: torch.Tensor, batch_size: int) -> list:
    device = model.backbone.embedding.weight.device
    return [model.backbone.embedding(ids[i:i + batch_size].to(device)) for i in range(0, ids.shape[0], batch_size)]


def _skip_terms(full: _Capture, pruned: _Capture):
    """Mamba-1, per channel (rows) and token (columns), float64: the unpruned gated scan output Y, the pruned
    SSM part S (gated) and the gated skip input U = u silu(z); y = (S + D u) silu(z) with u, z, y (Bsz, D, L)."""
    a, y_f, y_p = pruned.scan_args, full.scan_out.double(), pruned.scan_out.double()
    reg = a["u"].double() * torch.nn.functional.silu(a["z"].double())
    ssm = y_p - a["D"].double()[:, None] * reg
    return [t.transpose(0, 1).reshape(t.shape[1], -1) for t in (y_f, ssm, reg)]


def _refit_skip(mixer, sums: dict, ridge: float) -> None:
    """Solve the stage-1 least squares per channel (module doc) and fold it into D and out_proj."""
    D = mixer.D.double()
    s_ss, s_su, s_uu, s_ys, s_yu = (sums[k] for k in ("ss", "su", "uu", "ys", "yu"))
    lam = ridge * (s_ss + s_uu) / 2 + 1e-300
    det = (s_ss + lam) * (s_uu + lam) - s_su ** 2
    a = ((s_ys + lam) * (s_uu + lam) - s_su * (s_yu + lam * D)) / det
    b = ((s_ss + lam) * (s_yu + lam * D) - s_su * (s_ys + lam)) / det
    ok = torch.isfinite(a) & torch.isfinite(b) & (a > 0.1)
    a, b = torch.where(ok, a, torch.ones_like(a)), torch.where(ok, b, D)
    mixer.D.copy_((b / a).to(mixer.D.dtype))
    w = mixer.out_proj.weight
    w.copy_((w.double() * a[None, :]).to(w.dtype))


@torch.no_grad()
def refit_bridge(original: MambaLM, pruned: MambaLM, ids: torch.Tensor, ridge: float = 1e-2,
                   batch_size: int = 1) -> dict:
    """The refit bridge, in place on ``pruned`` (objectives in the module doc), layer by layer on the
    pruned model's own residual stream; returns a JSON-safe record with the per-layer relative mixer-output
    error on ``ids`` before and after."""
    if ridge <= 0:
        raise PerfMambaError(f"ridge must be > 0, got {ridge}")
    mamba1 = original.config.family == "mamba1"
    streams = _streams(pruned, ids, batch_size)
    before, after = [], []
    for blk_o, blk_p in zip(original.backbone.layers, pruned.backbone.layers):
        # stage 1 (Mamba-1): the skip path D and one scale per channel, folded into out_proj
        sums, num, den = {}, 0.0, 0.0
        for x in streams:
            full, cut = _Capture(blk_o.mixer, scan=mamba1), _Capture(blk_p.mixer, scan=mamba1)
            normed = blk_p.norm(x)
            out_f, out_p = full(normed), cut(normed)
            num += float((out_f.double() - out_p.double()).square().sum())
            den += float(out_f.double().square().sum())
            if mamba1:
                y, ssm, reg = _skip_terms(full, cut)
                terms = {"ss": ssm * ssm, "su": ssm * reg, "uu": reg * reg, "ys": y * ssm, "yu": y * reg}
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v.sum(1)
        before.append((num / max(den, 1e-300)) ** 0.5)
        if mamba1:
            _refit_skip(blk_p.mixer, sums, ridge)
        # stage 2: out_proj by least squares on the out_proj inputs
        w = blk_p.mixer.out_proj.weight
        d = w.shape[1]
        s_pp = torch.zeros(d, d, dtype=torch.float64, device=w.device)
        s_fp, s_ff = torch.zeros_like(s_pp), torch.zeros_like(s_pp)
        for x in streams:
            _, o_f = _mixer_io(blk_o, x)
            _, o_p = _mixer_io(blk_p, x)
            o_f, o_p = o_f.double(), o_p.double()
            s_pp += o_p.T @ o_p
            s_fp += o_f.T @ o_p
            s_ff += o_f.T @ o_f
        lam = ridge * float(torch.diagonal(s_pp).sum()) / d + 1e-300
        eye = torch.eye(d, dtype=torch.float64, device=w.device)
        w_cur, w_full = w.double(), blk_o.mixer.out_proj.weight.double()
        # W' (S_pp + lam I) = W_full S_fp + lam W_cur; S_pp + lam I is symmetric positive definite
        w_new = torch.linalg.solve(s_pp + lam * eye, (w_full @ s_fp + lam * w_cur).T).T
        w.copy_(w_new.to(w.dtype))
        after.append(_gram_error(w_full, w.double(), s_ff, s_fp, s_pp))
        for i, x in enumerate(streams):
            streams[i] = blk_p._residual(x) + _mixer_io(blk_p, x)[0]
    stages = "D and a scale per channel, then out_proj" if mamba1 else "out_proj"
    return {"method": f"least-squares refit: {stages}", "ridge": ridge,
            "tokens": int(ids.numel()), "calibration_relative_error_before": before,
            "calibration_relative_error_after": after}


def _gram_error(w_full, w_new, s_ff, s_fp, s_pp) -> float:
    """||W_full o_f - W_new o_p|| / ||W_full o_f|| over the summed tokens, from the Gram sums."""
    target = torch.trace(w_full @ s_ff @ w_full.T)
    err = target - 2 * torch.trace(w_full @ s_fp @ w_new.T) + torch.trace(w_new @ s_pp @ w_new.T)
    return float(err.clamp(min=0) / target.clamp(min=1e-300)) ** 0.5


@torch.no_grad()
def layer_output_errors(original: MambaLM, pruned: MambaLM, ids: torch.Tensor, batch_size: int = 1) -> list:
    """Per layer, ||mixer_orig(x) - mixer_pruned(x)|| / ||mixer_orig(x)|| with x the pruned model's own layer
    inputs on ``ids`` (held-out data measures how well a bridge generalises)."""
    streams = _streams(pruned, ids, batch_size)
    errors = []
    for blk_o, blk_p in zip(original.backbone.layers, pruned.backbone.layers):
        num = den = 0.0
        for i, x in enumerate(streams):
            out_o, _ = _mixer_io(blk_o, x)
            out_p, _ = _mixer_io(blk_p, x)
            num += float((out_o.double() - out_p.double()).square().sum())
            den += float(out_o.double().square().sum())
            streams[i] = blk_p._residual(x) + out_p
        errors.append((num / max(den, 1e-300)) ** 0.5)
    return errors
