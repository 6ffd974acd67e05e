"""What the Triton kernel tests share: interpreter mode on machines without CUDA, and the error measure.

``@triton.jit`` picks compiled or interpreted kernels when a module is imported (triton's own library
included), so importing this module sets TRITON_INTERPRET=1 before it imports triton and (re)imports
PerfMamba's kernel modules under it when there is no CUDA; it then restores the variable.  Test modules
import ``interpreter_env`` (a module-scoped autouse fixture) to set it again only while their own tests
run, so other test modules see the environment they expect.  With CUDA the ``interpreted`` tests skip
and the GPU tests run the compiled kernels.
"""

import importlib
import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
_ENV_BEFORE = os.environ.get("TRITON_INTERPRET")
_TRITON_ALREADY_IMPORTED = "triton" in sys.modules
_KERNEL_MODULES = ("selective_scan", "split", "scan_steps", "ssd", "conv1d", "state_update", "rms_norm",
                   "mamba1_step", "gemv")


def _restore_env():
    if _ENV_BEFORE is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _ENV_BEFORE


def _load_kernels():
    """(Re)import perfmamba.ops.triton so that its kernels are built in the current TRITON_INTERPRET mode."""
    for name in _KERNEL_MODULES:  # selective_scan first: the others import its helpers
        importlib.reload(importlib.import_module(f"perfmamba.ops.triton.{name}"))
    importlib.reload(importlib.import_module("perfmamba.ops.triton"))


if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    from perfmamba import ops
    if not CUDA:
        _load_kernels()
        ops._triton_module.cache_clear()
finally:
    _restore_env()

# If triton was imported earlier in this session without the interpreter, its library functions are
# compiled ones and cannot run on the CPU: say so instead of failing obscurely.
_INTERPRETER_OK = not _TRITON_ALREADY_IMPORTED or _ENV_BEFORE == "1"
interpreted = pytest.mark.skipif(
    CUDA or not _INTERPRETER_OK,
    reason="CUDA present (the GPU tests cover the kernels)" if CUDA else
    "triton was imported before this module could set TRITON_INTERPRET=1; run with TRITON_INTERPRET=1")


@pytest.fixture(scope="module", autouse=True)
def interpreter_env():
    if CUDA:
        yield
        return
    os.environ["TRITON_INTERPRET"] = "1"  # read at call time by perfmamba.ops and the launchers
    try:
        yield
    finally:
        _restore_env()


def rel_err(out, ref):
    """||out - ref|| / ||ref||, after checking shapes and that no NaN (an unwritten element) is left."""
    assert out.shape == ref.shape
    assert not torch.isnan(out).any(), "NaN in output (an element was not written?)"
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def poisoned_like(t):
    """A NaN-filled tensor with t's shape and strides (every element the kernel must overwrite)."""
    return torch.full_like(t, float("nan"), memory_format=torch.preserve_format)


def count_state_passing(monkeypatch):
    """Record each split-L state-passing pass (the shape of its h_out) in the returned list."""
    from perfmamba.ops.triton import split as split_l
    passes = []
    real = split_l.state_passing

    def counting(h_out, *args, **kwargs):
        passes.append(h_out.shape)
        return real(h_out, *args, **kwargs)

    monkeypatch.setattr(split_l, "state_passing", counting)
    return passes


def record_launches(monkeypatch, module, kernel: str, *flags: str) -> list:
    """Record the ``flags`` (constexpr keyword arguments) of every launch of ``module.kernel`` in the
    returned list, one tuple per launch; the kernel still runs."""
    real = getattr(module, kernel)
    launches = []

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                launches.append(tuple(kwargs[f] for f in flags))
                return real[grid](*args, **kwargs)
            return run

    monkeypatch.setattr(module, kernel, Spy())
    return launches
