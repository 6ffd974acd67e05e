"""``load_model``: one entry point for presets, local checkpoint directories and hub ids."""

from __future__ import annotations

import os
from typing import Optional

import torch

from perfmamba.config import get_preset, preset_names, read_config_json
from perfmamba.demo_models import DEMO_MODELS, demo_model_dir
from perfmamba.errors import PerfMambaError
from perfmamba.models.checkpoint import build_model, load_checkpoint_dir
from perfmamba.models.lm import MambaLM

# Random weights for a preset are drawn from this seed, so two runs profile the very same model.
PRESET_SEED = 0


def _resolve_dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise PerfMambaError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def resolve_device(device) -> torch.device:
    """None -> cuda when available, else cpu; asking for cuda without a GPU is a one-line error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PerfMambaError(f"device {device!r} asked for but no CUDA GPU is available; use device='cpu'")
    return dev


def _download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PerfMambaError(f"{repo_id!r} is not a preset or a local directory, and huggingface_hub is not "
                             "installed to fetch it; pass a local checkpoint directory") from None
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"])
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PerfMambaError(f"could not fetch {repo_id!r} from the Hugging Face hub ({reason}); "
                             "pass a local checkpoint directory instead") from None


def load_model(name_or_path: str, *, device=None, dtype=None, backend: str = "auto") -> MambaLM:
    """A Mamba-1 or Mamba-2 LM from a shipped demo model (``demo-mamba1``, ``demo-mamba2``), a preset name
    (random weights, seed ``PRESET_SEED``), a local checkpoint
    directory (Hugging Face or mamba_ssm layout), or a hub id such as ``state-spaces/mamba-130m-hf``."""
    dtype = _resolve_dtype(dtype)
    dev = resolve_device(device)
    if name_or_path in DEMO_MODELS:  # shipped trained demo models (perfmamba/demo_models/<name>)
        model = load_checkpoint_dir(demo_model_dir(name_or_path), backend=backend, device=dev, dtype=dtype)
    elif name_or_path in preset_names():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PRESET_SEED)
            model = build_model(get_preset(name_or_path), backend=backend, dtype=dtype)
        model = model.to(dev).eval()
    elif os.path.isdir(name_or_path):
        model = load_checkpoint_dir(name_or_path, backend=backend, device=dev, dtype=dtype)
    elif name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        model = load_checkpoint_dir(_download(name_or_path), backend=backend, device=dev, dtype=dtype)
    else:
        raise PerfMambaError(unknown_model_message(name_or_path))
    model.set_backend(backend)
    return model


def unknown_model_message(name: str) -> str:
    """The one-line error for a MODEL argument that names nothing ``load_model`` can load."""
    return (f"{name!r} is neither a preset ({', '.join(preset_names())}), a demo model ({', '.join(DEMO_MODELS)}) "
            "nor an existing checkpoint directory")


def config_of(name: str):
    """The config of a preset, demo model or checkpoint directory, read without building the model; any
    other name is refused with ``load_model``'s one-line error."""
    if name in preset_names():
        return get_preset(name)
    if name in DEMO_MODELS:
        directory = demo_model_dir(name)
    elif os.path.isdir(name):
        directory = name
    else:
        raise PerfMambaError(unknown_model_message(name))
    return read_config_json(os.path.join(directory, "config.json"))
