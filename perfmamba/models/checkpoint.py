"""Load and save checkpoints in the two layouts people have: Hugging Face ``transformers`` and mamba_ssm.

One key map (ours are mamba_ssm's names; Hugging Face differs only in ``backbone.embeddings``), one shape
check that names the tensor and both shapes, and atomic writes.  Per-layer state sizes (pruned models)
come from the config, so the same code loads them.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from perfmamba.fileio import atomic_write, write_json_atomic
from perfmamba.config import AnyConfig, read_config_json
from perfmamba.errors import PerfMambaError
from perfmamba.models.lm import MambaLM

FORMATS = ("hf", "mamba_ssm")
# Parameters kept in fp32 whatever the model dtype: the SSM's own scalars, as mamba_ssm keeps them.
_FP32_SUFFIXES = (".A_log", ".D", ".dt_bias")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _to_ours(key: str) -> str:
    return key.replace("backbone.embeddings.", "backbone.embedding.", 1)


def _to_hf(key: str) -> str:
    return key.replace("backbone.embedding.", "backbone.embeddings.", 1)


# ------------------------------------------------------------------------------------------- reading
def _read_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PerfMambaError(f"cannot read {path}: truncated or corrupt safetensors file ({reason}); "
                             "re-download or re-save it") from None


def _read_pickle(path: str) -> dict:
    try:
        # weights_only: never execute code from a checkpoint file
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / unsafe files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PerfMambaError(f"cannot read {path} as a weights-only torch checkpoint ({reason}); "
                             "re-download or re-save it") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PerfMambaError(f"{path} does not hold a state dict; re-save it with torch.save(model.state_dict())")
    return obj


def read_state_dict(directory: str) -> dict:
    """All tensors of a checkpoint directory (single file or sharded index), keys as stored."""
    for name in _WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            state = {}
            for shard in shards:
                shard_path = os.path.join(directory, shard)
                if not os.path.exists(shard_path):
                    raise PerfMambaError(f"{path} lists shard {shard}, which is missing; re-download the checkpoint")
                state.update(_read_safetensors(shard_path) if shard.endswith(".safetensors")
                             else _read_pickle(shard_path))
            return state
        return _read_safetensors(path) if name.endswith(".safetensors") else _read_pickle(path)
    raise PerfMambaError(f"no weights in {directory}: expected one of {', '.join(_WEIGHT_FILES)}")


def _normalise_keys(state: dict) -> dict:
    """Our names; a bare MambaModel checkpoint (no ``backbone.`` prefix) gets the prefix."""
    if state and not any(k.startswith("backbone.") for k in state):
        state = {(k if k.startswith("lm_head.") else f"backbone.{k}"): v for k, v in state.items()}
    return {_to_ours(k): v for k, v in state.items()}


# Mixer tensors only one family has: Mamba-1's x_proj / dt_proj, Mamba-2's dt_bias and gated norm.
_FAMILY_MARKERS = {"mamba1": (".mixer.x_proj.", ".mixer.dt_proj."), "mamba2": (".mixer.dt_bias", ".mixer.norm.")}


def _weights_family(state: dict) -> Optional[str]:
    for family, markers in _FAMILY_MARKERS.items():
        if any(m in k for k in state for m in markers):
            return family
    return None


def check_state_dict(model: MambaLM, state: dict) -> None:
    """Every expected tensor present with the right shape, nothing unexpected; else one line naming it."""
    family = _weights_family(state)
    if family is not None and family != model.config.family:
        raise PerfMambaError(f"config.json describes a {model.config.family} model but the weights are "
                             f"{family} ones; use the config.json that came with these weights")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = {"lm_head.weight"} if model.config.tie_embeddings else set()
    missing = sorted(set(expected) - set(state) - optional)
    if missing:
        raise PerfMambaError(f"checkpoint is missing tensor {missing[0]!r} (expected shape {expected[missing[0]]})"
                             f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; "
                             "the weights do not match config.json")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise PerfMambaError(f"checkpoint has unexpected tensor {unexpected[0]!r} "
                             f"{f'and {len(unexpected) - 1} more ' if len(unexpected) > 1 else ''}"
                             "that config.json does not describe; check the config's family and sizes")
    for key, tensor in state.items():
        if tuple(tensor.shape) != expected[key]:
            raise PerfMambaError(f"tensor {key!r} has shape {tuple(tensor.shape)} in the checkpoint but the config "
                                 f"needs {expected[key]}; the weights do not match config.json")


def build_model(config: AnyConfig, backend: str = "auto", device=None, dtype=None) -> MambaLM:
    return MambaLM(config, backend=backend, device=device, dtype=dtype or torch.float32)


def load_checkpoint_dir(directory: str, backend: str = "auto", device=None, dtype=None) -> MambaLM:
    """A MambaLM from a local checkpoint directory in either layout."""
    if not os.path.isdir(directory):
        raise PerfMambaError(f"checkpoint directory {directory} does not exist")
    config = read_config_json(os.path.join(directory, "config.json"))
    state = _normalise_keys(read_state_dict(directory))
    with torch.device("meta"):
        model = MambaLM(config, backend=backend, dtype=dtype or torch.float32)
    check_state_dict(model, state)
    dtype = dtype or _checkpoint_dtype(state)
    device = torch.device(device) if device is not None else torch.device("cpu")
    converted = {k: v.to(device=device, dtype=torch.float32 if k.endswith(_FP32_SUFFIXES) else dtype)
                 for k, v in state.items() if v.is_floating_point()}
    if config.tie_embeddings:
        converted.pop("lm_head.weight", None)
    model.load_state_dict(converted, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    return model.eval()


def _checkpoint_dtype(state: dict) -> torch.dtype:
    emb = state.get("backbone.embedding.weight")
    return emb.dtype if emb is not None and emb.is_floating_point() else torch.float32


# ------------------------------------------------------------------------------------------- writing
def save_checkpoint(model: MambaLM, directory: str, format: str = "hf") -> None:
    """config.json + weights.  "hf": model.safetensors with transformers' names (tied head omitted, as
    transformers does); "mamba_ssm": pytorch_model.bin with mamba_ssm's names and config dialect."""
    if format not in FORMATS:
        raise PerfMambaError(f"unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}")
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if format == "hf":
        from safetensors.torch import save_file
        if model.config.tie_embeddings:
            state.pop("lm_head.weight")
        state = {_to_hf(k): v for k, v in state.items()}
        atomic_write(os.path.join(directory, "model.safetensors"),
                     lambda p: save_file(state, p, metadata={"format": "pt"}))
        _remove_stale(directory, keep="model.safetensors")
        write_json_atomic(os.path.join(directory, "config.json"), model.config.to_hf_dict())
    else:
        if model.config.tie_embeddings:  # mamba_ssm's state dict carries the tied head under both names
            state["lm_head.weight"] = state["backbone.embedding.weight"]
        atomic_write(os.path.join(directory, "pytorch_model.bin"), lambda p: torch.save(state, p))
        _remove_stale(directory, keep="pytorch_model.bin")
        write_json_atomic(os.path.join(directory, "config.json"), model.config.to_mamba_ssm_dict())


def _remove_stale(directory: str, keep: str) -> None:
    """A directory re-saved in the other layout must not keep old weights that the loader would prefer."""
    for name in _WEIGHT_FILES:
        if name != keep and os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
