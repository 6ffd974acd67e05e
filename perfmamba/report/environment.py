"""Where and when a measurement was taken: device, library versions, git revision, date."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

import torch


def git_revision(path: str | None = None) -> str | None:
    """The checkout's short commit id; PERFMAMBA_GIT_REVISION overrides it (a copy of the tree run on another
    machine may carry a stale .git)."""
    if os.environ.get("PERFMAMBA_GIT_REVISION"):
        return os.environ["PERFMAMBA_GIT_REVISION"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path or os.getcwd(), capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def device_tag(name: str) -> str:
    """A short file-name tag for a GPU model: h100, h200, ... (benchmark results are named after it)."""
    for tag in ("h100", "h200", "b200", "a100"):
        if tag in name.lower():
            return tag
    return "".join(ch for ch in name.lower() if ch.isalnum())[:16] or "gpu"


def environment_info(device: torch.device | str = "cpu") -> dict:
    try:  # the installed version, without importing triton (an import fixes its interpreter mode)
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "git_revision": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
