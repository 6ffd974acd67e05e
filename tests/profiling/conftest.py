"""Fixtures for the profiler tests: tiny models saved as checkpoint directories, and a private ceilings
cache with small measurement sizes (the real ones take seconds; nothing is written under ~/.cache)."""

import os

import pytest
import torch

from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.models.lm import MambaLM

TINY = {
    "tiny-m1": Mamba1Config(d_model=64, n_layer=2, vocab_size=256, d_state=8),
    "tiny-m2": Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=16, headdim=16, chunk_size=32),
}


def tiny_model(name: str, seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(TINY[name], backend="ref").eval()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{name: checkpoint directory} of the tiny models."""
    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for name in TINY:
        path = root / name
        tiny_model(name).save_pretrained(str(path))
        out[name] = str(path)
    return out


@pytest.fixture(autouse=True, scope="session")
def _private_ceilings_cache(tmp_path_factory):
    from perfmamba.profiling import hardware

    saved = (os.environ.get("PERFMAMBA_CACHE_DIR"), dict(hardware._COPY_BYTES), dict(hardware._MATMUL_N))
    os.environ["PERFMAMBA_CACHE_DIR"] = str(tmp_path_factory.mktemp("perfmamba-cache"))
    hardware._COPY_BYTES["cpu"] = 16 << 20
    hardware._MATMUL_N["cpu"] = 256
    yield
    if saved[0] is None:
        os.environ.pop("PERFMAMBA_CACHE_DIR", None)
    else:
        os.environ["PERFMAMBA_CACHE_DIR"] = saved[0]
    hardware._COPY_BYTES.update(saved[1])
    hardware._MATMUL_N.update(saved[2])

