"""Shared test helpers (kept minimal)."""

import os

import pytest
import torch

# Without a GPU the Triton kernels run through the interpreter, and @triton.jit decides between
# interpreted and compiled kernels when triton is first imported: set the flag before any test module
# can import triton, so the CPU kernel tests in tests/ops/test_triton_kernels.py always run in CI.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU every new shape class would otherwise compile and time each tile candidate; the tests check the
# default configuration (the benchmarks check the tuned ones against the reference).
os.environ.setdefault("PERFMAMBA_AUTOTUNE", "0")


@torch.no_grad()
def _randomise(model, seed=0):
    """Redraw every parameter of a Mamba model (perfmamba or transformers names).

    The library inits leave norms at 1, biases at 0 and A_log structured, which would hide swapped or
    dropped tensors; after this every tensor is distinct and the model's output is far from trivial.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            value = torch.log(0.5 + 4 * torch.rand(p.shape, generator=g))  # A in [-4.5, -0.5]
        elif name.endswith(("dt_bias", "dt_proj.bias")):
            value = torch.randn(p.shape, generator=g) * 0.5 - 1.0  # dt = softplus(..) around 0.3
        elif name.endswith(".D"):
            value = torch.randn(p.shape, generator=g)
        elif "norm" in name:
            value = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
        else:
            value = 0.2 * torch.randn(p.shape, generator=g)
        p.copy_(value.to(p.dtype))
    return model


@pytest.fixture(scope="session")
def randomise():
    return _randomise


def _hf_gated_norm_per_group() -> bool:
    """Whether the installed transformers' Mamba-2 gated RMSNorm normalizes each group of d_inner on its
    own, as mamba_ssm (and so perfmamba) does.  5.24 does (its ``group_size``); 5.17, on the GPU machine,
    normalizes over all of d_inner, so with ngroups > 1 its logits are a different model's.  The class is
    ``MambaRMSNormGated`` up to 5.24 and ``Mamba2RMSNormGated`` from 5.25."""
    import inspect

    from transformers.models.mamba2 import modeling_mamba2
    norm = getattr(modeling_mamba2, "Mamba2RMSNormGated", None) or getattr(modeling_mamba2, "MambaRMSNormGated")
    return "group_size" in inspect.signature(norm.__init__).parameters


@pytest.fixture(scope="session")
def skip_unless_transformers_groups_agree():
    """``check(config)`` skips the calling test where the installed transformers computes a different
    Mamba-2 than mamba_ssm's for that config (ngroups > 1 with a whole-d_inner gated norm)."""
    def check(cfg):
        if getattr(cfg, "ngroups", 1) > 1 and not _hf_gated_norm_per_group():
            import transformers
            pytest.skip(f"transformers {transformers.__version__} normalizes Mamba-2's gated RMSNorm over all of "
                        f"d_inner, not per group as mamba_ssm does: not an oracle for ngroups > 1")
    return check


# ------------------------------------------------------------------------------- damaged checkpoints
def _damaged_checkpoint(directory, problem):
    """Write a small Mamba-1 HF checkpoint into ``directory``, damaged as ``problem`` says: one of
    missing-tensor, unexpected-tensor, misshaped-tensor, wrong-family, truncated, no-weights, no-config,
    invalid-json (each a way a user's checkpoint can be broken).

    Returns the words the error message must contain.
    """
    import json
    import os

    from safetensors.torch import load_file, save_file

    from perfmamba.config import Mamba1Config, Mamba2Config
    from perfmamba.models.lm import MambaLM

    cfg = Mamba1Config(d_model=32, n_layer=2, vocab_size=50, d_state=16)
    torch.manual_seed(0)
    _randomise(MambaLM(cfg), seed=1).save_pretrained(str(directory), format="hf")
    weights = os.path.join(directory, "model.safetensors")
    config = os.path.join(directory, "config.json")
    if problem in ("missing-tensor", "unexpected-tensor", "misshaped-tensor"):
        state = load_file(weights)
        if problem == "missing-tensor":
            del state["backbone.layers.1.mixer.D"]
            words = ["backbone.layers.1.mixer.D", "missing"]
        elif problem == "unexpected-tensor":
            state["backbone.layers.0.mixer.bonus"] = torch.zeros(3)
            words = ["backbone.layers.0.mixer.bonus", "unexpected"]
        else:
            state["backbone.layers.0.mixer.A_log"] = torch.zeros(64, 8)
            words = ["backbone.layers.0.mixer.A_log", "(64, 8)", "(64, 16)"]
        save_file(state, weights)
        return words
    if problem == "wrong-family":
        with open(config, "w") as f:
            json.dump(Mamba2Config(d_model=32, n_layer=2, vocab_size=50, headdim=16).to_hf_dict(), f)
        return ["config.json", "mamba1", "mamba2"]
    if problem == "truncated":
        size = os.path.getsize(weights)
        with open(weights, "r+b") as f:
            f.truncate(size // 2)
        return ["model.safetensors", "truncated"]
    if problem == "no-weights":
        os.remove(weights)
        return ["no weights", "model.safetensors"]
    if problem == "no-config":
        os.remove(config)
        return ["config.json"]
    if problem == "invalid-json":
        with open(config, "w") as f:
            f.write('{"model_type": "mamba", "hidden_size": 32,,}')
        return ["config.json", "JSON"]
    raise AssertionError(problem)


@pytest.fixture(scope="session")
def damaged_checkpoint():
    return _damaged_checkpoint
